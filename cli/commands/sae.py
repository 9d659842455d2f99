"""``polylens sae train|eval|sweep``: sparse autoencoders on synthetic ground truth or your activations.

Python equivalents: ``sae.runs.train_run``, ``sae.runs.eval_run``, ``sae.sweep.sweep_run``.
"""

from __future__ import annotations

import sys

DATA_HELP = (
    "sharkey (Sharkey et al. ground truth, default), tms (toy-models features), or a .npy/.safetensors [N, d] array"
)


def _data_options(args) -> dict:
    """Synthetic-data flags -> config fields, refusing flags that do not apply to the chosen data."""
    flags = {
        "features": ("n_features", ("sharkey", "tms")),
        "dim": ("d", ("sharkey", "tms")),
        "active": ("m", ("sharkey",)),
        "uncorrelated": ("correlated", ("sharkey",)),
        "sparsity": ("sparsity", ("tms",)),
        "scale_sigma": ("scale_sigma", ("sharkey",)),
    }
    options = {}
    for flag, (field, kinds) in flags.items():
        value = getattr(args, flag, None)
        if value is None or value is False:
            continue
        if args.data not in kinds:
            raise ValueError(f"--{flag} applies to --data {' or '.join(kinds)}, not {args.data}")
        options[field] = (not value) if flag == "uncorrelated" else value
    return options


def _positive(args, *names) -> None:
    for name in names:
        v = getattr(args, name, None)
        if v is not None and v <= 0:
            raise ValueError(f"--{name.replace('_', '-')}={v} must be positive")


def _sae_fields(args) -> dict:
    fields = {
        "arch": args.arch,
        "l1": getattr(args, "l1", 0.0),  # sweep L1s come from --l1s
        "k": args.k,
        "init": args.init,
        "orth": args.orth,
        "orth_full": args.orth_full,
        "decoder_norm": args.decoder_norm,
        "tied": args.tied,
        "freeze_decoder": getattr(args, "freeze_decoder", False),
        "init_blend": args.init_blend,
        "init_matrix": args.init_matrix or "",
        "bandwidth": args.bandwidth,
        "threshold_init": args.threshold_init,
        "prefixes": _ints(args.prefixes, "--prefixes") if args.prefixes else [],
        "skip": args.skip,
    }
    if args.skip and not args.transcoder:
        raise ValueError("--skip is a transcoder's linear skip: give --transcoder too")
    if args.transcoder:
        fields["transcoder"] = True  # d_in and d_out come from the store's two sites
    if getattr(args, "l0", None) is not None:  # sweep L0s (jumprelu) come from --l1s
        fields["l0"] = args.l0
    if args.init_matrix and args.init != "svd":
        raise ValueError("--init-matrix is read by --init svd only")
    if getattr(args, "dict_size", None) is not None:  # sweep sizes come from --ratios
        fields["dict_size"] = args.dict_size
    for name in ("l1", "orth", *(("l0",) if "l0" in fields else ())):
        if fields[name] is not None and fields[name] < 0:
            raise ValueError(f"--{name}={fields[name]} must be >= 0")
    return fields


def _train_config(args):
    from cli.sample_scale import scaled
    from sae.config import TrainConfig

    return TrainConfig(
        n_samples=args.samples or scaled(TrainConfig.n_samples, args.batch_size),
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup,
        seed=args.seed,
        lr_decay=args.lr_decay,
        resample_every=args.resample_every,
        resample_duplicates=args.resample_duplicates,
        resample_dead_towards=args.resample_dead_towards,
        checkpoint_every=args.checkpoint_every,
        bf16=args.bf16,
        device=args.device,
        progress=not args.no_progress and sys.stderr.isatty(),
        dead_window=args.dead_window,
        loss=args.loss,
        ds_coef=args.ds_coef,
    )


def _counts(args) -> int:
    """Scale ``--samples`` in place by ``$POLYLENS_SAMPLE_SCALE``; the evaluation samples, scaled the same."""
    import inspect

    from cli.sample_scale import scaled
    from sae.runs import train_run

    if args.samples is not None:
        args.samples = scaled(args.samples, args.batch_size)
    return scaled(args.eval_samples or inspect.signature(train_run).parameters["eval_samples"].default)


