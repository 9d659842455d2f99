"""Polytope boundary density along paths: exact for piecewise-linear networks, sampled otherwise.

A *crossing* is a position t ∈ [0, 1] on a path (``polylens.lens.paths``) where unit u of an
activation layer crosses a breakpoint of its activation (``polylens.models.base.BREAKPOINTS``):
z = 0, and for ReLU6 also z = 6, each flipping one bit of the unit's hard code
(``polylens.lens.codes``). Crossings are counted at the activation layers at and after the path's
layer (or a named subset); density = crossings / path length (Euclidean, in the path layer's space).
The evaluator gives each breakpoint its own column, ``z − breakpoint``, so everything below looks
for sign changes of columns, and a crossing of either breakpoint counts.

Exact mode (ReLU/ReLU6/identity only): each segment is split into pieces on which every
pre-activation up to the last counted layer is affine in s, and each unit's crossings of its
breakpoints are solved analytically on its piece. A piece [a, b] is accepted when (i) the
pre-activations at every evaluated interior point (at least one: points inherited from the parent
piece, else the golden-section point) equal the linear interpolation of the ends within ``TOL`` ×
the layer's scale (tested on z itself, the breakpoint-0 columns: z − 6 is affine exactly where z
is, and its subtraction's roundoff is not z's), and (ii) no unit of a non-final layer crosses any
of its breakpoints strictly inside (it would put a kink into every later layer; the piece is split
at that crossing). Failing (i) first at layer f splits at the crossings of the layers before f,
which are affine, or else at the check points. This is ExactLine-style layer-wise refinement done
with forward passes (float64), so any torch module works; kinks from
undeclared piecewise-linear ops (max-pool, functional ReLUs) are found by rule (i).

Sampled mode (smooth activations, ``exact=False``): sign changes between ``n_samples`` evenly
spaced points, each refined by bisection; flips within one step can be missed.
"""

from __future__ import annotations

import bisect
import copy
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from polylens.capture import capture
from polylens.lens.affine_change import affine_changes
from polylens.lens.codes import SplineCodes
from polylens.lens.exactness import EVAL_ONLY, first_smooth_step
from polylens.lens.paths import ActivationPath, Evaluator
from polylens.memory import available_memory
from polylens.models.base import PIECEWISE_LINEAR, ModelAdapter
from polylens.validation import check_int

# Relative linearity tolerance. float64 roundoff in a forward pass is ~fan_in · 2^-53 · scale
# (≈1e-12 for fan-in 10^4), so 1e-9 leaves a 1000× margin against false kinks, while a real kink
# whose effect at the check points is below 1e-9 of the layer's scale is numerically invisible
# anyway; unit crossings in earlier layers are caught by rule (ii) whatever their size.
TOL = 1e-9
_GOLDEN = 0.3819660112501051  # check point off the midpoint: symmetric kink pairs do not cancel there
_CHECKS = 1  # interior points at which each piece must be linear (reused from parents where possible)
_MAX_CHECKS = 8
_MIN_WIDTH = 1e-13  # narrower pieces mean the network is not piecewise-linear there
_INSIDE = 1e-9  # a zero closer than this (relative to the piece) to an end is at that end
MEMORY_SHARE = 0.5  # of the memory free: what exact counting's working set of evaluated points may take
MAX_SAMPLES = 10_000_000  # sampled points on one path: beyond, memory and time run away
_NOISE = 1e3 * np.finfo(np.float64).eps  # |z| below this × the layer's scale is float64 roundoff, not a sign


@dataclass(frozen=True)
class Crossing:
    """One unit changing its hard code along a path: at ``t`` ∈ [0, 1], unit ``unit`` (flat index
    in the layer's pre-activation, ``[*unit_shape]`` flattened) of activation layer ``layer``
    crosses ``breakpoint`` (0, or 6 for ReLU6's upper kink); ``affine_change`` = ‖A₊ − A₋‖_F of
    the linearised map from the path's space to the model output on the two sides (exact mode;
    None otherwise)."""

    t: float
    layer: str
    unit: int
    affine_change: float | None = None
    breakpoint: float = 0.0

    def to_json(self) -> dict:
        return {
            "t": self.t,
            "layer": self.layer,
            "unit": self.unit,
            "breakpoint": self.breakpoint,
            "affine_change": self.affine_change,
        }


