"""The cluster report: one self-contained HTML page (inline CSS, figures and thumbnails as base64
PNG, no scripts, no external links), opened from disk without a server.

Summary figures: cluster sizes; purity and NMI of codes vs activations per label; a 2-D embedding
(classical MDS of the Hamming distances between medoids). Then one card a cluster: size, active
fraction, nearest cluster, the most over- and under-represented units, the commonest labels, and
its top examples (tokens highlighted in their context, or thumbnails).
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    _pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _img_png(arr: np.ndarray, scale: int = 1) -> str:
    from PIL import Image

    img = Image.fromarray(np.asarray(arr, dtype=np.uint8))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def summary_figures(result, words: np.ndarray) -> dict[str, str]:
    """base64 PNGs: ``sizes``, ``scores`` (when labels exist), ``embedding`` (≥ 3 clusters)."""
    from polylens.clustering.hamming import pairwise

    plt = _pyplot()
    figs = {}
    fig, ax = plt.subplots(figsize=(6, 3), layout="constrained")
    for space, res in result.on.items():
        if res and res["sizes"]:
            ax.plot(
                np.arange(1, len(res["sizes"]) + 1), res["sizes"], marker=".", label=f"{space} ({res['n_clusters']})"
            )
    ax.set(xlabel="cluster rank", ylabel="points", yscale="log", title="cluster sizes")
    if ax.get_legend_handles_labels()[0]:  # no legend without a labelled line (matplotlib would warn)
        ax.legend(fontsize=8)
    else:  # every point is noise: no cluster to plot
        ax.text(0.5, 0.5, "no clusters: every point is noise", ha="center", va="center", transform=ax.transAxes)
    figs["sizes"] = _png(fig)
    labelled = [(s, r) for s, r in result.on.items() if r and r.get("by_label")]
    if labelled:
        names = list(labelled[0][1]["by_label"])
        fig, axes = plt.subplots(1, 2, figsize=(7, 3), layout="constrained")
        width = 0.8 / len(labelled)
        for i, (space, res) in enumerate(labelled):
            x = np.arange(len(names)) + i * width
            axes[0].bar(x, [res["by_label"][n]["purity"] or 0 for n in names], width, label=space)
            axes[1].bar(x, [res["by_label"][n]["nmi"] for n in names], width, label=space)
        for ax, title in zip(axes, ("purity", "NMI")):
            ax.set_xticks(np.arange(len(names)) + width * (len(labelled) - 1) / 2, names)
            ax.set(title=title, ylim=(0, 1))
        axes[0].legend(fontsize=8)
        figs["scores"] = _png(fig)
    if len(result.clusters) >= 3:
        med = [c["medoid"] for c in result.clusters]
        xy = classical_mds(pairwise(words[med]).astype(np.float64))
        sizes = np.array([c["size"] for c in result.clusters], dtype=float)
        fig, ax = plt.subplots(figsize=(4.5, 4), layout="constrained")
        ax.scatter(xy[:, 0], xy[:, 1], s=20 + 200 * sizes / sizes.max(), alpha=0.6)
        for c, (x, y) in zip(result.clusters, xy):
            ax.annotate(str(c["label"]), (x, y), fontsize=7)
        ax.set(title="medoids (classical MDS of Hamming distances)", xticks=[], yticks=[])
        figs["embedding"] = _png(fig)
    return figs


def classical_mds(dist: np.ndarray, dims: int = 2) -> np.ndarray:
    """Torgerson's classical MDS: top eigenvectors of the double-centred −½D², scaled by √λ."""
    n = len(dist)
    j = np.eye(n) - 1.0 / n
    b = -0.5 * j @ (dist**2) @ j
    vals, vecs = np.linalg.eigh(b)
    top = np.argsort(vals)[::-1][:dims]
    return vecs[:, top] * np.sqrt(np.maximum(vals[top], 0))


CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px} h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0} .figs img{margin:4px;border:1px solid #ddd}
.card{border:1px solid #bbb;border-radius:6px;padding:10px 14px;margin:10px 0;background:#fafafa}
.card h3{margin:0 0 6px 0;font-size:15px} .meta{font-size:12px;color:#555}
.ex{font-family:monospace;font-size:12px;margin:2px 0;white-space:pre-wrap}
.ex mark{background:#ffd54f;font-weight:bold} .thumbs img{margin:2px;border:1px solid #999;image-rendering:pixelated}
.units{font-size:12px} .notes{font-size:12px;color:#444}
"""


def _example_html(ex: dict) -> str:
    if "text" in ex:
        toks = [html.escape(t) for t in ex["text"]]
        f = ex["focus"]
        return "<div class='ex'>" + "".join(toks[:f]) + f"<mark>{toks[f]}</mark>" + "".join(toks[f + 1 :]) + "</div>"
    if "image" in ex:
        img = np.asarray(ex["image"])
        scale = max(1, 48 // max(img.shape[:2]))
        title = html.escape(str(ex.get("file", "")))
        return f"<img title='{title}' src='data:image/png;base64,{_img_png(img, scale)}'>"
    return f"<span class='ex'>{html.escape(str(ex.get('input', '')))}</span>"


def render_html(result, points, figures: dict[str, str], *, max_clusters: int = 200) -> str:
    """The page as a string."""
    e = html.escape
    rows = []
    for space, res in result.on.items():
        if not res:
            continue
        lab = ", ".join(
            f"{n}: purity {v['purity'] if v['purity'] is not None else float('nan'):.3f} "
            f"/ NMI {v['nmi']:.3f} / ARI {v['ari']:.3f}"
            for n, v in (res["by_label"] or {}).items()
        )
        rows.append(
            f"<tr><th>{e(space)}</th><td>{res['n_clusters']}</td><td>{res['noise_frac']:.3f}</td>"
            f"<td>{e(res['route'])}</td>"
            f"<td>{res['seconds']:.2f}</td><td style='text-align:left'>{e(lab) or '—'}</td></tr>"
        )
    agree = (
        ""
        if result.agreement_ari is None
        else f"<p>ARI between the code and the activation clusterings: <b>{result.agreement_ari:.3f}</b>"
        + ("" if result.agreement_ari_cosine is None else f" (cosine: {result.agreement_ari_cosine:.3f})")
        + "</p>"
    )
    figs = "".join(f"<img alt='{k}' src='data:image/png;base64,{v}'>" for k, v in figures.items())
    cards = []
    for c in result.clusters[:max_clusters]:
        exs = [_example_html(points.examples[i]) for i in c["top_examples"] if i < len(points.examples)]
        images = all("image" in points.examples[i] for i in c["top_examples"] if i < len(points.examples))
        body = f"<div class='thumbs'>{''.join(exs)}</div>" if images else "".join(exs)
        over = ", ".join(f"{e(u['unit'])} ({u['cluster']:.2f} vs {u['all']:.2f})" for u in c["over_represented"][:6])
        under = ", ".join(f"{e(u['unit'])} ({u['cluster']:.2f} vs {u['all']:.2f})" for u in c["under_represented"][:6])
        labels = "; ".join(
            f"{e(n)}: " + ", ".join(f"{e(repr(v['value']))}×{v['count']}" for v in vals)
            for n, vals in c.get("labels", {}).items()
        )
        near = c["nearest_cluster"]
        cards.append(
            f"<div class='card'><h3>cluster {c['label']} — {c['size']} points</h3>"
            f"<div class='meta'>mean active fraction {c['mean_active_fraction']:.3f}; "
            f"mean Hamming to medoid {c['mean_hamming_to_medoid']:.1f}; "
            + (f"nearest cluster {near['label']} (medoid distance {near['hamming']})" if near else "no other cluster")
            + f"</div><div class='units'>on more often: {over or '—'}<br>off more often: {under or '—'}</div>"
            + (f"<div class='meta'>{labels}</div>" if labels else "")
            + body
            + "</div>"
        )
    more = (
        f"<p class='notes'>{len(result.clusters) - max_clusters} more clusters in clusters.json</p>"
        if len(result.clusters) > max_clusters
        else ""
    )
    notes = "".join(f"<li>{e(n)}</li>" for n in result.notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>polylens clusters: {e(result.model)} {e(result.layer)}</title>
<style>{CSS}</style></head><body>
<h1>Spline-code clusters — {e(result.model)}, {e(result.layer)}</h1>
<p>{result.n_points} points, {result.n_unique_codes} distinct codes; method {e(result.method)};
{result.seconds:.1f} s.</p>
<table><tr><th>clustered on</th><th>clusters</th><th>noise</th><th>route</th><th>s</th>
<th>against labels</th></tr>{"".join(rows)}</table>
{agree}<div class="figs">{figs}</div>
<ul class="notes">{notes}</ul>
<h2>Clusters ({len(result.clusters)})</h2>{"".join(cards)}{more}
</body></html>
"""
