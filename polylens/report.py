"""Figures (PNG) for polylens results. matplotlib is imported only when drawing."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from polylens.directions import abs_cosines

# Up to this many ground-truth directions, draw the vectors themselves; beyond, |cos| heatmaps.
_MAX_VECTOR_PANELS = 4


def plot_direction_recovery(truth, found: Mapping[str, np.ndarray], path: str, title: str = "") -> None:
    """Ground-truth vs recovered directions, written as a PNG to ``path``.

    truth: ``[g, dim]``; found: method -> ``[m, dim]``. The first panel gives
    each ground-truth direction's best |cos| per method. Then, for g <= 4, one
    panel per ground-truth direction with its entries and each method's best
    match (sign-aligned); for larger g, one |cos| heatmap per method with the
    columns in Hungarian-matched order.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.optimize import linear_sum_assignment

    truth = np.asarray(truth, dtype=np.float64)
    truth = truth / np.linalg.norm(truth, axis=1, keepdims=True)
    names = list(found)
    cos = {name: abs_cosines(truth, found[name]) for name in names}
    g = truth.shape[0]
    vectors = g <= _MAX_VECTOR_PANELS
    n_panels = 1 + (g if vectors else len(names))
    fig, axes = plt.subplots(1, n_panels, figsize=(3.8 * n_panels, 3.6), squeeze=False, layout="constrained")
    axes = axes[0]

    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        axes[0].bar(np.arange(g) + (i - (len(names) - 1) / 2) * width, cos[name].max(axis=1), width=width, label=name)
    axes[0].axhline(0.9, color="k", lw=0.8, ls="--")
    axes[0].set(ylim=(0, 1.05), xlabel="ground-truth direction", ylabel="best |cos|", title="best match per ground-truth direction")
    axes[0].set_xticks(np.arange(g) if g <= 20 else np.arange(0, g, max(1, g // 10)))
    axes[0].legend(fontsize=7, loc="lower right")

    if vectors:
        for j, ax in enumerate(axes[1:]):
            ax.plot(truth[j], color="k", lw=2.2, label="ground truth")
            for name in names:
                F = np.asarray(found[name], dtype=np.float64)
                F = F / np.linalg.norm(F, axis=1, keepdims=True)
                b = int(cos[name][j].argmax())
                v = F[b] * np.sign(F[b] @ truth[j] or 1.0)
                ax.plot(v, lw=1.0, alpha=0.85, label=f"{name} (|cos| {cos[name][j, b]:.3f})")
            ax.set(xlabel="hidden unit", ylabel="component", title=f"ground-truth direction {j}")
            ax.legend(fontsize=7)
    else:
        for ax, name in zip(axes[1:], names):
            rows, cols = linear_sum_assignment(-cos[name])
            order = list(cols[np.argsort(rows)]) + [c for c in range(cos[name].shape[1]) if c not in set(cols)]
            im = ax.imshow(cos[name][:, order], vmin=0, vmax=1, cmap="viridis", aspect="auto", interpolation="nearest")
            ax.set(title=f"{name}: |cos|", xlabel="recovered (matched order)", ylabel="ground-truth direction")
        fig.colorbar(im, ax=list(axes[1:]), shrink=0.85, label="|cos|")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
