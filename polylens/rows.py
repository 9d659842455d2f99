"""A layer's output as rows ``[n, width]``, and back: the one layout in which direction methods,
SAEs and ablations see a layer.

One row per token position for a language model (every position but the BOS, whose activations
are a constant sink), one per spatial position for a conv layer (its channel vector), one per
input otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing this module must not import torch (CLI start-up)
    from torch import Tensor


def rows_of(value: Tensor, is_text: bool) -> Tensor:
    """A captured ``[B, ...]`` value as rows ``[n, width]`` (see the module docstring)."""
    if value.dim() == 2:
        return value
    if value.dim() == 3:  # [B, T, d]
        return (value[:, 1:] if is_text else value).reshape(-1, value.shape[-1])
    if value.dim() == 4:  # [B, C, H, W] -> channel vectors
        return value.permute(0, 2, 3, 1).reshape(-1, value.shape[1])
    raise ValueError(
        f"the layer's output has shape {tuple(value.shape)}; take a [B, d], [B, T, d] or [B, C, H, W] layer"
    )


def map_rows(value: Tensor, fn: Callable[[Tensor], Tensor], is_text: bool) -> Tensor:
    """``value`` with ``fn`` applied to its rows (``[n, width] -> [n, width]``), in its own layout;
    for text the BOS position is left as it is, as ``rows_of`` leaves it out."""
    if value.dim() == 2:
        return fn(value)
    if value.dim() == 3:
        import torch

        start = 1 if is_text else 0
        body = value[:, start:]
        out = fn(body.reshape(-1, value.shape[-1])).reshape(body.shape)
        return torch.cat([value[:, :start], out], dim=1)
    if value.dim() == 4:
        B, C, H, W = value.shape
        return fn(value.permute(0, 2, 3, 1).reshape(-1, C)).reshape(B, H, W, C).permute(0, 3, 1, 2)
    raise ValueError(
        f"the layer's output has shape {tuple(value.shape)}; take a [B, d], [B, T, d] or [B, C, H, W] layer"
    )