def _summary(record: dict) -> str:
    ev = record["evaluation"]
    keys = [
        "mmcs_signed",
        "mmcs_signed_learned",
        "hungarian_mean_cos",
        "frac_recovered_0_9",
        "mean_l2_ratio",
        "l0",
        "explained_variance",
        "dead_fraction",
        "shrinkage",
    ]
    lines = [f"{k:<22}{ev[k]:.4f}" for k in keys if ev.get(k) == ev.get(k)]  # skip NaN (no ground truth)
    bench = record.get("synthsaebench")
    if bench:
        lines.append(
            f"SynthSAEBench: MCC {bench['mcc']:.4f}, uniqueness {bench['uniqueness']:.4f}, F1 {bench['f1_score']:.4f} "
            f"(precision {bench['precision']:.4f}, recall {bench['recall']:.4f}), dead latents {bench['dead_latents']}"
        )
    return "\n".join(lines)


def _emit(record: dict, json_path: str | None, summary: str) -> None:
    from cli.output import write_json

    print(summary, file=sys.stderr if json_path == "-" else sys.stdout)
    write_json(record, json_path)


SAE_FLAGS = tuple(
    "arch k prefixes bandwidth threshold_init init init_matrix init_blend orth orth_full decoder_norm tied transcoder "
    "skip freeze_decoder dict_size l1 l0".split()
)
"""The flags that shape a new SAE (``--finetune`` takes them all from the run it starts from)."""


def run_train(args) -> int:
    from cli.experiments.e2e import open_objective
    from cli.experiments.tms import open_data
    from cli.flags import given
    from cli.output import check_outputs
    from sae.runs import resume_run, train_run

    if args.finetune is not None:
        shaped = sorted(set(given(args)) & set(SAE_FLAGS))
        if shaped or args.resume:
            what = "--resume" if args.resume else ", ".join("--" + f.replace("_", "-") for f in shaped)
            raise ValueError(f"--finetune starts from its run's SAE as it is: drop {what}")

    _positive(args, "samples", "batch_size", "lr", "dict_size", "k", "eval_samples")
    check_outputs(args.force, inputs=[args.data], json=args.json)
    options = _data_options(args)
    eval_samples = _counts(args)
    if args.resume:
        from cli.resume import check_resume

        check_resume(args, options)
        data = args.data if args.data_given else None
        progress = not args.no_progress and sys.stderr.isatty()
        record = resume_run(
            args.out,
            args.samples,
            data,
            options if data else None,
            eval_samples,
            progress,
            open_data=open_data,
            open_objective=open_objective,
        )
    else:
        record = train_run(
            args.out,
            args.data,
            _sae_fields(args),
            _train_config(args),
            options,
            eval_samples,
            args.force,
            open_data=open_data,
            open_objective=open_objective,
            start=args.finetune,
        )
    if record.get("rank"):  # a data-parallel run: rank 0 reports
        return 0
    note = f" (SAELens export: {record['export']})" if "export" in record else ""
    loss = record["train"].get("loss", "mse")
    how = "" if loss == "mse" else f" end to end ({loss})"
    _emit(record, args.json, f"trained {record['steps']} steps{how} -> {args.out}{note}\n" + _summary(record))
    return 0


def run_eval(args) -> int:
    from cli.experiments.tms import open_data
    from cli.output import check_outputs
    from sae.runs import eval_run

    _positive(args, "eval_samples")
    if args.model is not None:
        return _run_spliced_eval(args)
    given = (("--layer", args.layer), ("--pair-layer", args.pair_layer), ("--input", args.input), ("--n", args.n))
    for flag, value in (*given, ("--context", args.context)):
        if value:
            raise ValueError(f"{flag} applies to an SAE spliced into a model: give --model too")
    check_outputs(args.force, inputs=[args.data], json=args.json, plot=args.plot)
    data = args.data if args.data_given else None
    record = eval_run(args.dir, data, _data_options(args) if data else None, args.eval_samples, open_data=open_data)
    if args.plot:
        best = record.get("best_signed_cos") or []
        if not best:
            raise ValueError(
                "--plot draws the per-feature best cosines, which need ground truth (synthetic data: sharkey or tms)"
            )
        from cli.output import write_with
        from sae.metrics import plot_best_signed_cos

        write_with(
            args.plot,
            lambda tmp: plot_best_signed_cos(
                best, tmp, f"{args.dir}: mmcs_signed {record['evaluation']['mmcs_signed']:.3f}"
            ),
        )
    _emit(record, args.json, _summary(record))
    return 0


