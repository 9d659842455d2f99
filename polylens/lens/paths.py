"""Paths through one layer's activation space, and the evaluator that pushes path points onward.

A path lives in the output space of one layer (``"input"`` for input space) and is a polyline
through ``vertices [k, *shape]``; the position along it is ``t ∈ [0, 1]`` (fraction of the
Euclidean arc length). Each path point is pushed through the rest of the model by patching that
layer's output (``polylens.capture``'s ``patch=``); everything else the model reads (other
inputs, skip connections from earlier layers) stays at the path's ``base`` input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from polylens.capture import Captured, capture
from polylens.models.base import BREAKPOINTS, ModelAdapter


@dataclass
class ActivationPath:
    """A polyline in one layer's output space.

    kind: interp | scale | input | polyline; layer: the space (``"input"`` for input space);
    vertices: ``[k, *shape]`` (k ≥ 2); base: model input ``[1, ...]`` the other parts of the
    forward pass read (None in input space); meta: e.g. the scaling range.
    """

    kind: str
    layer: str
    vertices: Tensor
    base: Tensor | None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.vertices.dim() < 2 or self.vertices.shape[0] < 2:
            raise ValueError(f"a path needs at least 2 vertices [k, ...], got shape {tuple(self.vertices.shape)}")
        v = self.vertices.detach().double().reshape(self.vertices.shape[0], -1)
        if not torch.isfinite(v).all():
            raise ValueError("path vertices contain NaN or inf; check the inputs and the model's activations")
        lengths = (v[1:] - v[:-1]).norm(dim=1)
        if (lengths == 0).any():
            i = int((lengths == 0).nonzero()[0])
            raise ValueError(
                f"path vertices {i} and {i + 1} coincide: a zero-length path segment has no crossings to count"
            )

    @property
    def segment_lengths(self) -> np.ndarray:
        v = self.vertices.detach().double().reshape(self.vertices.shape[0], -1)
        return (v[1:] - v[:-1]).norm(dim=1).numpy()

    @property
    def length(self) -> float:
        return float(self.segment_lengths.sum())

    def at(self, t: np.ndarray) -> Tensor:
        """Points at arc-length fractions ``t [m]`` → ``[m, *shape]`` (float64)."""
        seg, s = self._locate(np.asarray(t, dtype=np.float64))
        v = self.vertices.detach().double()
        s_t = torch.from_numpy(s).reshape(-1, *([1] * (v.dim() - 1)))
        return v[seg] + s_t * (v[seg + 1] - v[seg])

    def _locate(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cum = np.concatenate([[0.0], np.cumsum(self.segment_lengths)]) / self.length
        seg = np.clip(np.searchsorted(cum, t, side="right") - 1, 0, len(cum) - 2)
        return seg, np.clip((t - cum[seg]) / (cum[seg + 1] - cum[seg]), 0.0, 1.0)

    def to_t(self, seg: int, s: np.ndarray) -> np.ndarray:
        """Position within segment ``seg`` (s ∈ [0, 1]) → global t."""
        cum = np.concatenate([[0.0], np.cumsum(self.segment_lengths)])
        return (cum[seg] + s * self.segment_lengths[seg]) / cum[-1]


def _layer_value(adapter: ModelAdapter, x: Tensor, layer: str) -> Tensor:
    if layer == "input":
        return x
    adapter.check_layer(layer)
    return capture(adapter.module, x, [layer]).activations[layer]


def _check_same_shape(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}; both ends must have the same shape"
        )


def interpolation_path(
    adapter: ModelAdapter, x0: Tensor, x1: Tensor, layer: str, via: list[Tensor] = ()
) -> ActivationPath:
    """Straight line(s) between the activations of inputs ``x0``, ``via``…, ``x1`` (each ``[1, ...]``)
    at ``layer``."""
    xs = [x0, *via, x1]
    for x in xs[1:]:
        _check_same_shape(x0, x, "interpolation inputs")
    acts = [_layer_value(adapter, x, layer) for x in xs]
    if layer == "input" and not torch.is_floating_point(x0):
        raise ValueError(
            "interpolation in input space needs float inputs (these are token ids); "
            "give the path an activation layer (layer=)"
        )
    kind = "input" if layer == "input" else "interp"
    return ActivationPath(
        kind, layer, torch.cat(acts).detach(), None if layer == "input" else x0, {"n_inputs": len(xs)}
    )


def scaling_path(
    adapter: ModelAdapter, x: Tensor, layer: str, alpha_max: float = 2.0, alpha_min: float = 0.0
) -> ActivationPath:
    """The ray α·a(x) for α ∈ [alpha_min, alpha_max], a(x) the activation of ``x [1, ...]`` at ``layer``."""
    if not alpha_max > alpha_min:
        raise ValueError(f"alpha_max={alpha_max} must be greater than alpha_min={alpha_min}")
    a = _layer_value(adapter, x, layer).detach()
    if layer == "input" and not torch.is_floating_point(a):
        raise ValueError(
            "scaling in input space needs float inputs (these are token ids); "
            "give the path an activation layer (layer=)"
        )
    norm = float(a.double().norm())
    if norm == 0:
        raise ValueError(
            f"the activation at {layer} is all zeros, so its scaling path has zero length; pick another input or layer"
        )
    verts = torch.cat([alpha_min * a, alpha_max * a])
    return ActivationPath(
        "scale",
        layer,
        verts,
        None if layer == "input" else x,
        {"alpha_min": alpha_min, "alpha_max": alpha_max, "norm": norm},
    )


def polyline_path(adapter: ModelAdapter, vertices: Tensor, layer: str, base: Tensor | None = None) -> ActivationPath:
    """An arbitrary polyline ``[k, *shape]`` in ``layer``'s space (``base [1, ...]`` feeds the forward pass)."""
    if layer != "input":
        adapter.check_layer(layer)
        if base is None:
            raise ValueError("a polyline in an activation layer needs a base input for the forward pass")
        _check_same_shape(
            _layer_value(adapter, base, layer)[0], vertices[0], "polyline vertices vs the layer's activation"
        )
    return ActivationPath("polyline", layer, vertices.detach(), base)


