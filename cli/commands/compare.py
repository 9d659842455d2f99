"""``polylens compare``: which directions does each method recover: on a toy, against its ground truth
(``--setup``), or in a model's layer (``--model --layer``)?

The Python equivalents are ``cli.experiments.compare_toys.compare`` (toys) and
``cli.experiments.compare_layer.compare_layer`` (model layers).
"""

from __future__ import annotations

import sys

# Setup-specific options: CLI flag -> (config field, setups it applies to).
OPTIONS = {
    "hidden": ("n_hidden", ("x2", "superposition")),
    "inputs": ("n_inputs", ("x2",)),
    "no_bias": ("bias", ("x2",)),
    "features": ("n_features", ("superposition",)),
    "p_active": ("p_active", ("superposition",)),
    "importance_decay": ("importance_decay", ("superposition",)),
    "steps": ("steps", ("x2", "superposition")),
}


def format_table(result) -> str:
    rows = list(result.methods.items())
    keys = [k for k in rows[0][1] if k not in ("n_directions", "best_abs_cos")] + ["n_directions"]
    head = f"{'method':<16}" + "".join(f"{k:>20}" for k in keys)
    lines = [
        f"setup={result.setup} seed={result.seed}: {result.ground_truth['n_directions']} ground-truth directions "
        f"in {result.ground_truth['dim']} dims",
        head,
        "-" * len(head),
    ]
    for name, scores in rows:
        lines.append(
            f"{name:<16}"
            + "".join(f"{scores[k]:>20.4f}" if isinstance(scores[k], float) else f"{scores[k]:>20}" for k in keys)
        )
    return "\n".join(lines)


def _options_from_args(args) -> dict:
    options = {}
    for flag, (fld, setups) in OPTIONS.items():
        value = getattr(args, flag)
        if value is None or value is False:
            continue
        if args.setup not in setups:
            raise ValueError(f"--{flag.replace('_', '-')} applies to --setup {' or '.join(setups)}, not {args.setup}")
        if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
            raise ValueError(f"--{flag.replace('_', '-')}={value} must be a positive integer")
        options[fld] = (not value) if flag == "no_bias" else value
    return options


