"""InceptionV1 (GoogLeNet as in TF's ``inception5h``) in the Lucid / Circuits layout, in plain torch.

Layer names follow Lucid: ``conv2d0`` … ``maxpool1``, ``mixed3a`` … ``mixed5b``, ``softmax2`` (1008
classes). Each convolution is the module ``{layer}_pre_relu_conv`` and its ReLU the module
``{layer}`` (so ``mixed4a_3x3_pre_relu_conv`` is a pre-activation and ``mixed4a_3x3`` its ReLU); the
block outputs ``mixed3a`` … are concatenation modules. Parameter names therefore equal those of the
converted checkpoint that the ``torch-lucent`` package loads
(``mixed3a_1x1_pre_relu_conv.weight``, …, ``softmax2_pre_activation_matmul.bias``).

Inputs are images ``[n, 3, 224, 224]`` in [0, 1] (RGB). The TF model expects pixel values in
[-117, 138]; lucent rescales outside the model (``x * 255 - 117``), we do it as the first step of
``forward`` (``InceptionV1(scale_inputs=False)`` takes the raw range). ``forward`` returns the logits
``softmax2_pre_activation_matmul`` ``[n, 1008]``; the module ``softmax2`` is not applied.
Padding replicates TF's "SAME" padding: asymmetric (more at the bottom/right) for strided layers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polylens.models import base, images
from polylens.models.base import ModelAdapter, cache_dir

WEIGHTS_URL = "https://github.com/ProGamerGov/pytorch-old-tensorflow-models/raw/master/inception5h.pth"

# name: (in, 1x1, 3x3 bottleneck, 3x3, 5x5 bottleneck, 5x5, pool reduce) — Szegedy et al. 2015,
# Table 1, with inception5h's channel counts (mixed4a's 3x3 has 204 and its 5x5 48 channels).
BLOCKS = {
    "mixed3a": (192, 64, 96, 128, 16, 32, 32),
    "mixed3b": (256, 128, 128, 192, 32, 96, 64),
    "mixed4a": (480, 192, 96, 204, 16, 48, 64),
    "mixed4b": (508, 160, 112, 224, 24, 64, 64),
    "mixed4c": (512, 128, 128, 256, 24, 64, 64),
    "mixed4d": (512, 112, 144, 288, 32, 64, 64),
    "mixed4e": (528, 256, 160, 320, 32, 128, 128),
    "mixed5a": (832, 256, 160, 320, 48, 128, 128),
    "mixed5b": (832, 384, 192, 384, 48, 128, 128),
}
# Strided max-pools before these blocks (TF's "SAME" 3x3/2 pooling).
POOL_BEFORE = {"mixed4a": "maxpool4", "mixed5a": "maxpool10"}
BRANCHES = ("1x1", "3x3_bottleneck", "5x5_bottleneck", "pool_reduce", "3x3", "5x5")


class Concat(nn.Module):
    """Channel concatenation, a module so that a block's output is capturable by name. A batch-1
    branch is broadcast to the others' batch, as an elementwise op would broadcast it: a path
    patched into one branch then runs from the batch-1 base (``polylens.lens.paths``)."""

    def forward(self, *parts: Tensor) -> Tensor:
        n = max(p.shape[0] for p in parts)
        return torch.cat([p.expand(n, *p.shape[1:]) if p.shape[0] == 1 else p for p in parts], dim=1)


class MaxPool(nn.Module):
    """3x3 max-pool with TF "SAME" padding: ``pad`` = (left, right, top, bottom) filled with -inf."""

    def __init__(self, stride: int, pad: tuple[int, int, int, int]):
        super().__init__()
        self.stride, self.pad = stride, pad

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(F.pad(x, self.pad, value=float("-inf")), 3, stride=self.stride)


class LRN(nn.Module):
    """Local response normalisation as in inception5h (depth radius 4 → size 9, beta 0.5)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.local_response_norm(x, size=9, alpha=9.99999974738e-05, beta=0.5, k=1.0)


