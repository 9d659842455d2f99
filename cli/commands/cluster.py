"""``polylens cluster``: cluster a layer's spline codes (and, beside them, its activations) and write
labels, JSON and a self-contained HTML report.

Python equivalent: ``polylens.clustering.analysis.cluster_layer(polylens.clustering.points.digits_points(
load_model("digits"), "fc1"))``; the protocols are ``text_points``, ``image_points``,
``digits_points``, ``array_points``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cli.modelargs import add_model_args, load_from_args


def load_points(args):
    """The ``LayerPoints`` the flags name: a codes file, or a model's protocol."""
    from polylens.clustering import points as protocols

    if args.codes:
        from cli.flags import given
        from cli.modelargs import check_npy

        model_only = ("model", "weights", "random_weights", "device", "activation", "input", "position", "n")
        text_only = ("max_sequences", "skip", "per_seq")
        for dest in (d for d in (*model_only, *text_only) if d in given(args)):
            raise ValueError(f"--{dest.replace('_', '-')} applies when a model runs; --codes reads codes from a file")
        check_npy(args.codes, "--codes")
        return protocols.codes_points(args.codes, args.layer)
    adapter = load_from_args(args)
    spec = args.model or "digits"
    progress = not args.no_progress
    for flag, value, default in (("--skip", args.skip, 100), ("--per-seq", args.per_seq, 6)):
        if value != default and adapter.tokenize is None:
            raise ValueError(f"{flag} applies to text models (gpt2, minilm-l6); {spec} does not read text")
    if adapter.tokenize is not None:
        if not args.input:
            raise ValueError(f"{spec} clustering needs --input: a text file or a folder of .txt files")
        if args.position:
            raise ValueError(f"--position applies to image models; {spec} reads text")
        return protocols.text_points(
            adapter,
            args.layer,
            args.input,
            max_sequences=args.max_sequences,
            skip=args.skip,
            per_seq=args.per_seq,
            progress=progress,
        )
    if args.max_sequences is not None:
        raise ValueError(f"--max-sequences applies to text models (gpt2, minilm-l6); {spec} does not read text")
    if spec in IMAGE_DEFAULT_LAYER or spec.startswith("torchvision"):
        layer = args.layer or IMAGE_DEFAULT_LAYER.get(spec)
        if layer is None:
            raise ValueError("give --layer (an activation layer of the model)")
        if not args.input and spec != "efficientnet-lite0":  # the one image model with any number of bundled images
            raise ValueError(f"{spec} clustering needs --input FOLDER of images")
        return protocols.image_points(
            adapter, layer, args.input, n=args.n, position=_position(args.position), progress=progress
        )
    if args.position:
        raise ValueError(f"--position applies to image models (conv layers); {spec} has none")
    if args.input:
        return protocols.array_points(adapter, args.layer, args.input, progress=progress)
    if spec == "digits":
        return protocols.digits_points(adapter, args.layer, progress=progress)
    raise ValueError(f"model {spec} has no bundled inputs; give them with --input FILE.npy")


# Image models and the layer their clustering reads by default (the paper's mixed4a for InceptionV1;
# for EfficientNet-Lite0 the expansion pre-activations of block 10, 672 channels at 14x14, a comparable depth)
IMAGE_DEFAULT_LAYER = {"inceptionv1": "mixed4a", "efficientnet-lite0": "_blocks.10._bn0"}


def _position(text: str | None):
    if not text:
        return None
    try:
        h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--position {text!r} must be H,W (two integers), e.g. 7,7") from None
    return h, w


OUTPUTS = ("clusters.json", "report.html", "labels.npy", "labels_*.npy")  # an --out written before the marker