def run(args) -> int:
    from cli.experiments.compare_toys import compare
    from cli.experiments.sae_methods import SAEOptions
    from cli.output import check_outputs, write_json, write_with
    from cli.sample_scale import scaled
    from polylens.directions.toys import SETUPS

    if args.setup is None and args.model is None:
        raise ValueError(
            "one of --setup or --model is required: "
            "--setup x2|superposition (a toy with ground truth) or --model SPEC --layer NAME"
        )
    if args.setup is not None and args.model is not None:
        raise ValueError("give --setup (a toy) or --model (a model's layer), not both")
    if args.model is not None:
        return run_model_layer(args)
    for flag in ("layer", "target", "k", "n", "sae_k", "context"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag.replace('_', '-')} applies to --model, not to --setup")
    if args.input:
        raise ValueError("--input applies to --model, not to --setup")
    from cli.flags import given

    typed = given(args)
    for dest in ("weights", "random_weights", "device", "activation", "ablation", "controls"):
        if dest in typed:
            raise ValueError(f"--{dest.replace('_', '-')} applies to --model, not to --setup (a toy trained here)")
    if args.setup not in ("x2", "superposition"):
        raise ValueError(f"unknown setup {args.setup!r}; choose x2 or superposition")
    options = _options_from_args(args)
    check_outputs(args.force, json=args.json, plot=args.plot)
    options["steps"] = scaled(options.get("steps") or SETUPS[args.setup][0].steps)
    sae = SAEOptions(
        dict_size=args.sae_dict,
        l1=args.sae_l1,
        enabled=not args.no_sae,
        steps=scaled(SAEOptions.steps if args.sae_steps is None else args.sae_steps),
    )
    for flag, value in (("--sae-dict", sae.dict_size), ("--sae-steps", sae.steps)):
        if value is not None and value <= 0:
            raise ValueError(f"{flag}={value} must be a positive integer")
    if not sae.l1 >= 0:
        raise ValueError(f"--sae-l1={sae.l1} must be a number >= 0")
    result, toy, directions = compare(args.setup, seed=args.seed, sae=sae, **options)
    # Keep stdout parseable when the JSON goes there.
    print(format_table(result), file=sys.stderr if args.json == "-" else sys.stdout)
    if args.plot:
        from polylens.plots import plot_direction_recovery

        title = f"polylens compare --setup {args.setup} --seed {args.seed}"
        write_with(args.plot, lambda tmp: plot_direction_recovery(toy.truth, directions, tmp, title))
    write_json(result.to_json(), args.json)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="which directions do PCAs, LIB and SAEs recover: "
        "on a toy (--setup) or in a model's layer (--model --layer)",
        description=" ".join(__doc__.split("\n\n")[0].split()),
    )
    p.add_argument("--setup", help="toy: x2 (read-out of an x² fit) or superposition (TMS autoencoder)")
    p.add_argument("--seed", type=int, default=0, help="seed for training and data (default 0)")
    p.add_argument("--json", metavar="PATH", help="write the result as JSON to PATH ('-' for stdout)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of ground-truth vs recovered directions")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    g = p.add_argument_group("toy options (defaults: see polylens.directions.toys)")
    g.add_argument("--hidden", type=int, help="hidden width (x2: ReLU units, default 64; superposition: d, default 10)")
    g.add_argument("--inputs", type=int, help="x2: input dimension k (y_i = x_i^2), default 1")
    g.add_argument("--no-bias", action="store_true", help="x2: no bias in the hidden layer and read-out")
    g.add_argument("--features", type=int, help="superposition: number of sparse features n, default 40")
    g.add_argument("--p-active", type=float, help="superposition: probability a feature is active, default 0.05")
    g.add_argument(
        "--importance-decay", type=float, help="superposition: importance of feature i is decay**i, default 1"
    )
    g.add_argument("--steps", type=int, help="training steps (default 3000)")
    from cli.experiments.sae_methods import LayerSAEOptions, SAEOptions
    from cli.modelargs import add_model_args

    add_model_args(p)
    m = p.add_argument_group("a model's layer (--model; no ground truth: what the directions do)")
    m.add_argument(
        "--layer", metavar="NAME", help="the layer whose directions are compared (e.g. conv2, blocks.6.mlp.hook_pre)"
    )
    m.add_argument(
        "--target",
        help="what the gradients differentiate: "
        "logits (default), loss (needs labels or text), predicted, or a class index; "
        "minilm-l6: embedding (its default)",
    )
    m.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="PATH",
        help="GPT-2, minilm-l6: a text file; other models: input files; "
        "default: the model's bundled inputs (digits: its 360 test images)",
    )
    m.add_argument("--n", type=int, help="how many inputs (bundled ones, or text contexts from --input)")
    m.add_argument(
        "--context", type=int, help="text models with --input: tokens per context, special tokens included (default 64)"
    )
    m.add_argument("--k", type=int, help="top-k directions per method (default 10; at most the layer width)")
    m.add_argument(
        "--ablation",
        default="mean",
        help="how directions are ablated: mean (default: the activations' component along them is replaced by "
        "the mean activation's) or project (set to 0)",
    )
    s = p.add_argument_group("SAE methods (toys: ReLU+L1 on the hidden activations; --model: TopK SAEs)")
    s.add_argument("--no-sae", action="store_true", help="leave the SAEs out")
    s.add_argument(
        "--controls",
        action="store_true",
        help="--model: also train the activations' SAE with its random decoder frozen (only the encoder trained) "
        "and report it under controls (the other control is the model's --random-weights twin)",
    )
    s.add_argument(
        "--sae-dict",
        type=int,
        help="dictionary size (toys: 2 x max(ground-truth count, width); --model: 4 x the layer width)",
    )
    s.add_argument(
        "--sae-l1", type=float, default=SAEOptions.l1, help=f"toys: L1 coefficient (default {SAEOptions.l1})"
    )
    s.add_argument(
        "--sae-k",
        type=int,
        help="--model: active latents per row of the TopK SAEs (default max(2, min(32, width // 8)))",
    )
    s.add_argument(
        "--sae-steps",
        type=int,
        help=f"training steps of batch 256 (toys: default {SAEOptions.steps}; --model: {LayerSAEOptions.steps})",
    )
    p.set_defaults(handler=run)


