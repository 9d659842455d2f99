"""Images for vision models, with PIL and numpy only (no torchvision).

Standard ImageNet evaluation preprocessing: RGB, resize so the shorter side is ``resize`` pixels
(bilinear, antialiased), centre-crop ``size``×``size``, scale to [0, 1]. InceptionV1 (Lucid
layout) takes those [0, 1] images as they are (it rescales internally); torchvision models also
want the ImageNet mean/std normalisation (``normalize=True``).

Offline examples: scikit-learn bundles two photos (``load_sample_images``: a Chinese temple and
a flower); ``sample_images`` cuts three 224-pixel crops (left, centre, right) from each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess(img, size: int = 224, resize: int | None = 256, normalize: bool = False) -> Tensor:
    """A PIL image (or ``[H, W, 3]`` uint8 array) → ``[3, size, size]`` float32.

    resize: shorter side before the centre crop (None: resize the shorter side to ``size``).
    normalize: subtract the ImageNet mean and divide by its std (torchvision models).
    """
    from PIL import Image

    if size <= 0 or (resize is not None and resize < size):
        raise ValueError(f"size={size} must be positive and resize={resize} at least size")
    if isinstance(img, np.ndarray):
        img = Image.fromarray(np.ascontiguousarray(img).astype(np.uint8))
    img = img.convert("RGB")
    short = resize or size
    w, h = img.size
    scale = short / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.BILINEAR, reducing_gap=None)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()  # [3, size, size]
    if normalize:
        x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return x


def load_image(path: str | Path, size: int = 224, resize: int | None = 256, normalize: bool = False) -> Tensor:
    """One image file → ``[3, size, size]`` (see ``preprocess``)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist")
    try:
        with Image.open(path) as img:
            return preprocess(img, size, resize, normalize)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:  # unidentified, truncated, broken
        raise ValueError(f"image file {str(path)!r} is not an image PIL can read ({type(err).__name__})") from None


def image_files(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` (sorted by name, so the order is reproducible)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"image folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_folder(
    folder: str | Path, size: int = 224, resize: int | None = 256, normalize: bool = False, limit: int | None = None
) -> tuple[Tensor, list[str]]:
    """Every image in ``folder`` (sorted; at most ``limit``) → ``([n, 3, size, size], file names)``."""
    files = image_files(folder)
    if limit is not None:
        if limit <= 0:
            raise ValueError(f"limit={limit} must be a positive integer")
        files = files[:limit]
    return torch.stack([load_image(p, size, resize, normalize) for p in files]), [p.name for p in files]


def sample_images(n: int, size: int = 224, normalize: bool = False) -> Tensor:
    """``[n, 3, size, size]`` crops of scikit-learn's two bundled photos (n ≤ 6; offline)."""
    from sklearn.datasets import load_sample_images

    if not 0 < n <= 6:
        raise ValueError(f"n={n} must be between 1 and 6 (3 crops of 2 bundled photos); use load_folder for more")
    crops = []
    for photo in load_sample_images().images:  # [427, 640, 3] uint8 each
        h, w = photo.shape[:2]
        for left in (0, (w - h) // 2, w - h):  # three square crops, then resized
            crops.append(preprocess(photo[:, left : left + h], size, None, normalize))
    order = [0, 3, 1, 4, 2, 5]  # alternate photos so small n sees both
    return torch.stack([crops[i] for i in order[:n]])


def image_input(raw, *, normalize: bool = False, device: str = "cpu") -> Tensor:
    """One model input ``[1, 3, 224, 224]`` from an index into ``sample_images`` (0–5; also as a
    string of digits), an image file, or an array ``[3, 224, 224]`` already preprocessed.

    normalize: ImageNet mean/std for torchvision models; without it pixels are in [0, 1] (InceptionV1).
    """
    if isinstance(raw, str) and raw.isdigit():
        raw = int(raw)
    if isinstance(raw, (int, np.integer)):
        if not 0 <= raw < 6:
            raise ValueError(f"input index {raw} must be between 0 and 5 (crops of the bundled sample photos)")
        return sample_images(raw + 1, normalize=normalize)[raw : raw + 1].to(device)
    if isinstance(raw, (str, Path)) and str(raw).endswith(".npy"):
        from polylens.models.base import read_npy

        raw = read_npy(raw)
    elif isinstance(raw, (str, Path)):
        return load_image(raw, normalize=normalize)[None].to(device)
    x = torch.as_tensor(np.asarray(raw), dtype=torch.float32)
    if x.numel() != 3 * 224 * 224 or tuple(x.shape[-3:]) != (3, 224, 224):
        scale = "ImageNet-normalised" if normalize else "in [0, 1]"
        raise ValueError(f"an image input must be an array [3, 224, 224] ({scale}), got shape {tuple(x.shape)}")
    return x.reshape(1, 3, 224, 224).to(device)
