"""How much the local affine map changes across each boundary crossing.

On a piecewise-linear network the map from the path's space to the model output is affine on
each polytope, ``f(a) = A_s a + b_s`` (shared/reference/polytope-lens.md §2.1). Crossing the
boundary of unit u (pre-activation z_u, post-activation φ(z_u)) changes only that unit's slope,
from φ'₋ to φ'₊, so the difference of the two sides' matrices is rank one:

    A₊ − A₋ = (φ'₊ − φ'₋) · (∂f/∂φ_u) (∇z_u)ᵀ,
    ‖A₊ − A₋‖_F = |φ'₊ − φ'₋| · ‖∂f/∂φ_u‖ · ‖∇z_u‖,

with ∇z_u the gradient of the unit's pre-activation with respect to the path's space (one
reverse pass) and ∂f/∂φ_u the output's derivative along the unit (one forward-mode pass), both at
the crossing point. That is the Frobenius distance between the "implied weight matrices" of the
two polytopes (the paper's footnote 8), computed without forming either matrix: GPT-2's would be
vocabulary × width × positions. It holds where one unit crosses at a time (generic paths); ReLU
has |φ'₊ − φ'₋| = 1, ReLU6 1 at both its breakpoints (slope 0 → 1 at z = 0, 1 → 0 at z = 6), an
identity layer 0, and a smooth activation has no affine pieces (None). ∂f/∂φ_u is read on the
side of the breakpoint where the slope is 1: above 0, below 6.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

from polylens.capture import _StopForward, recording
from polylens.lens.paths import ActivationPath
from polylens.models.base import ModelAdapter

SLOPE_JUMP = {"relu": 1.0, "relu6": 1.0, "identity": 0.0}  # |φ'₊ − φ'₋| at each breakpoint of the kind
# Which side of each breakpoint has slope 1 (+1 above, −1 below); a kind not listed: above.
ACTIVE_SIDE = {"relu6": {0.0: 1.0, 6.0: -1.0}}
_OUTPUT_BUDGET = 20_000_000  # output elements (and as many tangents) held per batch


def affine_changes(
    adapter: ModelAdapter,
    module: torch.nn.Module,
    path: ActivationPath,
    crossings: Sequence,
    batch_size: int = 256,
    shared_base: bool = False,
) -> list[float | None]:
    """‖A₊ − A₋‖_F of the map from ``path.layer``'s space to ``module``'s output, one per crossing.

    module: the model run (the float64 copy exact counting uses); crossings: with ``t``, ``layer``,
    ``unit`` and ``breakpoint`` (0 where absent), as ``boundary_density`` gives them
    (``polylens.lens.density.Crossing``). None
    where the layer's activation is not piecewise-linear or the model's output is not a tensor.
    shared_base: run what comes before ``path.layer`` once, on the batch-1 base (the patch gives
    later modules the batch), as ``polylens.lens.paths.Evaluator`` does where it found that to equal
    the expanded base; a pass that fails or returns other than one row a point is run again from the
    expanded base, and so is everything after it.
    """
    out = [None] * len(crossings)
    dtype = next(module.parameters()).dtype
    by_layer: dict[str, list[int]] = {}
    for i, c in enumerate(crossings):
        if adapter.activation_layers.get(c.layer) in SLOPE_JUMP:
            by_layer.setdefault(c.layer, []).append(i)
    for layer, rows in by_layer.items():
        kind = adapter.activation_layers[layer]
        jump = SLOPE_JUMP[kind]
        step = 1  # one crossing first, to size the batches by the output it gives
        start = 0
        while start < len(rows):
            part = rows[start : start + step]
            t = np.array([crossings[i].t for i in part])
            units = torch.tensor([crossings[i].unit for i in part])
            bps = [float(getattr(crossings[i], "breakpoint", 0.0)) for i in part]
            at = torch.tensor(bps, dtype=dtype)
            side = torch.tensor([ACTIVE_SIDE.get(kind, {}).get(bp, 1.0) for bp in bps], dtype=dtype)
            points = path.at(t).to(dtype)
            try:
                grad_norm = _pre_activation_gradient_norm(module, path, points, layer, units, shared_base)
                reads, size = _output_derivative_norm(module, path, points, layer, units, at, side, shared_base)
            except Exception:  # from the batch-1 base: a shape clash, or not one row a point; expand instead
                if not shared_base:
                    raise
                shared_base = False
                continue
            if reads is None:
                return out
            for i, g, d in zip(part, grad_norm.tolist(), reads.tolist()):
                out[i] = jump * g * d
            start += len(part)
            step = max(1, min(batch_size, _OUTPUT_BUDGET // max(1, size)))
    return out


def _inputs(path: ActivationPath, points: torch.Tensor, shared_base: bool = False) -> tuple[torch.Tensor, dict]:
    """Model input and the patch that puts ``points`` into the path's layer (the input is the batch-1
    base itself with ``shared_base``, else the base expanded to one row a point)."""
    if path.layer == "input":
        return points, {}
    base = path.base.to(points.dtype) if torch.is_floating_point(path.base) else path.base
    return (base if shared_base else base.expand(points.shape[0], *base.shape[1:])), {path.layer: points}


def _check_rows(value: torch.Tensor, m: int) -> None:
    if value.shape[0] != m:
        raise ValueError(f"the forward pass gave {value.shape[0]} rows for {m} path points")


def _pre_activation_gradient_norm(module, path, points, layer, units, shared_base=False) -> torch.Tensor:
    """‖∇z_u‖ with respect to the path's space, one row per point (reverse mode; the forward pass
    stops at ``layer``: nothing after it is on the way to z_u)."""
    points = points.detach().requires_grad_(True)
    x, patch = _inputs(path, points, shared_base)
    with torch.enable_grad(), recording(module, [layer], keep_graph=True, patch=patch, stop_early=True) as rec:
        try:
            module(x)
        except _StopForward:
            pass
        _check_rows(rec.activations[layer], points.shape[0])
        z = rec.activations[layer].reshape(points.shape[0], -1)
        (grad,) = torch.autograd.grad(z[torch.arange(len(units)), units].sum(), points)
    return grad.reshape(points.shape[0], -1).norm(dim=1)


def _output_derivative_norm(
    module, path, points, layer, units, at=None, side=None, shared_base=False
) -> tuple[torch.Tensor | None, int]:
    """‖∂f/∂φ_u‖ (forward mode), with z_u put just beside its breakpoint ``at`` (default 0) on the
    side ``side`` (+1 above, −1 below; default above) where φ' is 1, the "on" slope."""
    rows = torch.arange(len(units))
    at = torch.zeros(len(units), dtype=points.dtype) if at is None else at.to(points.dtype)
    side = torch.ones(len(units), dtype=points.dtype) if side is None else side.to(points.dtype)

    def along_unit(z):
        flat = z.detach().reshape(z.shape[0], -1).clone()
        scale = flat.abs().amax(dim=1).clamp_min(torch.finfo(flat.dtype).tiny)
        # on the active side, far too small to move any other unit's sign
        flat[rows, units] = (at + side * 1e-9 * scale).to(flat.dtype)
        tangent = torch.zeros_like(flat)
        tangent[rows, units] = 1.0
        return fwAD.make_dual(flat.reshape(z.shape), tangent.reshape(z.shape))

    x, patch = _inputs(path, points.detach(), shared_base)
    if layer in patch:
        fixed = patch[layer]
        patch[layer] = lambda _z: along_unit(fixed)
    else:
        patch[layer] = along_unit
    with torch.no_grad(), fwAD.dual_level(), recording(module, [layer], patch=patch):
        y = module(x)
        if not isinstance(y, torch.Tensor):
            return None, 0
        _check_rows(y, len(units))
        tangent = fwAD.unpack_dual(y).tangent
    if tangent is None:  # the output does not depend on the unit
        return torch.zeros(len(units), dtype=points.dtype), int(y[0].numel())
    return tangent.reshape(len(units), -1).norm(dim=1), int(y[0].numel())