def _run_spliced_eval(args) -> int:
    from cli.experiments.spliced_eval import spliced_evaluation
    from cli.modelargs import load_from_args, model_inputs
    from cli.output import check_outputs, write_json
    from sae.runs import load_run_sae

    synthetic = ("features", "dim", "active", "sparsity", "scale_sigma", "eval_samples")
    if args.data_given or args.uncorrelated or any(getattr(args, f) is not None for f in synthetic):
        raise ValueError("--model evaluates the SAE on the model's own inputs (--input, --n): drop the data options")
    if args.plot:
        raise ValueError("--plot draws ground-truth cosines (synthetic data); it does not apply with --model")
    if not args.layer:
        raise ValueError("--model needs --layer NAME: the layer the SAE was trained on")
    _positive(args, "n", "context")
    check_outputs(args.force, inputs=[*args.input, args.weights], json=args.json)
    sae, run = load_run_sae(args.dir)
    pair_layer = args.pair_layer
    if sae.config.transcoder and pair_layer is None:  # the site its store paired with its input
        pair_layer = ((run.get("data") or {}).get("identity") or {}).get("pairs", {}).get("layer")
    adapter = load_from_args(args)
    layer = adapter.check_layer(args.layer)
    pair_layer = None if pair_layer is None else adapter.check_layer(pair_layer)
    inputs, is_text, labels = model_inputs(adapter, args, context=args.context or 64)
    result = spliced_evaluation(
        adapter,
        layer,
        inputs,
        sae,
        is_text=is_text,
        labels=labels,
        progress=not args.no_progress,
        pair_layer=pair_layer,
    ).to_json()
    print(_spliced_summary(result), file=sys.stderr if args.json == "-" else sys.stdout)
    write_json(result, args.json)
    return 0


def _spliced_summary(r: dict) -> str:
    what = f"{r['arch']} SAE ({r['d_in']} -> {r['dict_size']}) spliced into {r['model']} {r['layer']}"
    if r["pair_layer"]:
        what = (
            f"{r['arch']} transcoder ({r['d_in']} -> {r['dict_size']} -> {r['d_out']}) spliced into {r['model']}: "
            f"{r['layer']} -> {r['pair_layer']}"
        )
    lines = [
        f"{what}: {r['n_inputs']} inputs, {r['n_rows']} rows",
        f"  rows: explained variance {r['explained_variance']:.4f}, L0 {r['l0']:.1f}, dead {r['dead_fraction']:.3f}, "
        f"dense {r['dense_fraction']:.3f}, shrinkage {r['shrinkage']:.3f}",
    ]
    if r["ce_loss_recovered"] is not None or r["ce_loss_clean"] is not None:
        rec = "n/a" if r["ce_loss_recovered"] is None else f"{r['ce_loss_recovered']:.4f}"
        lines.append(
            f"  next-token CE: clean {r['ce_loss_clean']:.4f}, spliced {r['ce_loss_spliced']:.4f}, "
            f"zero-ablated {r['ce_loss_zero_ablation']:.4f}; CE loss recovered {rec}"
        )
    if r["kl_div"] is not None:
        score = "n/a" if r["kl_div_score"] is None else f"{r['kl_div_score']:.4f}"
        lines.append(
            f"  KL(clean || spliced) {r['kl_div']:.5f} (zero-ablated {r['kl_div_zero_ablation']:.5f}; score {score}), "
            f"top-1 kept {r['top1_kept']:.3f}"
        )
    if r["accuracy_clean"] is not None:
        lines.append(f"  accuracy {r['accuracy_clean']:.4f} -> {r['accuracy_spliced']:.4f}")
    if r["cosine_kept"] is not None:
        lines.append(
            f"  embedding cosine kept {r['cosine_kept']:.4f} (zero-ablated {r['cosine_kept_zero_ablation']:.4f}, "
            f"mean-ablated {r['cosine_kept_mean_ablation']:.4f})"
        )
    return "\n".join(lines)