@dataclass(frozen=True)
class DensityResult:
    """Crossings along one path, with the Hamming profile and the outputs along it.

    crossings: ``Crossing`` s sorted by t. profile: ``{"t": [m+1], "hamming": [m], "labels": [m+1]}``
    on an even grid (empty without one). peak_output_correlation: Pearson r between crossings per
    grid step and "the output label changes in this step" (None when either is constant).
    """

    model: str
    layers: list[str]
    space_layer: str
    path: dict
    n_crossings: int
    crossings: list[Crossing]
    density_per_unit_length: float
    exact: bool
    crossings_per_layer: dict[str, int]
    evaluations: int
    profile: dict = field(default_factory=dict)
    output_changes: list[float] = field(default_factory=list)
    peak_output_correlation: float | None = None

    def to_json(self) -> dict:
        """Plain JSON types; each crossing as ``{"t", "layer", "unit", "breakpoint", "affine_change"}``."""
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "crossings"}
        out["crossings"] = [c.to_json() for c in self.crossings]
        return {f.name: out[f.name] for f in fields(self)}


def downstream_layers(adapter: ModelAdapter, path: ActivationPath) -> list[str]:
    """Activation layers at and after ``path.layer``, in forward order (one forward pass)."""
    acts = list(adapter.activation_layers)
    example = path.vertices[:1] if path.layer == "input" else path.base
    names = acts + ([path.layer] if path.layer not in ("input", *acts) else [])
    fired = list(capture(adapter.module, example, names, stop_early=False).activations)
    if path.layer == "input":
        return [n for n in fired if n in adapter.activation_layers]
    after = fired[fired.index(path.layer) :]
    return [n for n in after if n in adapter.activation_layers]


def _choose_layers(adapter, path, count_layers, exact) -> tuple[list[str], list[str], bool]:
    training = [n for n, m in adapter.module.named_modules() if isinstance(m, EVAL_ONLY) and m.training]
    if training:
        raise ValueError(
            f"module {training[0]!r} ({type(dict(adapter.module.named_modules())[training[0]]).__name__}) "
            "is in training mode, "
            "so each path point would depend on the others in its batch; call model.eval() first"
        )
    below = downstream_layers(adapter, path)
    if not below:
        raise ValueError(
            f"no activation layer at or after {path.layer!r}; activation layers: {', '.join(adapter.activation_layers)}"
        )
    if count_layers is None:
        counted = below
    else:
        counted = [count_layers] if isinstance(count_layers, str) else list(count_layers)
        for name in counted:
            if name not in below:
                raise ValueError(
                    f"count layer {name!r} is not an activation layer at or after {path.layer!r}; "
                    f"choose from: {', '.join(below)}"
                )
        counted = [n for n in below if n in counted]
    checked = below[: below.index(counted[-1]) + 1]
    smooth = [n for n in checked if adapter.activation_layers[n] not in PIECEWISE_LINEAR]
    if smooth:
        why = f"layer {smooth[0]!r} uses {adapter.activation_layers[smooth[0]]}, which is not piecewise-linear"
    elif exact is not False:  # certify what runs between the path's layer and the last counted layer
        example = path.vertices[:1] if path.layer == "input" else path.base
        offender = first_smooth_step(
            adapter.module,
            example,
            None if path.layer == "input" else path.layer,
            checked[-1],
            declared=tuple(adapter.piecewise_linear_modules),
        )
        why = (
            None
            if offender is None
            else f"{offender} runs between {path.layer!r} and {checked[-1]!r} and is not piecewise-linear"
        )
    else:
        why = "not asked"
    if exact is None:
        exact = why is None
    if exact and why:
        raise ValueError(f"{why}, so exact counting does not apply; count in the smooth (sampled) mode, exact=False")
    return counted, (checked if exact else counted), exact


@dataclass(frozen=True)
class _Columns:
    """The evaluator's columns, by layer: ``starts`` (each layer's first column), ``layer_id``,
    ``count`` (counted layer?) and ``breakpoint`` a column; ``plain``: the columns of each layer's
    first block (breakpoint 0: z itself; a slice when that is every column) and ``plain_starts``
    each layer's start among them, where linearity and scale are read."""

    starts: np.ndarray
    layer_id: np.ndarray
    count: np.ndarray
    breakpoint: np.ndarray
    plain: np.ndarray | slice
    plain_starts: np.ndarray
    last_moving: int  # the last layer that may depend on the path point (its flips kink no counted layer)


