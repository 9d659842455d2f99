"""Images for vision models, with PIL and numpy only (no torchvision).

Standard ImageNet evaluation preprocessing: RGB, resize so the shorter side is ``resize`` pixels
(bilinear by default, antialiased), centre-crop ``size``×``size``, scale to [0, 1]. InceptionV1
(Lucid layout) and EfficientNet-Lite0 take those [0, 1] images as they are (each rescales
internally); torchvision models also want the ImageNet mean/std normalisation (``normalize=True``).

Image files must be 8-bit RGB (or palette/CMYK/YCbCr, converted to RGB) and at least ``size``
pixels on the shorter side: a grayscale, RGBA or 16-bit image, or one smaller than the crop, is a
one-line ``ValueError`` that says how to convert it (silently dropping an alpha channel or
rescaling 16-bit values would change what the model sees).

Offline examples: scikit-learn bundles two photos (``load_sample_images``: a Chinese temple and
a flower); ``sample_images`` cuts three 224-pixel crops (left, centre, right) from each.
``bundled_photos`` adds matplotlib's and scikit-image's colour photographs, and
``augmented_images(n, seed)`` gives any number of inputs from them: each photo's centre crop first,
then seeded random crops (a share of the shorter side, anywhere in the photo) and mirror flips.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


RGB_MODES = ("RGB", "P", "CMYK", "YCbCr")  # 8-bit colour modes PIL converts to RGB without loss of meaning


def check_mode(img, source: str, size: int = 224) -> None:
    """Refuse, in one line, an image that is not 8-bit colour or is smaller than the crop."""
    mode = img.mode
    fix = "convert it to 8-bit RGB first (e.g. PIL: Image.open(f).convert('RGB').save(...))"
    if mode == "P" and "transparency" in img.info:
        mode = "RGBA"
    if mode in ("1", "L", "LA", "La"):
        raise ValueError(f"{source} is grayscale (mode {img.mode}); the model reads colour images: {fix}")
    if mode in ("RGBA", "RGBa", "PA"):
        raise ValueError(f"{source} has an alpha channel (mode {img.mode}); {fix} on the background you intend")
    if mode not in RGB_MODES:
        raise ValueError(f"{source} is not an 8-bit colour image (mode {img.mode}, e.g. 16-bit); {fix}")
    if min(img.size) < size:
        raise ValueError(
            f"{source} is {img.size[0]}x{img.size[1]} pixels, smaller than the {size}-pixel crop; "
            f"give an image at least {size} pixels on its shorter side"
        )


def preprocess(
    img,
    size: int = 224,
    resize: int | None = 256,
    normalize: bool = False,
    resample: str = "bilinear",
) -> Tensor:
    """A PIL image (or ``[H, W, 3]`` uint8 array) → ``[3, size, size]`` float32.

    resize: shorter side before the centre crop (None: resize the shorter side to ``size``).
    normalize: subtract the ImageNet mean and divide by its std (torchvision models).
    resample: ``"bilinear"`` or ``"bicubic"`` (EfficientNet's evaluation resize).
    """
    from PIL import Image

    if size <= 0 or (resize is not None and resize < size):
        raise ValueError(f"size={size} must be positive and resize={resize} at least size")
    filters = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
    if resample not in filters:
        raise ValueError(f"resample={resample!r} must be one of {', '.join(filters)}")
    if isinstance(img, np.ndarray):
        img = Image.fromarray(np.ascontiguousarray(img).astype(np.uint8))
    img = img.convert("RGB")
    short = resize or size
    w, h = img.size
    scale = short / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), filters[resample], reducing_gap=None)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()  # [3, size, size]
    if normalize:
        x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return x


def load_image(
    path: str | Path, size: int = 224, resize: int | None = 256, normalize: bool = False, resample: str = "bilinear"
) -> Tensor:
    """One image file → ``[3, size, size]`` (see ``preprocess``; ``check_mode`` says which files are refused)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist")
    try:
        with Image.open(path) as img:
            check_mode(img, f"image file {str(path)!r}", size)
            return preprocess(img, size, resize, normalize, resample)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:  # unidentified, truncated, broken
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
    folder: str | Path,
    size: int = 224,
    resize: int | None = 256,
    normalize: bool = False,
    limit: int | None = None,
    resample: str = "bilinear",
) -> tuple[Tensor, list[str]]:
    """Every image in ``folder`` (sorted; at most ``limit``) → ``([n, 3, size, size], file names)``."""
    files = image_files(folder)
    if limit is not None:
        if limit <= 0:
            raise ValueError(f"limit={limit} must be a positive integer")
        files = files[:limit]
    return torch.stack([load_image(p, size, resize, normalize, resample) for p in files]), [p.name for p in files]


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


