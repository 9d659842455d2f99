"""Exact boundary crossings vs 10⁴-point sampling: forward evaluations needed and crossings found.

Goal (issue 4): every crossing, with ≥ 10× fewer evaluations than sampling at 10⁴ points.
Sampling counts code flips between consecutive points, so two flips of one unit within a step
cancel and are missed. Paths: the embedded digits CNN (trained on first use, cached) and a
deeper random ReLU MLP. Run: .venv/bin/python bench/bench_density.py
"""

from __future__ import annotations

import time
from collections import Counter

import torch
from torch import nn

from polylens.lens.density import boundary_density
from polylens.lens.paths import interpolation_path, scaling_path
from polylens.models import load_model
from polylens.models.base import ModelAdapter

N_SAMPLES = 10_000


def mlp(seed: int = 0, width: int = 64, depth: int = 4) -> ModelAdapter:
    torch.manual_seed(seed)
    layers, acts, d = [], {}, 16
    for i in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        acts[str(2 * i)] = "relu"
        d = width
    net = nn.Sequential(*layers, nn.Linear(d, 10)).eval()
    return ModelAdapter(
        "random ReLU MLP 16-64x4-10", net, acts, [n for n, _ in net.named_modules() if n], prepare=torch.as_tensor
    )


def paths():
    digits = load_model("digits")
    x = digits.default_inputs(40)
    labels = digits.describe_output(digits.module(x))
    j = next(k for k in range(40) if labels[k] != labels[0])
    yield (
        digits,
        f"input space, digit {labels[0]} -> {labels[j]}",
        interpolation_path(digits, x[:1], x[j : j + 1], "input"),
    )
    yield digits, "relu1 space, same pair", interpolation_path(digits, x[:1], x[j : j + 1], "relu1")
    yield digits, "scaling a(x) at relu1, α ∈ [0, 3]", scaling_path(digits, x[:1], "relu1", 3.0)
    net = mlp()
    g = torch.Generator().manual_seed(0)
    yield (
        net,
        "input space, 2 random points",
        interpolation_path(net, torch.randn(1, 16, generator=g) * 3, torch.randn(1, 16, generator=g) * 3, "input"),
    )


def main() -> None:
    print(
        f"{'model / path':<58}{'exact evals':>12}{'sampled evals':>14}{'evals ratio':>12}{'exact found':>12}"
        f"{'sampled found':>14}{'found ratio':>12}{'exact s':>9}{'sampled s':>10}"
    )
    for adapter, label, path in paths():
        t0 = time.perf_counter()
        exact = boundary_density(adapter, path, n_profile=0)
        t1 = time.perf_counter()
        sampled = boundary_density(adapter, path, exact=False, n_samples=N_SAMPLES, refine=False, n_profile=0)
        t2 = time.perf_counter()
        e = Counter((c.layer, c.unit) for c in exact.crossings)
        s = Counter((c.layer, c.unit) for c in sampled.crossings)
        assert all(e[k] >= s[k] for k in s), "sampling found a crossing that exact counting missed"
        name = f"{adapter.name}: {label}"
        print(
            f"{name[:57]:<58}{exact.evaluations:>12}{sampled.evaluations:>14}"
            f"{sampled.evaluations / exact.evaluations:>11.1f}x"
            f"{exact.n_crossings:>12}{sampled.n_crossings:>14}{sampled.n_crossings / max(exact.n_crossings, 1):>12.4f}"
            f"{t1 - t0:>9.2f}{t2 - t1:>10.2f}"
        )


if __name__ == "__main__":
    main()