def format_layer_table(result: dict) -> str:
    k = result["k"]
    key = "kl" if "kl" in next(iter(result["methods"].values()))["ablation"] else "cos_distance"
    measure = "KL" if key == "kl" else "1-cos"
    head = f"{'method':<16}{'n':>4}{'act. variance':>15}{'grad. energy':>14}{f'{measure}@{k}':>12}" + (
        f"{f'acc. drop@{k}':>14}" if any(m["ablation"]["accuracy_drop"] for m in result["methods"].values()) else ""
    )
    lines = [
        f"{result['model']} {result['layer']}: {result['n_rows']:,} rows of width {result['width']} "
        f"from {result['n_inputs']} inputs; "
        f"target {result['target']} ({result['gradient_rows']}); top-{k} directions, {result['ablation']}-ablated",
        head,
        "-" * len(head),
    ]
    for name, m in (*result["methods"].items(), *result.get("controls", {}).items()):
        ab = m["ablation"]
        drop = ab["accuracy_drop"]
        name = "sae frozen dec." if name == "sae_frozen_decoder" else name  # the control (CONTROLS)
        lines.append(
            f"{name:<16}{m['n_directions']:>4}{m['activation_variance']:>15.4f}{m['gradient_energy']:>14.4f}"
            f"{ab[key][-1]:>12.4g}" + (f"{drop[-1]:>14.4f}" if drop else "")
        )
    return "\n".join(lines)


def run_model_layer(args) -> int:
    from cli.experiments.compare_layer import compare_layer
    from cli.experiments.sae_methods import LayerSAEOptions
    from cli.modelargs import load_from_args, model_inputs
    from cli.output import check_outputs, write_json, write_with
    from cli.sample_scale import scaled
    from polylens.directions.ablation import ABLATIONS

    for flag in ("hidden", "inputs", "features", "p_active", "importance_decay", "steps"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag.replace('_', '-')} is a toy option (--setup); it does not apply to --model")
    if args.no_bias:
        raise ValueError("--no-bias is a toy option (--setup); it does not apply to --model")
    from cli.flags import given

    if "sae_l1" in given(args):
        raise ValueError(
            "--sae-l1 is the L1 coefficient of the toys' ReLU SAEs (--setup); --model trains TopK SAEs: "
            "drop it, or set their sparsity with --sae-k"
        )
    if not args.layer:
        raise ValueError("--model needs --layer NAME: the layer whose directions are compared")
    if args.ablation not in ABLATIONS:
        raise ValueError(f"--ablation {args.ablation!r}: choose {' or '.join(ABLATIONS)}")
    for flag, value in (
        ("--k", args.k),
        ("--n", args.n),
        ("--sae-dict", args.sae_dict),
        ("--sae-k", args.sae_k),
        ("--sae-steps", args.sae_steps),
        ("--context", args.context),
    ):
        if value is not None and value <= 0:
            raise ValueError(f"{flag}={value} must be a positive integer")
    check_outputs(args.force, inputs=[*args.input, args.weights], json=args.json, plot=args.plot)
    adapter = load_from_args(args)
    layer = adapter.check_layer(args.layer)
    inputs, is_text, labels = model_inputs(adapter, args, context=args.context or 64)
    sae = LayerSAEOptions(
        dict_size=args.sae_dict,
        k=args.sae_k,
        enabled=not args.no_sae,
        steps=scaled(LayerSAEOptions.steps if args.sae_steps is None else args.sae_steps),
        controls=args.controls,
    )
    if args.controls and args.no_sae:
        raise ValueError("--controls trains the SAE's frozen-decoder control: drop --no-sae")
    if args.k is None:
        from polylens.capture import capture
        from polylens.rows import rows_of

        args.k = min(10, rows_of(capture(adapter.module, inputs[:1], [layer]).activations[layer], is_text).shape[1])
    comparison = compare_layer(
        adapter,
        layer,
        inputs,
        target=args.target or "logits",
        k=args.k,
        is_text=is_text,
        labels=labels,
        seed=args.seed,
        ablation=args.ablation,
        sae=sae,
        progress=not args.no_progress,
    )
    result = comparison.to_json()
    print(format_layer_table(result), file=sys.stderr if args.json == "-" else sys.stdout)
    if args.plot:
        from polylens.plots import plot_layer_comparison

        write_with(
            args.plot,
            lambda tmp: plot_layer_comparison(result, tmp, f"polylens compare --model {adapter.name} --layer {layer}"),
        )
    write_json(result, args.json)
    return 0
