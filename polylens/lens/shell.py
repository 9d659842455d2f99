"""The shell profile: polytope boundary density as a function of distance from the origin.

For each data point x with activation a = a(x) at a layer, the scaling path α·a, α ∈ [0, A],
is a ray from the origin; a crossing at α lies at radius r = α‖a‖. Over many points,

    density(bin) = Σ crossings with r in bin / Σ length of [0, A‖a‖] inside bin,

i.e. crossings per unit radius per path, so bins reached by few paths are not undercounted.
The norms ‖a‖ of the real activations are kept for overlaying their histogram.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from torch import Tensor

from polylens.lens.density import boundary_density
from polylens.lens.paths import scaling_path
from polylens.models.base import ModelAdapter
from polylens.validation import check_float, check_int


@dataclass
class ShellProfile:
    """Radial density profile. bin_edges ``[b+1]``; density, crossings, coverage ``[b]``; norms ``[n]``."""

    model: str
    layer: str
    layers: list[str]
    n_paths: int
    alpha_max: float
    bin_edges: list[float]
    density: list[float]
    crossings: list[int]
    coverage: list[float]
    norms: list[float]
    n_crossings: int
    exact: bool
    evaluations: int

    def to_json(self) -> dict:
        return asdict(self)


def shell_profile(
    adapter: ModelAdapter,
    inputs: Tensor,
    layer: str,
    *,
    alpha_max: float = 3.0,
    n_bins: int = 30,
    count_layers: list[str] | None = None,
    exact: bool | None = None,
    n_samples: int = 1000,
    batch_size: int = 256,
) -> ShellProfile:
    """Crossings per unit radius vs ‖α·a‖ over the scaling paths of ``inputs [n, ...]`` at ``layer``."""
    check_int("n_bins", n_bins, low=1)
    check_float("alpha_max", alpha_max, low=0, open_low=True)
    if inputs.shape[0] < 1:
        raise ValueError("shell_profile needs at least one input")
    radii, norms, evaluations, layers, was_exact = [], [], 0, None, True
    for i in range(inputs.shape[0]):
        path = scaling_path(adapter, inputs[i : i + 1], layer, alpha_max)
        res = boundary_density(
            adapter,
            path,
            count_layers=count_layers,
            exact=exact,
            n_samples=n_samples,
            n_profile=0,
            batch_size=batch_size,
            affine_change=False,
        )
        norm = path.meta["norm"]
        norms.append(norm)
        radii.extend(c.t * alpha_max * norm for c in res.crossings)
        evaluations += res.evaluations
        layers, was_exact = res.layers, res.exact
    norms_a = np.array(norms)
    edges = np.linspace(0.0, alpha_max * norms_a.max(), n_bins + 1)
    counts = np.histogram(radii, bins=edges)[0]
    # Length of each ray [0, A·‖a‖] inside each bin, summed over rays.
    reach = alpha_max * norms_a[:, None]
    coverage = np.clip(np.minimum(reach, edges[None, 1:]) - edges[None, :-1], 0.0, None).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        density = np.where(coverage > 0, counts / coverage, np.nan)
    return ShellProfile(
        model=adapter.name,
        layer=layer,
        layers=list(layers),
        n_paths=int(inputs.shape[0]),
        alpha_max=float(alpha_max),
        bin_edges=edges.tolist(),
        density=density.tolist(),
        crossings=counts.tolist(),
        coverage=coverage.tolist(),
        norms=norms_a.tolist(),
        n_crossings=len(radii),
        exact=was_exact,
        evaluations=evaluations,
    )
