"""Figures (PNG) for polylens results. matplotlib is imported only when drawing."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from polylens.directions.scoring import abs_cosines

# Up to this many ground-truth directions, draw the vectors themselves; beyond, |cos| heatmaps.
_MAX_VECTOR_PANELS = 4


def plot_direction_recovery(truth, found: Mapping[str, np.ndarray], path: str, title: str = "") -> None:
    """Ground-truth vs recovered directions, written as a PNG to ``path``.

    truth: ``[g, dim]``; found: method -> ``[m, dim]``. The first panel gives
    each ground-truth direction's best |cos| per method, the last their histogram. Then, for g <= 4, one
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
    n_panels = 2 + (g if vectors else len(names))
    n_cols = min(4, n_panels)  # a grid, not a strip: at most four panels a row
    n_rows = -(-n_panels // n_cols)
    fig, grid = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 3.6 * n_rows), squeeze=False, layout="constrained")
    for ax in grid.flat[n_panels:]:
        ax.set_axis_off()
    axes = list(grid.flat[:n_panels])

    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        axes[0].bar(np.arange(g) + (i - (len(names) - 1) / 2) * width, cos[name].max(axis=1), width=width, label=name)
    axes[0].axhline(0.9, color="k", lw=0.8, ls="--")
    axes[0].set(
        ylim=(0, 1.05),
        xlabel="ground-truth direction",
        ylabel="best |cos|",
        title="best match per ground-truth direction",
    )
    axes[0].set_xticks(np.arange(g) if g <= 20 else np.arange(0, g, max(1, g // 10)))
    _legend(axes[0], fontsize=7, loc="lower right")

    # the distribution of the best |cos| per ground-truth direction: "all half-found" vs "half found"
    hist = axes[-1]
    bins = np.linspace(0, 1, 21)
    for name in names:
        hist.hist(cos[name].max(axis=1), bins=bins, histtype="step", lw=1.4, label=name)
    hist.axvline(0.9, color="k", lw=0.8, ls="--")
    hist.set(
        xlabel="best |cos| of a ground-truth direction",
        ylabel="ground-truth directions",
        title="distribution of best matches",
    )
    _legend(hist, fontsize=7, loc="upper left")
    axes = axes[:-1]

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
            _legend(ax, fontsize=7)
    else:
        for ax, name in zip(axes[1:], names):
            rows, cols = linear_sum_assignment(-cos[name])
            order = list(cols[np.argsort(rows)]) + [c for c in range(cos[name].shape[1]) if c not in set(cols)]
            im = ax.imshow(cos[name][:, order], vmin=0, vmax=1, cmap="viridis", aspect="auto", interpolation="nearest")
            ax.set(title=f"{name}: |cos|", xlabel="recovered (matched order)", ylabel="ground-truth direction")
        fig.colorbar(im, ax=axes[1:], shrink=0.85, label="|cos|")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def _legend(ax, **kwargs) -> None:
    """A legend where the axes hold a labelled artist; none otherwise (matplotlib would warn
    "No artists with labels found to put in legend" on the user's terminal)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_density_path(result, path: str, title: str = "") -> None:
    """Crossings along a path (histogram over t, per counted layer) with the output label under it.

    result: a ``polylens.lens.density.DensityResult`` (or its JSON dict).
    """
    plt = _pyplot()
    res = result if isinstance(result, dict) else result.to_json()
    prof = res.get("profile") or {}
    t_grid = np.asarray(prof.get("t") or np.linspace(0, 1, 101))
    fig, (ax, lab) = plt.subplots(2, 1, figsize=(8, 4.2), sharex=True, height_ratios=[4, 1], layout="constrained")
    bottom = np.zeros(len(t_grid) - 1)
    for name in res["layers"]:
        ts = [c["t"] for c in res["crossings"] if c["layer"] == name]
        counts = np.histogram(ts, bins=t_grid)[0]
        ax.bar(t_grid[:-1], counts, width=np.diff(t_grid), bottom=bottom, align="edge", label=name)
        bottom += counts
    if prof.get("hamming"):
        ax.plot(
            0.5 * (t_grid[1:] + t_grid[:-1]), prof["hamming"], color="k", lw=0.8, label="Hamming, consecutive points"
        )
    for t in res.get("output_changes", []):
        ax.axvline(t, color="r", lw=0.8, ls="--")
    kind = "exact" if res["exact"] else "sampled"
    ax.set(
        ylabel="crossings per step",
        title=title or f"{res['model']}: {res['n_crossings']} crossings ({kind}), path in {res['space_layer']}",
    )
    _legend(ax, fontsize=7, loc="upper right")
    labels = prof.get("labels") or []
    if labels:
        names = sorted(set(labels), key=labels.index)
        colours = plt.get_cmap("tab10")
        for k in range(len(labels) - 1):
            lab.axvspan(t_grid[k], t_grid[k + 1], color=colours(names.index(labels[k]) % 10), lw=0)
        start = 0
        for k in range(1, len(labels) + 1):
            if k == len(labels) or labels[k] != labels[start]:
                lab.text(
                    0.5 * (t_grid[start] + t_grid[min(k, len(t_grid) - 1)]),
                    0.5,
                    labels[start],
                    ha="center",
                    va="center",
                    fontsize=9,
                )
                start = k
    lab.set(yticks=[], xlabel="position along the path t", ylabel="output")
    lab.set_xlim(0, 1)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def plot_shell_profile(profile, path: str, title: str = "") -> None:
    """Crossings per unit radius vs radius, with the histogram of real activation norms.

    profile: a ``polylens.lens.shell.ShellProfile`` (or its JSON dict).
    """
    plt = _pyplot()
    prof = profile if isinstance(profile, dict) else profile.to_json()
    edges = np.asarray(prof["bin_edges"])
    centres = 0.5 * (edges[1:] + edges[:-1])
    density = np.array([np.nan if d is None else d for d in prof["density"]], dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    ax.plot(centres, density, marker="o", ms=3, color="C0", label="boundary crossings per unit radius")
    ax.set(xlabel=f"radius ‖α·a‖ in {prof['layer']}", ylabel="crossings per unit radius per path")
    twin = ax.twinx()
    twin.hist(prof["norms"], bins=edges, color="C1", alpha=0.3, label="‖a‖ of the data")
    twin.set_ylabel("data points")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    if lines[0] + more[0]:
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="upper right")
    kind = "exact" if prof["exact"] else "sampled"
    ax.set_title(title or f"{prof['model']}: shell profile over {prof['n_paths']} scaling paths ({kind})", fontsize=10)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def plot_layer_comparison(result: Mapping, path: str, title: str = "") -> None:
    """``polylens compare --model``'s result as a PNG at ``path``: the ablation curves (KL to the
    original output, and the accuracy drop where labels exist) over k per method, the variance and
    gradient-energy shares over k, and the methods' agreement matrix (mean max |cos|)."""
    plt = _pyplot()
    methods = result["methods"]
    with_acc = any(m["ablation"]["accuracy_drop"] for m in methods.values())
    n_panels = 4 + with_acc
    fig, axes = plt.subplots(1, n_panels, figsize=(4.2 * n_panels, 3.8), layout="constrained")
    first = next(iter(methods.values()))["ablation"]
    change = ("kl", "KL(original ‖ ablated)") if "kl" in first else ("cos_distance", "1 − cos(embedding, ablated)")
    panels = [(*change, True)] + ([("accuracy_drop", "accuracy drop", False)] if with_acc else [])
    panels += [
        ("activation_variance", "share of activation variance", False),
        ("gradient_energy", "share of gradient energy", False),
    ]
    for ax, (key, label, log) in zip(axes, panels):
        for i, (name, m) in enumerate(methods.items()):
            ys = m["ablation"][key]
            style = dict(color="k", ls="--") if name == "random" else dict(color=f"C{i}")
            ax.plot(m["ablation"]["k"], [np.nan if y is None else y for y in ys], marker="o", ms=3, label=name, **style)
        ax.set(
            xlabel="top-k directions",
            ylabel=label,
            title=label if key in ("kl", "cos_distance", "accuracy_drop") else label + " in the span",
        )
        if log:
            ax.set_yscale("symlog", linthresh=1e-3)
    _legend(axes[0], fontsize=7)
    ag = result["agreement"]
    M = np.asarray(ag["mmcs"], dtype=np.float64)
    ax = axes[-1]
    im = ax.imshow(M, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(ag["methods"])), ag["methods"], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(ag["methods"])), ag["methods"], fontsize=7)
    for i in range(M.shape[0]):
        for j in range(M.shape[1]):
            ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=6, color="w" if M[i, j] < 0.6 else "k")
    ax.set(title="agreement: mean max |cos| (row vs column)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