BATCH_BYTES = 256 * 2**20
_VERIFY_POINTS = 4  # path points on which the batch-1 base is compared with the expanded one


def _same(a: Captured | None, b: Captured) -> bool:
    """``a`` holds exactly ``b``'s activations and output (bit for bit)."""
    if a is None or set(a.activations) != set(b.activations) or (a.output is None) != (b.output is None):
        return False
    pairs = [(a.activations[n], b.activations[n]) for n in b.activations]
    if b.output is not None:
        pairs.append((a.output, b.output))
    return all(x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y) for x, y in pairs)


def _finite(a: Tensor) -> bool:
    """No NaN or inf in ``a``: one reduction, and the element-wise test only where its sum is not finite."""
    return bool(torch.isfinite(a.sum())) or bool(torch.isfinite(a).all())


def _cat(parts: list[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class Evaluator:
    """Pre-activations of ``layers`` at path points, counting evaluations (a float64 copy of the model if asked).

    ``__call__(points [m, *shape], want_output)`` → ``(z [m, width], output [m, ...] | None)``: for
    each layer, one block of columns a breakpoint of its activation kind (``BREAKPOINTS``; one block,
    at 0, for a layer of no declared kind), block j holding ``z − breakpoint_j`` over the layer's
    flattened units. A column changes sign exactly where its unit crosses that breakpoint, so a
    ReLU6 layer ``[z − 0, z − 6]`` shows both its boundaries to every consumer of the columns, and
    block 0 (breakpoint 0) is ``z`` itself. ``offsets``: (layer, offset, size) of each layer in the
    columns, size = breakpoints × units; ``locate(column)`` → (layer, unit, breakpoint).

    shared_base: for a path in a hidden layer, compute what comes before that layer once, from the
    batch-1 base, instead of from the base expanded to every point (see ``_patched``); after the
    first call of several points, ``self.shared_base`` says which way the evaluator runs (False:
    expanded, the reference route, also what ``shared_base=False`` forces).
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        path: ActivationPath,
        layers: list[str],
        batch_size: int = 256,
        float64: bool = True,
        shared_base: bool = True,
    ):
        self.module = adapter.module
        param = next(adapter.module.parameters(), None)
        self.dtype = torch.float64 if float64 else (param.dtype if param is not None else torch.float32)
        if float64:
            self.module = adapter.float64_module()
        self.path, self.layers, self.batch_size = path, layers, batch_size
        self.breakpoints = {n: BREAKPOINTS.get(adapter.activation_layers.get(n, "relu"), (0.0,)) for n in layers}
        self.base = path.base
        if self.base is not None and torch.is_floating_point(self.base):
            self.base = self.base.to(self.dtype)
        self.evaluations = 0
        self.offsets: list[tuple[str, int, int]] = []
        # None: not yet shown; True: the batch-1 base gives what the expanded one does; False: expand
        self.shared_base: bool | None = None if (shared_base and self.base is not None) else False
        # layers shown not to depend on the path point: on the batch-1 base they stayed batch 1
        # (the patch's m rows would have broadcast into them), and that route was verified
        self.path_independent: frozenset[str] = frozenset()
        self._batch_one: frozenset[str] = frozenset()

    def locate(self, column: int) -> tuple[str, int, float]:
        """Column ``column`` of the evaluated values → (its layer, the unit's flat index in the
        layer's pre-activation, the breakpoint the column is measured from)."""
        for name, off, size in self.offsets:
            if off <= column < off + size:
                block, unit = divmod(column - off, size // len(self.breakpoints[name]))
                return name, unit, self.breakpoints[name][block]
        raise ValueError(f"column {column} is outside the {self.width} evaluated columns")

    def column_breakpoints(self) -> np.ndarray:
        """The breakpoint each column is measured from, ``[width]`` (known after the first call)."""
        return np.concatenate(
            [np.repeat(self.breakpoints[name], size // len(self.breakpoints[name])) for name, _, size in self.offsets]
        )

    @property
    def width(self) -> int | None:
        """Pre-activation values per point (all layers), known after the first call."""
        return sum(size for _, _, size in self.offsets) if self.offsets else None

    def step(self) -> int:
        """Points per forward pass: ``batch_size``, fewer where a batch's pre-activations would pass
        ``BATCH_BYTES`` (InceptionV1 below ``maxpool1``: 3.2 M values a point)."""
        if self.width is None:
            return 1
        return max(1, min(self.batch_size, BATCH_BYTES // (8 * self.width)))

    def __call__(self, points: Tensor, want_output: bool = False) -> tuple[Tensor, Tensor | None]:
        zs, outs = [], []
        start = 0
        while start < points.shape[0]:
            chunk = points[start : start + self.step()].to(self.dtype)
            start += chunk.shape[0]
            m = chunk.shape[0]
            if self.path.layer == "input":
                got = capture(self.module, chunk, self.layers, keep_output=want_output)
            else:
                got = self._patched(chunk, want_output)
            acts = [got.activations[n].reshape(m, -1).to(self.dtype) for n in self.layers]
            if not self.offsets:
                off = 0
                for n, a in zip(self.layers, acts):
                    self.offsets.append((n, off, a.shape[1] * len(self.breakpoints[n])))
                    off += self.offsets[-1][2]
            if not all(_finite(a) for a in acts):  # z − breakpoint is finite exactly where z is
                raise ValueError(
                    "the model produced NaN/inf pre-activations along the path; check the inputs and the scaling range"
                )
            zs.append(self._columns(acts))
            if want_output and got.output is not None:
                outs.append(got.output)
            self.evaluations += m
        return _cat(zs), (_cat(outs) if outs else None)

    def _patched(self, chunk: Tensor, want_output: bool) -> Captured:
        """The forward pass with the path's layer's output replaced by ``chunk [m, ...]``.

        What runs before that layer does not depend on the path point, so it runs once, on the
        batch-1 base, and the patch hands the layer's consumers a batch of m (a residual sum with an
        earlier batch-1 tensor broadcasts). Where a model cannot take that (a concatenation with a
        batch-1 branch, a batch-1 attention mask) or would compute something else, the base is
        expanded to m rows as before: the first call of two or more points compares both ways
        bit for bit, and every later call checks that all it returns has m rows."""
        m = chunk.shape[0]
        if m > 1 and self.shared_base is None:
            self._decide(chunk[:_VERIFY_POINTS])
        if m > 1 and self.shared_base:
            got = self._shared(chunk, want_output)
            if got is not None:
                return got
            self.shared_base = False
        return self._expanded(chunk, want_output)

    def shares_base(self) -> bool:
        """Whether passes that patch the path's layer may start from the batch-1 base (what
        ``polylens.lens.affine_change`` asks); decided now, on points of the path, if no call of
        several points has decided it yet."""
        if self.shared_base is None:
            self._decide(self.path.at(np.linspace(0.2, 0.8, _VERIFY_POINTS)).to(self.dtype))
        return bool(self.shared_base)

    def _decide(self, chunk: Tensor) -> None:
        """Compare both routes on ``chunk [k ≥ 2, ...]``, run to the model's output, bit for bit."""
        self.shared_base = _same(self._shared(chunk, True), self._expanded(chunk, True))
        self.path_independent = self._batch_one if self.shared_base else frozenset()

    def _expanded(self, chunk: Tensor, want_output: bool) -> Captured:
        base = self.base.expand(chunk.shape[0], *self.base.shape[1:])
        return capture(self.module, base, self.layers, patch={self.path.layer: chunk}, keep_output=want_output)

    def _shared(self, chunk: Tensor, want_output: bool) -> Captured | None:
        """The forward pass from the batch-1 base; None where it fails or returns other than m rows."""
        m = chunk.shape[0]
        try:
            got = capture(self.module, self.base, self.layers, patch={self.path.layer: chunk}, keep_output=want_output)
        except Exception:  # any failure (a shape clash in a cat, a batch-1 mask) means: expand instead
            return None
        # A tensor still of batch 1 was computed from the base alone (the patch's m rows would have
        # broadcast into it): a layer off the path's branch, the same at every point. It is expanded.
        self._batch_one = frozenset(n for n, a in got.activations.items() if a.shape[0] == 1)
        acts = {n: a.expand(m, *a.shape[1:]) if a.shape[0] == 1 else a for n, a in got.activations.items()}
        out = got.output
        if out is not None and out.shape[0] == 1:
            out = out.expand(m, *out.shape[1:])
        if set(acts) != set(self.layers) or any(a.shape[0] != m for a in acts.values()):
            return None
        if out is not None and out.shape[0] != m:
            return None
        return Captured(acts, got.gradients, out)

    def _columns(self, acts: list[Tensor]) -> Tensor:
        """Each layer's ``[m, units]`` → its blocks ``z − breakpoint`` (``z`` itself at 0, no roundoff),
        written straight into one ``[m, width]`` array (no per-layer copies to concatenate)."""
        if len(acts) == 1 and self.breakpoints[self.layers[0]] == (0.0,):
            return acts[0]
        z = torch.empty(acts[0].shape[0], self.width, dtype=self.dtype)
        for (name, off, _), a in zip(self.offsets, acts):
            units = a.shape[1]
            for j, bp in enumerate(self.breakpoints[name]):
                block = z[:, off + j * units : off + (j + 1) * units]
                if bp == 0:
                    block.copy_(a)
                else:
                    torch.sub(a, bp, out=block)
        return z