def run(args) -> int:
    import json

    import numpy as np

    from cli.output import check_output_dir, check_outputs, write_dir, write_json
    from polylens.clustering.analysis import cluster_layer
    from polylens.clustering.report_html import render_html, summary_figures
    from sae.files import finite

    check_output_dir(args.out, args.force, command="cluster", legacy=OUTPUTS)
    check_outputs(args.force, inputs=[args.input, args.codes, args.weights], json=args.json)
    if args.json not in (None, "-") and os.path.abspath(args.json).startswith(os.path.abspath(args.out) + os.sep):
        raise ValueError(f"--json {args.json} lies inside --out {args.out}, which is replaced; write it elsewhere")
    for flag in ("min_cluster_size", "n_clusters", "max_dense", "sample", "n"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise ValueError(f"--{flag.replace('_', '-')}={v} must be a positive integer")
    points = load_points(args)
    on = args.on or ("both" if points.activations is not None else "codes")
    params = {
        "min_cluster_size": args.min_cluster_size,
        "min_samples": args.min_samples,
        "max_dense": args.max_dense,
        "knn": args.knn,
        "sample": args.sample,
        "random_state": args.seed,
        "n_clusters": args.n_clusters,
        "progress": not args.no_progress,
        "verbose": True,
    }
    result, labelings = cluster_layer(points, method=args.method, on=on, params=params)
    figures = summary_figures(result, points.codes.words)
    page = render_html(result, points, figures)
    primary = labelings.get("codes", labelings.get("activations"))

    def writer(folder: Path) -> None:
        np.save(folder / "labels.npy", primary)
        for space, lab in labelings.items():
            if lab is not primary:
                np.save(folder / f"labels_{space}.npy", lab)
        (folder / "clusters.json").write_text(json.dumps(finite(result.to_json()), indent=1) + "\n")
        (folder / "report.html").write_text(page, encoding="utf-8")

    write_dir(args.out, writer, command="cluster", legacy=OUTPUTS)
    summary = {k: v for k, v in result.to_json().items() if k != "clusters"}
    summary["out"] = args.out
    stream = sys.stderr if args.json == "-" else sys.stdout
    print(
        f"{result.model} {result.layer}: {result.n_points} points, "
        f"{result.n_unique_codes} distinct codes, {result.method}",
        file=stream,
    )
    for space, res in result.on.items():
        if res:
            extra = (
                ""
                if res["nmi"] is None
                else f"  purity {_num(res['purity'])}  NMI {_num(res['nmi'])}  ARI {_num(res['ari'])}"
            )
            print(
                f"  {space:<20} {res['n_clusters']:>5} clusters  "
                f"noise {res['noise_frac']:.3f}  [{res['route']}]{extra}",
                file=stream,
            )
    if result.agreement_ari is not None:
        print(f"  ARI codes vs activations: {result.agreement_ari:.3f}", file=stream)
    print(f"  -> {args.out}/labels.npy, clusters.json, report.html ({result.seconds:.1f} s)", file=stream)
    write_json(summary, args.json)
    return 0


def _num(value) -> str:
    """A score for the summary line; ``n/a`` where it is undefined (purity when every point is noise)."""
    return "n/a" if value is None else f"{value:.3f}"


def register(sub) -> None:
    p = sub.add_parser(
        "cluster",
        help="cluster spline codes (and activations beside them); labels, JSON and an HTML report",
        description=__doc__.splitlines()[0],
    )
    add_model_args(p)
    p.add_argument(
        "--layer",
        metavar="L",
        help="activation layer (digits: fc1; gpt2, minilm-l6: blocks.L.mlp.hook_pre, default the middle block; "
        "inceptionv1: mixed4a; efficientnet-lite0: _blocks.10._bn0)",
    )
    p.add_argument(
        "--input",
        metavar="PATH",
        help="gpt2, minilm-l6: a text file or folder of .txt; images: a folder (efficientnet-lite0: default its "
        "bundled images); FILE.py models: an .npy of inputs",
    )
    p.add_argument(
        "--codes",
        metavar="FILE",
        help="cluster codes from 'polylens codes' (.npz) or a 0/1 .npy [n_points, n_units] instead of running a model",
    )
    p.add_argument(
        "--on", choices=["codes", "activations", "both"], help="what to cluster (default both; codes with --codes)"
    )
    p.add_argument(
        "--method",
        choices=["hdbscan", "kmedoids", "agglomerative"],
        default="hdbscan",
        help="clusterer (default hdbscan)",
    )
    p.add_argument(
        "--min-cluster-size", type=int, default=10, metavar="N", help="HDBSCAN's smallest cluster (default 10)"
    )
    p.add_argument(
        "--min-samples",
        type=int,
        metavar="N",
        help="HDBSCAN's core neighbours, the point included (default: min-cluster-size)",
    )
    p.add_argument(
        "--n-clusters",
        type=int,
        default=10,
        metavar="K",
        help="k-medoids / agglomerative: number of clusters (default 10)",
    )
    p.add_argument(
        "--max-dense",
        type=int,
        default=20000,
        metavar="N",
        help="exact dense route up to N distinct points, a k-NN graph beyond (default 20000)",
    )
    p.add_argument(
        "--knn",
        choices=["auto", "exact", "hnsw"],
        default="auto",
        help="k-NN graph beyond --max-dense: exact, faiss HNSW (approximate, recall reported), auto",
    )
    p.add_argument(
        "--sample", type=int, metavar="N", help="fit on N sampled points, assign the rest by HDBSCAN's prediction rule"
    )
    p.add_argument("--position", metavar="H,W", help="image models: the spatial position (default the centre)")
    p.add_argument(
        "--n",
        type=int,
        metavar="N",
        help="efficientnet-lite0 without --input: how many bundled images (default 500)",
    )
    p.add_argument("--max-sequences", type=int, metavar="N", help="text models: use at most N sequences")
    p.add_argument(
        "--skip",
        type=int,
        default=100,
        metavar="N",
        help="text models: skip the first N positions of each sequence (default 100)",
    )
    p.add_argument(
        "--per-seq", type=int, default=6, metavar="N", help="text models: positions taken per sequence (default 6)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder: labels.npy, clusters.json, report.html")
    p.add_argument("--json", metavar="PATH", help="write the JSON summary to PATH ('-' for stdout)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(handler=run)