def run_sweep(args) -> int:
    from cli.experiments.tms import open_data
    from cli.output import check_outputs
    from sae.sweep import sweep_run

    _positive(args, "samples", "batch_size", "lr", "k", "eval_samples")
    check_outputs(args.force, inputs=[args.data], json=args.json)
    eval_samples = _counts(args)
    if args.loss != "mse":
        raise ValueError(f"--loss {args.loss} trains one SAE against its model: use polylens sae train")
    l1s = _floats(args.l1s, "--l1s")
    ratios = _floats(args.ratios, "--ratios")
    fields = _sae_fields(args)
    fields.pop("l1")
    record = sweep_run(
        args.out,
        args.data,
        l1s,
        ratios,
        fields,
        _train_config(args),
        _data_options(args),
        eval_samples,
        force=args.force,
        resume=args.resume,
        open_data=open_data,
    )
    if record.get("rank"):
        return 0
    _emit(record, args.json, f"swept {len(l1s)} L1 x {len(ratios)} ratios -> {args.out}\n" + record["table"])
    return 0


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, e.g. 128,256,512; got {text!r}") from None


def _floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated numbers, e.g. 0.01,0.1,1; got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise ValueError(f"{flag} needs positive numbers; got {text!r}")
    return values


def _add_data(p, default="sharkey") -> None:
    """--data plus the synthetic-data flags; ``args.data_given`` says whether --data was on the
    command line (eval and --resume then fall back to the data the run recorded)."""
    import argparse

    class Given(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            namespace.data, namespace.data_given = values, True

    p.add_argument("--data", default=default, action=Given, help=DATA_HELP)
    p.set_defaults(data_given=False)
    g = p.add_argument_group("synthetic data")
    g.add_argument("--features", type=int, help="ground-truth features n (sharkey 512, tms 40)")
    g.add_argument("--dim", type=int, help="activation dimension d (sharkey 256, tms 10)")
    g.add_argument("--active", type=float, help="sharkey: expected active features per sample (default 5)")
    g.add_argument("--uncorrelated", action="store_true", help="sharkey: independent firing (no Gaussian copula)")
    g.add_argument("--sparsity", type=float, help="tms: probability a feature is 0 (default 0.95)")
    g.add_argument(
        "--scale-sigma",
        type=float,
        metavar="S",
        help="sharkey: per-feature coefficient scales, log-normal with sigma S (default 0: equal)",
    )
    p.add_argument(
        "--eval-samples", type=int, help="held-out samples for the evaluation (default 20000; eval: the run's)"
    )
    p.add_argument("--json", metavar="PATH", help="write the result as JSON to PATH ('-' for stdout)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")


def _option(group, flag: str, fields: dict, help: str, field: str | None = None, **kw) -> None:
    """``flag`` with its default read from a config dataclass's ``fields`` (``field``, else the
    flag's own name) and ``{default}`` in ``help`` filled with it, so the help cannot drift from the
    config."""
    default = fields[field or flag[2:].replace("-", "_")].default
    group.add_argument(flag, default=default, help=help.format(default=default), **kw)


def _add_model_and_training(p) -> None:
    from sae.config import ARCHS, AUTO, DECODER_NORMS, INITS, LOSSES, RESAMPLE_TARGETS, SAEConfig, TrainConfig

    d = SAEConfig.__dataclass_fields__
    t = TrainConfig.__dataclass_fields__
    g = p.add_argument_group("SAE")
    _option(
        g,
        "--arch",
        d,
        "relu (+L1), topk, batchtopk, jumprelu (learned threshold per latent, L0 penalty --l0), gated "
        "(gate and magnitude paths, L1 --l1 on the gate) or matryoshka (BatchTopK whose --prefixes each "
        "reconstruct); all train through the fused kernel, but --tied, --orth and --bf16 runs, which take "
        "autograd (default {default})",
        choices=ARCHS,
    )
    _option(g, "--k", d, "active latents for topk/batchtopk/matryoshka (default {default})", type=int)
    g.add_argument(
        "--prefixes",
        metavar="N1,N2,...",
        help="matryoshka: increasing prefix sizes of the dictionary, each reconstructing on its own (the "
        "dictionary size is added last; default: the doubling ladder ..., n/4, n/2, n down to 16 latents)",
    )
    _option(
        g,
        "--bandwidth",
        d,
        f"jumprelu: width of the threshold's straight-through kernel (default {AUTO['bandwidth']:g} x sigma, the "
        "data's RMS per dimension)",
        type=float,
    )
    _option(
        g,
        "--threshold-init",
        d,
        f"jumprelu: initial threshold of every latent (default {AUTO['threshold_init']:g} x sigma)",
        type=float,
    )
    _option(g, "--init", d, "initialisation scheme (default {default}; svd: the layer's weight matrix)", choices=INITS)
    g.add_argument(
        "--init-matrix",
        metavar="FILE.safetensors:KEY",
        help="svd init: the weight matrix of the layer (default: the activation store's)",
    )
    _option(g, "--init-blend", d, "data init: weight of the data sample (default {default})", type=float)
    _option(g, "--orth", d, "decoder orthogonality penalty weight (default {default}: off)", type=float)
    g.add_argument(
        "--orth-full", action="store_true", help="O(n^2) orthogonality penalty over all latents (small dictionaries)"
    )
    _option(g, "--decoder-norm", d, "unit-norm decoder rows, or L1 weighted by row norm", choices=DECODER_NORMS)
    g.add_argument("--tied", action="store_true", help="tie the decoder to the encoder")
    g.add_argument(
        "--transcoder",
        action="store_true",
        help="train a transcoder on the activation store's paired rows (polylens cache --pair-layer): it reads the "
        "store's layer and reconstructs the paired layer",
    )
    g.add_argument(
        "--skip", action="store_true", help="transcoder: add a trained linear skip W_skip (SAELens's SkipTranscoder)"
    )
    g.add_argument(
        "--freeze-decoder",
        action="store_true",
        help="control: keep the random initial decoder (and b_dec) and train the encoder only",
    )
    h = p.add_argument_group("training")
    h.add_argument("--samples", type=int, help=f"training samples (default {t['n_samples'].default})")
    _option(h, "--batch-size", t, "default {default}", type=int)
    _option(h, "--lr", t, "Adam learning rate (default {default})", type=float)
    _option(h, "--warmup", t, "linear warm-up steps (default {default})", field="warmup_steps", type=int)
    _option(h, "--seed", t, "seed of the init, the batches and the synthetic data (default {default})", type=int)
    _option(
        h,
        "--lr-decay",
        t,
        "the lr falls linearly to 0 over the last share S of the steps; resampling stops there (default {default})",
        type=float,
        metavar="S",
    )
    _option(
        h,
        "--resample-every",
        t,
        "every N steps re-initialise dead latents (relu) and duplicates (--resample-duplicates); 0: never",
        type=int,
    )
    _option(
        h,
        "--resample-duplicates",
        t,
        "with --resample-every: move one latent of each pair whose decoder rows have |cos| > COS "
        "(default {default}: off)",
        type=float,
        metavar="COS",
    )
    _option(
        h,
        "--resample-dead-towards",
        t,
        "a dead latent's new direction: the input (Anthropic, default) or the residual x - x_hat",
        choices=RESAMPLE_TARGETS,
    )
    h.add_argument(
        "--dead-window",
        type=int,
        default=None,
        help="samples without firing that make a latent dead (default 1000000 for relu and gated, 100000 for topk, "
        "batchtopk and matryoshka, 20000 for jumprelu)",
    )
    _option(
        h,
        "--loss",
        t,
        "mse: the reconstruction's error; kl: end to end, the model's output with the SAE spliced in against "
        "without (an activation store's model, run every step); e2e+ds: kl plus the later layers' error "
        "(default {default})",
        choices=LOSSES,
    )
    _option(h, "--ds-coef", t, "e2e+ds: weight of the later layers' error (default {default})", type=float)
    _option(h, "--checkpoint-every", t, "also checkpoint every N steps (default: at the end)", type=int)
    h.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    _option(h, "--device", t, "torch device (default {default})")
    h.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(sub) -> None:
    from sae.config import AUTO, SAEConfig

    p = sub.add_parser(
        "sae",
        help="train and evaluate sparse autoencoders (ground-truth synthetic data or your activations)",
        description=__doc__.splitlines()[0],
    )
    cmds = p.add_subparsers(dest="sae_command", metavar="{train,eval,sweep}", parser_class=type(p))
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])

    t = cmds.add_parser("train", help="train one SAE into a folder (checkpoint + SAELens export + evaluation)")
    _add_data(t)
    t.add_argument("--out", required=True, metavar="DIR", help="run folder (checkpoint, saelens/, run.json)")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (same seed, same batches; --samples may raise the total)",
    )
    t.add_argument(
        "--dict-size", type=int, help="latents (default 2 x the true features for sharkey/tms, 2 x d for a file)"
    )
    t.add_argument(
        "--finetune",
        metavar="RUN",
        help="start from the SAE of this run folder (or SAELens folder), its configuration as it is: e.g. an "
        "mse-trained run fine-tuned --loss kl for --samples more",
    )
    l1 = SAEConfig.__dataclass_fields__["l1"].default
    t.add_argument(
        "--l1",
        type=float,
        default=l1,
        help="L1 coefficient (relu, gated; soft threshold ~l1/2 with unit decoder rows); default "
        f"{AUTO['l1']:g} x sigma, sigma the data's RMS per dimension (0.1 on the default sharkey data)",
    )
    t.add_argument(
        "--l0",
        type=float,
        default=None,
        help="L0 coefficient (jumprelu: a latent must remove more than l0 of squared error); default "
        f"{AUTO['l0']:g} x sigma^2, sigma the data's RMS per dimension",
    )
    _add_model_and_training(t)
    t.set_defaults(handler=run_train)

    e = cmds.add_parser("eval", help="evaluate a trained SAE folder (or a SAELens folder)")
    e.add_argument("dir", metavar="DIR", help="run folder from 'sae train', or a SAELens folder with cfg.json")
    _add_data(e, default=None)
    e.add_argument(
        "--plot", metavar="PATH", help="write a PNG histogram of the per-feature best cosines (synthetic data)"
    )
    from cli.modelargs import add_model_args

    add_model_args(e)
    m = e.add_argument_group("spliced into a model (with --model)")
    m.add_argument("--layer", metavar="NAME", help="the layer whose output the SAE's reconstruction replaces")
    m.add_argument(
        "--pair-layer",
        metavar="NAME",
        help="a transcoder's: the site whose output its prediction from --layer replaces (default: the one its "
        "store paired with --layer)",
    )
    m.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="PATH",
        help="inputs (repeatable; a text model: one text file cut into contexts); default: the bundled inputs",
    )
    m.add_argument("--n", type=int, help="how many inputs (bundled ones, or text contexts from --input)")
    m.add_argument(
        "--context", type=int, help="text models with --input: tokens per context, special tokens included (default 64)"
    )
    e.set_defaults(handler=run_eval)

    s = cmds.add_parser("sweep", help="train a grid of L1 x dictionary ratio as one batched ensemble")
    _add_data(s)
    s.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder for sweep.json, the heatmap PNG, the weights and the checkpoint",
    )
    s.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep in --out (give its grid and settings again; --samples may raise the total)",
    )
    s.add_argument(
        "--l1s", default="0.01,0.03,0.1,0.3,1", help="comma-separated L1 coefficients (jumprelu: L0 coefficients)"
    )
    s.add_argument(
        "--ratios",
        default="0.5,1,2,4",
        help="comma-separated dictionary sizes as multiples of the number of true features (or of d for files)",
    )
    _add_model_and_training(s)
    s.set_defaults(handler=run_sweep)
