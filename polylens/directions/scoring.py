"""Directions as rows, and how close two sets of them are, sign-invariantly: the one place polylens
compares directions (``score_directions`` against a ground truth, ``abs_cosines`` for agreement
matrices and figures, ``span_basis`` for subspaces).

The one-to-one (Hungarian) match and the recovered fraction are scored where ``polylens`` and
``sae`` meet (``cli.experiments.compare_toys``), by ``sae.metrics``, which needs them for its own
reports: one implementation of each, in one package.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def as_rows(X, name: str = "X") -> np.ndarray:
    """``[n, dim]`` (or ``[n, k, dim]``, flattened to rows) as float64 numpy; rejects NaN/inf."""
    if hasattr(X, "detach"):  # a torch tensor, read without importing torch here
        X = X.detach().cpu().numpy()
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 3:
        X = X.reshape(-1, X.shape[-1])
    if X.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array [n_samples, n_features] (or [n, k, n_features]); got shape {X.shape}"
        )
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {X.shape}); pass at least one sample and one feature")
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X)).any(axis=1).sum())
        raise ValueError(f"{name} contains NaN or inf in {bad} of {X.shape[0]} rows; clean or drop those rows first")
    return X


def unit_rows(X):
    """``X [n, dim]`` with every non-zero row scaled to norm 1 (zero rows stay 0); numpy or torch in,
    the same kind out."""
    if hasattr(X, "detach"):
        return X / X.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    norms = np.linalg.norm(X, axis=-1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def span_basis(directions) -> np.ndarray:
    """An orthonormal basis ``[r, d]`` of the span of ``directions [m, d]`` (r = its rank; an SVD,
    so duplicated or nearly parallel directions count once)."""
    D = np.asarray(directions, dtype=np.float64)
    _, s, vt = np.linalg.svd(D, full_matrices=False)
    return vt[s > s.max() * 1e-10] if s.size and s.max() > 0 else np.zeros((0, D.shape[1]))


def abs_cosines(truth, found) -> np.ndarray:
    """|cos| between every truth row and every found row: ``[n_truth, n_found]``."""
    T = unit_rows(as_rows(truth, "truth"))
    F = unit_rows(as_rows(found, "found"))
    if T.shape[1] != F.shape[1]:
        raise ValueError(
            f"truth has dimension {T.shape[1]} but found has {F.shape[1]}; they must live in the same space"
        )
    return np.abs(T @ F.T)


class DirectionScores(NamedTuple):
    """How close ``found`` directions come to ``truth`` directions (sign-invariant, for PCA-like
    bases whose signs are arbitrary; ``sae.metrics.mmcs_signed`` is the signed one, for
    dictionaries with non-negative coefficients).

    mmcs: mean over truth of the best |cos| with any found direction.
    subspace_overlap: mean over truth of ‖P u‖ for unit u, P the projector onto span(found):
        1 when every truth vector lies in that span.
    n_directions: how many directions were found.
    best_abs_cos: per truth direction, its best |cos|: their distribution tells "every direction
        half-found" from "half the directions found".
    """

    mmcs: float
    subspace_overlap: float
    n_directions: int
    best_abs_cos: tuple = ()


def score_directions(truth, found) -> DirectionScores:
    """Score ``found: [m, dim]`` against ``truth: [g, dim]`` (rows are directions)."""
    best = abs_cosines(truth, found).max(axis=1)
    T = unit_rows(as_rows(truth, "truth"))
    F = as_rows(found, "found")
    overlap = float(np.linalg.norm(T @ span_basis(F).T, axis=1).mean())
    return DirectionScores(
        mmcs=float(best.mean()),
        subspace_overlap=overlap,
        n_directions=int(F.shape[0]),
        best_abs_cos=tuple(float(v) for v in best),
    )
