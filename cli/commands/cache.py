"""``polylens cache``: run a model up to a layer and store its activations (and, on request, their
gradients) as an on-disk activation store for SAE training (``polylens sae train --data DIR``).

Python equivalent: ``cli.experiments.cache.cache_activations(adapter, layer, out, inputs, ...)``.
"""

from __future__ import annotations

import sys
from pathlib import Path


def run(args) -> int:
    import os

    from cli.experiments.cache import cache_activations, check_store_folder, input_identity
    from cli.modelargs import load_from_args, model_inputs
    from cli.output import check_outputs, out_folder
    from polylens.models.corpus import NAME as CORPUS

    files = [i for i in args.input if i != CORPUS or Path(i).exists()]
    check_outputs(args.force, inputs=[*files, args.weights], json=args.json)
    for name in ("tokens", "context", "n", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')}={value} must be a positive integer")
    out = out_folder(args.out)
    if args.json not in (None, "-") and os.path.realpath(args.json).startswith(str(out) + os.sep):
        raise ValueError(f"--json {args.json} lies inside the store --out {args.out}; write it elsewhere")
    check_store_folder(out, args.out, args.force)  # again, with the identity of the rows, before writing
    adapter = load_from_args(args)
    layer = adapter.check_layer(args.layer)
    pair_layer = None if args.pair_layer is None else adapter.check_layer(args.pair_layer)
    if adapter.tokenize is not None and not args.input:
        raise ValueError("a language model caches a text file: give --input FILE.txt")
    inputs, is_text, _ = model_inputs(adapter, args, context=args.context, tokens=args.tokens, n_default=360)
    meta = {
        "context": args.context if is_text else None,
        "inputs": input_identity(args.input),
        "model_spec": args.model or "digits",
        "weights_path": None if args.weights is None else os.path.realpath(args.weights),
        "random_weights": args.random_weights,
        "n": int(inputs.shape[0]),  # the inputs read (the same with --n given or left to its default)
        "device": args.device,
    }
    if args.activation:
        meta["activation"] = sorted(args.activation)
    source, sep, _ = (args.model or "").rpartition(":")
    if sep and source.endswith(".py") and Path(source).is_file():  # a FILE.py model: its code, too
        meta["model_file"] = input_identity([source])[0]
    manifest = cache_activations(
        adapter,
        layer,
        args.out,
        inputs,
        is_text=is_text,
        dtype=args.dtype,
        gradients=args.gradients,
        tokens=args.tokens,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        force=args.force,
        meta=meta,
        pair_layer=pair_layer,
    )
    stream = sys.stderr if args.json == "-" else sys.stdout
    pairs = manifest["pairs"]
    paired = "" if pairs is None else f", paired with {pairs['layer']} (width {pairs['width']})"
    print(
        f"{manifest['model']} {manifest['layer']}: {manifest['rows']:,} rows "
        f"of width {manifest['width']} ({manifest['dtype']}){paired} "
        f"in {len(manifest['shards'])} shards -> {args.out} ({manifest['seconds_last_run']:.0f} s)",
        file=stream,
    )
    from cli.output import write_json

    write_json(
        {k: v for k, v in manifest.items() if k != "shards"} | {"n_shards": len(manifest["shards"]), "out": args.out},
        args.json,
    )
    return 0


def register(sub) -> None:
    from cli.experiments.cache import GRADIENT_TARGETS
    from cli.modelargs import add_model_args

    p = sub.add_parser(
        "cache",
        help="store a layer's activations (and gradients) on disk for SAE training",
        description=__doc__.splitlines()[0],
    )
    add_model_args(p)
    p.add_argument(
        "--layer",
        required=True,
        metavar="NAME",
        help="the layer whose output is stored (e.g. blocks.6.mlp.hook_pre, conv2)",
    )
    p.add_argument(
        "--pair-layer",
        metavar="NAME",
        help="also store this site's rows beside each row (one forward pass): what a transcoder trained on the store "
        "reconstructs (e.g. --layer blocks.3.ln2.hook_normalized --pair-layer blocks.3.hook_mlp_out)",
    )
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="PATH",
        help="gpt2, minilm-l6: a text file, or corpus:english (the English text that ships with Python: its "
        "documentation, docstrings, licences); other models: input files (.npy, images); "
        "default: the model's bundled inputs",
    )
    p.add_argument(
        "--n",
        type=int,
        help="the first N bundled inputs without --input (default 360, the digits test split); "
        "with a text --input, at most N contexts (default: as many as --tokens needs)",
    )
    p.add_argument("--tokens", type=int, help="store at most this many rows (GPT-2: tokens)")
    p.add_argument(
        "--context",
        type=int,
        default=128,
        help="text models: tokens per context, special tokens included (default 128)",
    )
    p.add_argument(
        "--dtype", choices=["float16", "bfloat16", "float32"], default="float32", help="stored dtype (default float32)"
    )
    p.add_argument(
        "--gradients",
        choices=sorted(GRADIENT_TARGETS),
        metavar="TARGET",
        help="also store the gradient of TARGET w.r.t. each row: "
        "loss (GPT-2's next-token loss) or logit (the predicted class's)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="inputs per forward pass (default 16)")
    p.add_argument("--out", required=True, metavar="DIR", help="the store folder (re-run to resume an interrupted one)")
    p.add_argument("--json", metavar="PATH", help="write the manifest summary as JSON to PATH ('-' for stdout)")
    p.add_argument(
        "--force", action="store_true", help="replace an existing store (never a folder that holds anything else)"
    )
    p.set_defaults(handler=run)