def _layer_index(ev: Evaluator, counted: list[str]) -> _Columns:
    starts = np.array([off for _, off, _ in ev.offsets])
    layer_id = np.concatenate([np.full(size, i) for i, (_, _, size) in enumerate(ev.offsets)])
    count_mask = np.concatenate([np.full(size, name in counted) for name, _, size in ev.offsets])
    units = [size // len(ev.breakpoints[name]) for name, _, size in ev.offsets]
    breakpoint = ev.column_breakpoints()
    if sum(units) == len(layer_id):  # one breakpoint (0) a layer: every column is z itself
        plain, plain_starts = slice(None), starts
    else:
        plain = np.concatenate([np.arange(off, off + n) for (_, off, _), n in zip(ev.offsets, units)])
        plain_starts = np.concatenate([[0], np.cumsum(units)[:-1]]).astype(starts.dtype)
    if np.any(breakpoint[plain] != 0):
        raise ValueError("every activation kind's first breakpoint must be 0 (polylens.models.base.BREAKPOINTS)")
    moving = [i for i, (name, _, _) in enumerate(ev.offsets) if name not in ev.path_independent]
    last_moving = moving[-1] if moving else len(ev.offsets) - 1
    return _Columns(starts, layer_id, count_mask, breakpoint, plain, plain_starts, last_moving)


class _SegmentPoints:
    """The pre-activations evaluated on one segment v0 → v1, by position s ∈ [0, 1], within the
    memory and evaluation budgets."""

    def __init__(self, ev: Evaluator, v0, v1, max_evaluations: int):
        self.ev, self.v0, self.v1, self.max_evaluations = ev, v0, v1, max_evaluations
        self.z: dict[float, np.ndarray] = {}
        self.keys: list[float] = []
        self.budget = MEMORY_SHARE * available_memory()

    def evaluate(self, ss) -> None:
        ev, new = self.ev, sorted({s for s in ss if s not in self.z})
        while new:  # a forward batch at a time: never every new point of a wide layer at once
            part, new = new[: ev.step()], new[ev.step() :]
            s_t = torch.tensor(part, dtype=torch.float64).reshape(-1, *([1] * self.v0.dim()))
            z, _ = ev(self.v0[None] + s_t * (self.v1 - self.v0)[None])
            self.z.update(zip(part, z.numpy()))
            if 8 * ev.width * len(self.z) > self.budget:
                raise ValueError(
                    f"exact counting keeps {ev.width:,} float64 pre-activations for each point it is working on "
                    f"and needs more than {len(self.z):,} of them here "
                    f"({8 * ev.width * len(self.z) / 2**30:.1f} GiB, over the memory free); "
                    "count fewer layers (count_layers=) or count in the sampled mode (exact=False)"
                )
        if ev.evaluations > self.max_evaluations:
            raise ValueError(
                f"exact counting needed more than max_evaluations={self.max_evaluations} forward evaluations; "
                "raise it or shorten the path"
            )
        self.keys = sorted(self.z)

    def interior(self, a: float, b: float) -> list[float]:
        """Evaluated points well inside (a, b), at most _MAX_CHECKS of them."""
        keys, lo, hi = self.keys, a + 0.01 * (b - a), b - 0.01 * (b - a)
        pts = keys[bisect.bisect_right(keys, lo) : bisect.bisect_left(keys, hi)]
        return pts[:: max(1, len(pts) // _MAX_CHECKS)][:_MAX_CHECKS]

    def keep_only(self, pieces: list[tuple[float, float]]) -> None:
        """Forget the points outside every piece still to be checked (ends included)."""
        if not pieces:
            self.z.clear()
            self.keys = []
            return
        ends = np.array(sorted(pieces))
        keys = np.array(self.keys)
        at = np.searchsorted(ends[:, 0], keys, side="right") - 1  # the last piece starting at or before
        inside = (at >= 0) & (keys <= ends[np.maximum(at, 0), 1])
        if not inside.all():
            for k in keys[~inside].tolist():
                del self.z[k]
            self.keys = keys[inside].tolist()


def _piece(points: _SegmentPoints, a: float, b: float, index) -> tuple[np.ndarray, list[tuple[float, int]]]:
    """Where to split the piece [a, b] (empty when it is affine), and its counted crossings when it is."""
    layer_id, count_mask, bp = index.layer_id, index.count, index.breakpoint
    n_layers = len(index.starts)
    za, zb = points.z[a], points.z[b]
    pts = np.array(points.interior(a, b))
    # Linearity and scale are read on z itself (each layer's breakpoint-0 block): z − 6 is affine
    # exactly where z is, and its subtraction's roundoff (~ulp(6)) is no kink, however small z is.
    plain, plain_starts = index.plain, index.plain_starts
    pa, pb = za[plain], zb[plain]
    scale = np.maximum.reduceat(np.maximum(np.abs(pa), np.abs(pb)), plain_starts)
    if pts.size:
        frac = (pts - a) / (b - a)
        lerp = pa[None] + frac[:, None] * (pb - pa)[None]
        dev = np.abs(np.stack([points.z[p][plain] for p in pts]) - lerp).max(axis=0)
        bad = np.maximum.reduceat(dev, plain_starts) > TOL * scale + 1e-300
    else:  # no float64 point between the ends (a piece a few ulps wide): nothing inside can be seen or split
        bad = np.zeros(n_layers, dtype=bool)
    first_bad = int(np.argmax(bad)) if bad.any() else n_layers
    flips = (za > 0) != (zb > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        s_star = a + (b - a) * za / (za - zb)
    margin = _INSIDE * (b - a)
    # A unit within roundoff of its breakpoint at both ends sits on its boundary for the whole
    # piece: its sign there is noise, so it gives no split (its kink moves later layers by noise
    # only); its one crossing is still counted, at the piece end where its sign settles. The
    # roundoff of z − breakpoint is z's (∝ the layer's scale) plus that of the subtraction (∝ the
    # breakpoint); near z = 6 the layer's scale is at least 6 anyway.
    at_noise = np.maximum(np.abs(za), np.abs(zb)) <= _NOISE * (scale[layer_id] + np.abs(bp))
    inside = flips & ~at_noise & (s_star > a + margin) & (s_star < b - margin)
    # A flip in a layer before the last moving one may kink a later layer between the checks: split
    # there. Layers shown independent of the path (off its branch) cannot be kinked by it.
    limit = first_bad if first_bad < n_layers else index.last_moving
    splits = np.unique(s_star[inside & (layer_id < limit)]) if pts.size else np.empty(0)
    if first_bad < n_layers and splits.size == 0:
        splits = pts  # a kink from no counted unit (e.g. max-pool): split at the evaluated checks
    if splits.size:
        return splits, []
    units = np.nonzero(flips & count_mask)[0]  # affine piece: read off the counted crossings
    return splits, [(float(np.clip(s_star[u], a, b)), int(u)) for u in units]


def _exact_segment(ev: Evaluator, v0, v1, counted, max_evaluations) -> list[tuple[float, int]]:
    """All (s, unit) zero crossings of counted units on the segment v0 → v1 (s ∈ [0, 1]).

    Pieces are refined a group at a time, depth first: a group's children are done before the
    pieces waiting beside it, so only the points of pieces still to be checked are held (a layer of
    10⁵ units and a first split into thousands of pieces would otherwise hold every new end point at
    once). A piece's checks read only points inside it, so the points evaluated, and what is found,
    do not depend on the order the pieces are taken in."""
    points = _SegmentPoints(ev, v0, v1, max_evaluations)
    points.evaluate([0.0, 1.0])
    ev.shares_base()  # decided now: it shows which layers the path cannot move
    index = _layer_index(ev, counted)
    stack, found = [[(0.0, 1.0)]], []  # lists of pieces still to check; the last list goes first
    while stack:
        group_size = max(1, ev.step() // 2)  # its new end points and checks: a forward batch each
        group, stack[-1] = stack[-1][:group_size], stack[-1][group_size:]
        if not stack[-1]:
            stack.pop()
        points.evaluate([s for piece in group for s in piece])  # new split points
        # Points already evaluated (parents' check points) serve as checks; add the golden-section
        # points only where a piece has fewer than _CHECKS of them.
        points.evaluate(
            [
                a + (b - a) * (_GOLDEN if k == 0 else 0.5)
                for a, b in group
                for k in range(len(points.interior(a, b)), _CHECKS)
            ]
        )
        children = []
        for a, b in group:
            splits, crossings = _piece(points, a, b, index)
            found.extend(crossings)
            if splits.size == 0:
                continue
            if b - a < _MIN_WIDTH:
                raise ValueError(
                    f"pre-activations are not affine on any piece narrower than {_MIN_WIDTH:g} near s={a:.6g}: "
                    "the network is not piecewise-linear here; declare its activations or use exact=False"
                )
            edges = [a, *splits.tolist(), b]
            children.extend(zip(edges[:-1], edges[1:]))
        if children:
            stack.append(children)
        points.keep_only([piece for pieces in stack for piece in pieces])
    return found


def _sampled_segment(ev: Evaluator, v0, v1, n_steps, counted, refine, iterations=30) -> list[tuple[float, int]]:
    """Sign changes between n_steps+1 even samples, optionally bisected to the zero."""
    s = np.linspace(0.0, 1.0, n_steps + 1)
    brackets, prev_bits, prev_s = [], None, None
    count_mask = None
    for start in range(0, len(s), ev.batch_size):
        part = s[start : start + ev.batch_size]
        s_t = torch.from_numpy(part).reshape(-1, *([1] * v0.dim()))
        z, _ = ev(v0[None] + s_t * (v1 - v0)[None])
        if count_mask is None:
            count_mask = _layer_index(ev, counted).count
        bits = z.numpy()[:, count_mask] > 0
        allbits = bits if prev_bits is None else np.concatenate([prev_bits[None], bits])
        alls = part if prev_s is None else np.concatenate([[prev_s], part])
        step, unit = np.nonzero(allbits[1:] != allbits[:-1])
        brackets.extend(zip(alls[step], alls[step + 1], unit, allbits[step, unit]))
        prev_bits, prev_s = bits[-1], part[-1]
    if not brackets:
        return []
    lo, hi = np.array([b[0] for b in brackets]), np.array([b[1] for b in brackets])
    units, code_lo = np.array([b[2] for b in brackets]), np.array([b[3] for b in brackets])
    cols = np.nonzero(count_mask)[0][units]
    for _ in range(iterations if refine else 0):
        mid = 0.5 * (lo + hi)
        # brackets that share an interval share its midpoint: evaluate each distinct one once,
        # a batch at a time (never all path points in memory at once)
        umid, inv = np.unique(mid, return_inverse=True)
        order = np.argsort(inv, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(inv, minlength=len(umid)))])
        on = np.empty(len(mid), dtype=bool)
        for c in range(0, len(umid), ev.batch_size):
            part = umid[c : c + ev.batch_size]
            s_t = torch.from_numpy(part).reshape(-1, *([1] * v0.dim()))
            z, _ = ev(v0[None] + s_t * (v1 - v0)[None])
            rows = order[bounds[c] : bounds[c + len(part)]]
            on[rows] = z.numpy()[inv[rows] - c, cols[rows]] > 0
        same = on == code_lo
        lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
    return list(zip((0.5 * (lo + hi)).tolist(), np.nonzero(count_mask)[0][units].tolist()))


def boundary_density(
    adapter: ModelAdapter,
    path: ActivationPath,
    *,
    count_layers: str | list[str] | None = None,
    exact: bool | None = None,
    n_samples: int = 1000,
    refine: bool = True,
    n_profile: int = 200,
    batch_size: int = 256,
    max_evaluations: int = 2_000_000,
    affine_change: bool = True,
    shared_base: bool = True,
) -> DensityResult:
    """Count polytope boundary crossings along ``path``.

    exact: None → exact when every checked layer is piecewise-linear; True on a smooth layer →
    ValueError. n_samples: sampled mode's steps over the whole path. n_profile: grid steps for the
    Hamming/output profile (0: none). affine_change: give each crossing ``affine_change``, the
    Frobenius norm of the change of the linearised map (path space → model output) across it
    (``polylens.lens.affine_change``; exact mode only, else None). shared_base: for a path in a
    hidden layer, run the layers before it once on the base input (``Evaluator``), where that gives
    bit for bit what the base expanded to every point does; False: always expand (the reference).
    """
    _check_sizes(n_samples, n_profile, batch_size)
    counted, checked, exact = _choose_layers(adapter, path, count_layers, exact)
    # float64 where exactness needs it
    ev = Evaluator(adapter, path, checked, batch_size=batch_size, float64=exact, shared_base=shared_base)
    crossings = _crossings(ev, path, counted, exact, n_samples, refine, max_evaluations)
    if exact and affine_change:
        changes_f = affine_changes(adapter, ev.module, path, crossings, batch_size, shared_base=ev.shares_base())
        crossings = [replace(c, affine_change=value) for c, value in zip(crossings, changes_f)]
    evaluations = ev.evaluations
    profile, changes, corr = _profile(adapter, ev, path, counted, crossings, n_profile) if n_profile else ({}, [], None)
    return DensityResult(
        model=adapter.name,
        layers=counted,
        space_layer=path.layer,
        path={
            "kind": path.kind,
            "length": path.length,
            "layer": path.layer,
            "n_vertices": int(path.vertices.shape[0]),
            **path.meta,
        },
        n_crossings=len(crossings),
        crossings=crossings,
        density_per_unit_length=len(crossings) / path.length,
        exact=exact,
        crossings_per_layer={n: sum(c.layer == n for c in crossings) for n in counted},
        evaluations=evaluations,
        profile=profile,
        output_changes=changes,
        peak_output_correlation=corr,
    )


def _check_sizes(n_samples: int, n_profile: int, batch_size: int) -> None:
    check_int("n_samples", n_samples, low=1)
    check_int("batch_size", batch_size, low=1)
    check_int("n_profile", n_profile, low=0)
    for name, value in (("n_samples", n_samples), ("n_profile", n_profile)):
        if value > MAX_SAMPLES:
            raise ValueError(
                f"{name}={value} is more than {MAX_SAMPLES:,} points on one path (a forward pass each); "
                "use fewer, or exact counting where the network is piecewise-linear"
            )


def _crossings(ev, path, counted, exact, n_samples, refine, max_evaluations) -> list[Crossing]:
    """The crossings of every segment of ``path``, sorted by t (no affine change yet)."""
    verts = path.vertices.detach().double()
    seg_len = path.segment_lengths
    raw: list[tuple[float, int]] = []
    for i in range(len(seg_len)):
        if exact:
            got = _exact_segment(ev, verts[i], verts[i + 1], counted, max_evaluations)
        else:
            steps = max(1, int(round(n_samples * seg_len[i] / seg_len.sum())))
            got = _sampled_segment(ev, verts[i], verts[i + 1], steps, counted, refine)
        raw.extend((float(path.to_t(i, s)), u) for s, u in got)
    raw.sort()
    crossings = []
    for t, column in raw:
        name, unit, bp = ev.locate(column)
        crossings.append(Crossing(t, name, int(unit), breakpoint=float(bp)))
    return crossings


def _profile(adapter, ev, path, counted, crossings, n_profile):
    """Hamming distance between consecutive grid points, output labels, and their correlation."""
    t = np.linspace(0.0, 1.0, n_profile + 1)
    z, out = ev(path.at(t), want_output=True)
    codes = SplineCodes.from_preactivations({"counted": z[:, torch.from_numpy(_layer_index(ev, counted).count)]})
    hamming = codes.consecutive_hamming()
    labels = adapter.describe_output(out) if (out is not None and adapter.describe_output) else []
    changes, corr = [], None
    if labels:
        changed = np.array([labels[k] != labels[k + 1] for k in range(n_profile)], dtype=float)
        changes = [float(0.5 * (t[k] + t[k + 1])) for k in np.nonzero(changed)[0]]
        counts = np.histogram([c.t for c in crossings], bins=t)[0].astype(float)
        if changed.std() > 0 and counts.std() > 0:
            corr = float(np.corrcoef(counts, changed)[0, 1])
    return {"t": t.tolist(), "hamming": hamming.tolist(), "labels": list(labels)}, changes, corr