def image_input(
    raw, *, normalize: bool = False, device: str = "cpu", resample: str = "bilinear", examples=None
) -> Tensor:
    """One model input ``[1, 3, 224, 224]`` from an index into ``sample_images`` (0–5; also as a
    string of digits), an image file, or an array ``[3, 224, 224]`` already preprocessed.

    normalize: ImageNet mean/std for torchvision models; without it pixels are in [0, 1] (InceptionV1).
    examples: ``(count, fn)``: the model's own bundled inputs that an index selects (``fn(n)`` gives the
    first n), instead of ``sample_images``' six crops.
    """
    if isinstance(raw, str) and raw.isdigit():
        raw = int(raw)
    if isinstance(raw, (int, np.integer)):
        count, first = examples or (6, lambda n: sample_images(n, normalize=normalize))
        if not 0 <= raw < count:
            raise ValueError(f"input index {raw} must be between 0 and {count - 1} (the bundled sample photos)")
        return first(raw + 1)[raw : raw + 1].to(device)
    if isinstance(raw, (str, Path)) and str(raw).endswith(".npy"):
        from polylens.models.base import read_npy

        raw = read_npy(raw)
    elif isinstance(raw, (str, Path)):
        return load_image(raw, normalize=normalize, resample=resample)[None].to(device)
    x = torch.as_tensor(np.asarray(raw), dtype=torch.float32)
    if x.numel() != 3 * 224 * 224 or tuple(x.shape[-3:]) != (3, 224, 224):
        scale = "ImageNet-normalised" if normalize else "in [0, 1]"
        raise ValueError(f"an image input must be an array [3, 224, 224] ({scale}), got shape {tuple(x.shape)}")
    return x.reshape(1, 3, 224, 224).to(device)


# Colour photographs that ship with the packages polylens installs: (package, file or loader name).
PHOTOS = (
    ("sklearn", "china.jpg"),
    ("sklearn", "flower.jpg"),
    ("matplotlib", "grace_hopper.jpg"),
    ("skimage", "astronaut.png"),
    ("skimage", "chelsea.png"),
    ("skimage", "coffee.png"),
    ("skimage", "rocket.jpg"),
    ("skimage", "motorcycle_left.png"),
    ("skimage", "hubble_deep_field.jpg"),
)


def bundled_photos() -> list[tuple[str, np.ndarray]]:
    """``[(name, [H, W, 3] uint8)]``: the colour photographs of ``PHOTOS`` whose package is installed
    (scikit-learn and matplotlib always are; scikit-image where present), in that order."""
    import importlib.util

    from PIL import Image

    out = []
    for package, name in PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            continue
        root = Path(spec.origin).parent
        folder = {
            "sklearn": root / "datasets" / "images",
            "matplotlib": root / "mpl-data" / "sample_data",
            "skimage": root / "data",
        }[package]
        path = folder / name
        if path.is_file():
            with Image.open(path) as img:
                out.append((f"{package}:{name}", np.asarray(img.convert("RGB"), dtype=np.uint8)))
    if not out:
        raise ValueError("no bundled photographs found (scikit-learn's sample images are missing)")
    return out


def augmented_images(
    n: int,
    *,
    seed: int = 0,
    size: int = 224,
    resize: int = 256,
    resample: str = "bilinear",
    min_share: float = 0.35,
) -> tuple[Tensor, list[str]]:
    """``n`` images ``[n, 3, size, size]`` in [0, 1] from ``bundled_photos`` and their names.

    The first ``len(photos)`` are each photo's evaluation crop (``preprocess``: resize, centre crop);
    after that, image i is photo ``i mod len(photos)`` cropped to a square of a random share in
    [``min_share``, 1] of its shorter side at a random place, resized to ``size``, and mirrored with
    probability ½, all drawn from ``numpy.random.default_rng([seed, i])`` (so image i does not depend
    on n). Names say what each is: ``sklearn:china.jpg`` or ``sklearn:china.jpg crop(x,y,side) flip``.
    """
    from polylens.validation import check_int

    check_int("n", n, low=1)
    photos = bundled_photos()
    xs, names = [], []
    for i in range(n):
        name, photo = photos[i % len(photos)]
        if i < len(photos):
            xs.append(preprocess(photo, size, resize, resample=resample))
            names.append(name)
            continue
        rng = np.random.default_rng([seed, i])
        h, w = photo.shape[:2]
        side = int(round(min(h, w) * rng.uniform(min_share, 1.0)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = photo[top : top + side, left : left + side]
        flip = bool(rng.random() < 0.5)
        if flip:
            crop = crop[:, ::-1]
        xs.append(preprocess(crop, size, None, resample=resample))
        names.append(f"{name} crop({left},{top},{side})" + (" flip" if flip else ""))
    return torch.stack(xs), names