class InceptionV1(nn.Module):
    """``[n, 3, 224, 224]`` images in [0, 1] → logits ``[n, 1008]`` (Lucid layer and parameter names)."""

    def __init__(self, scale_inputs: bool = True):
        super().__init__()
        self.scale_inputs = scale_inputs
        self.conv2d0_pre_relu_conv = nn.Conv2d(3, 64, 7, stride=2)  # pad (2,3) → [n, 64, 112, 112]
        self.conv2d0 = nn.ReLU()
        self.maxpool0 = MaxPool(2, (0, 1, 0, 1))  # [n, 64, 56, 56]
        self.localresponsenorm0 = LRN()
        self.conv2d1_pre_relu_conv = nn.Conv2d(64, 64, 1)
        self.conv2d1 = nn.ReLU()
        self.conv2d2_pre_relu_conv = nn.Conv2d(64, 192, 3, padding=1)  # [n, 192, 56, 56]
        self.conv2d2 = nn.ReLU()
        self.localresponsenorm1 = LRN()
        self.maxpool1 = MaxPool(2, (0, 1, 0, 1))  # [n, 192, 28, 28]
        for name, (c_in, c1, c3r, c3, c5r, c5, cp) in BLOCKS.items():
            if name in POOL_BEFORE:
                setattr(self, POOL_BEFORE[name], MaxPool(2, (0, 1, 0, 1)))
            setattr(self, f"{name}_pool", MaxPool(1, (1, 1, 1, 1)))
            shapes = {
                "1x1": (c_in, c1, 1),
                "3x3_bottleneck": (c_in, c3r, 1),
                "5x5_bottleneck": (c_in, c5r, 1),
                "pool_reduce": (c_in, cp, 1),
                "3x3": (c3r, c3, 3),
                "5x5": (c5r, c5, 5),
            }
            for branch in BRANCHES:
                i, o, k = shapes[branch]
                setattr(self, f"{name}_{branch}_pre_relu_conv", nn.Conv2d(i, o, k, padding=k // 2))
                setattr(self, f"{name}_{branch}", nn.ReLU())
            setattr(self, name, Concat())  # [n, c1 + c3 + c5 + cp, h, w]
        self.softmax2_pre_activation_matmul = nn.Linear(1024, 1008)

    def _conv(self, name: str, x: Tensor) -> Tensor:
        """``{name}_pre_relu_conv`` then its ReLU ``{name}``."""
        return getattr(self, name)(getattr(self, f"{name}_pre_relu_conv")(x))

    def _block(self, name: str, x: Tensor) -> Tensor:
        a = self._conv(f"{name}_1x1", x)
        b = self._conv(f"{name}_3x3", self._conv(f"{name}_3x3_bottleneck", x))
        c = self._conv(f"{name}_5x5", self._conv(f"{name}_5x5_bottleneck", x))
        d = self._conv(f"{name}_pool_reduce", getattr(self, f"{name}_pool")(x))
        return getattr(self, name)(a, b, c, d)

    def forward(self, x: Tensor) -> Tensor:
        if self.scale_inputs:
            x = x * 255.0 - 117.0  # [0, 1] → inception5h's [-117, 138]; a new tensor
        x = self._conv("conv2d0", F.pad(x, (2, 3, 2, 3)))  # TF SAME for 7x7/2
        x = self.localresponsenorm0(self.maxpool0(x))
        x = self._conv("conv2d2", self._conv("conv2d1", x))
        x = self.maxpool1(self.localresponsenorm1(x))
        for name in BLOCKS:
            if name in POOL_BEFORE:
                x = getattr(self, POOL_BEFORE[name])(x)
            x = self._block(name, x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # [n, 1024] (7x7 average at 224 px)
        return self.softmax2_pre_activation_matmul(x)


def conv_layers() -> list[str]:
    """Every convolution module path in forward order (each one's output is a ReLU pre-activation)."""
    names = ["conv2d0_pre_relu_conv", "conv2d1_pre_relu_conv", "conv2d2_pre_relu_conv"]
    order = ("1x1", "3x3_bottleneck", "3x3", "5x5_bottleneck", "5x5", "pool_reduce")
    return names + [f"{block}_{branch}_pre_relu_conv" for block in BLOCKS for branch in order]


def fetch(url: str) -> Path:
    """Download ``url`` once into the polylens cache; a failed download is a one-line ValueError."""
    path = cache_dir() / ("inceptionv1-" + hashlib.sha256(url.encode()).hexdigest()[:12] + ".pth")
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(path), progress=False)
        except Exception as err:  # network errors come in many types (URLError, HTTPError, OSError)
            raise ValueError(
                f"weights={url!r}: download failed ({type(err).__name__}: {err}); "
                "download the file elsewhere and pass weights=FILE"
            ) from None
    return path


def load_weights(model: InceptionV1, source: str | Path) -> None:
    """Load a weights file or http(s) URL into ``model`` (``polylens.models.base.load_weights`` rules)."""
    source = str(source)
    path = fetch(source) if source.startswith(("http://", "https://")) else Path(source)
    base.load_weights(model, path, what="InceptionV1 (Lucid layout)")


class InceptionAdapter(ModelAdapter):
    """InceptionV1 (Lucid layout): images ``[n, 3, 224, 224]`` in [0, 1], logits ``[n, 1008]``."""

    spec_pattern = "inceptionv1"
    spec_help = "inceptionv1"
    piecewise_linear_modules = (Concat, MaxPool)  # not LRN: local response norm is smooth

    def __init__(self, model: InceptionV1, name: str, facts: dict, *, device: str = "cpu"):
        convs = conv_layers()
        relus = [c.removesuffix("_pre_relu_conv") for c in convs]
        super().__init__(
            name,
            model,
            {c: "relu" for c in convs},
            [n for pair in zip(convs, relus) for n in pair] + ["maxpool1", *BLOCKS],
            provenance={"model": name, "layout": "lucid", "input_range": "[0, 1] RGB, 224x224", **facts},
        )
        self.device = device

    @classmethod
    def load(
        cls,
        spec: str = "inceptionv1",
        *,
        weights=None,
        random_weights: bool = False,
        device: str = "cpu",
        seed: int = 0,
    ) -> InceptionAdapter:
        """From ``weights`` (file or URL; ``weights="url"`` is lucent's converted checkpoint) or random."""
        if spec != "inceptionv1":
            raise ValueError(f"unknown InceptionV1 model {spec!r}; the spec is just 'inceptionv1'")
        if weights is None and not random_weights:
            raise ValueError(
                "inceptionv1 needs weights: weights=FILE (safetensors or torch state dict), "
                f"weights='url' (downloads {WEIGHTS_URL}), or random_weights=True"
            )
        torch.manual_seed(seed)
        model = InceptionV1()
        if weights is not None:
            source = WEIGHTS_URL if str(weights) == "url" else weights
            load_weights(model, source)
            name, facts = "inceptionv1", {"weights": str(source)}
        else:
            name, facts = "inceptionv1 (random weights)", {"weights": "random", "seed": seed}
        return cls(model.to(device).eval(), name, facts, device=device)

    def prepare(self, raw) -> Tensor:
        return images.image_input(raw, device=self.device)

    def default_inputs(self, n: int) -> Tensor:
        return images.sample_images(n).to(self.device)

    def describe_output(self, out: Tensor) -> list[str]:
        return [f"class {i}" for i in out.reshape(out.shape[0], -1).argmax(1).tolist()]
