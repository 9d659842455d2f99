"""Row geometry shared by the model, its initialisations, training and the metrics."""

from __future__ import annotations

from torch import Tensor


def unit_rows(W: Tensor) -> Tensor:
    """``W [..., n, d]`` with every row scaled to norm 1 (a zero row stays 0): the one row
    normalisation of ``sae``."""
    return W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)
