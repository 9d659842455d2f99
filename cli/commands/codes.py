"""``polylens codes``: spline codes (which neurons are on) of inputs at activation layers.

Python equivalent: ``polylens.lens.codes.extract_codes(load_model(spec), inputs, layers)``.
"""

from __future__ import annotations

import sys

from cli.modelargs import add_model_args, default_batch, load_from_args, prepare_inputs


def run(args) -> int:
    from cli.output import check_outputs, write_json, write_with
    from polylens.lens.codes import extract_codes

    check_outputs(args.force, inputs=[*args.input, args.weights], out=args.out, json=args.json)
    if not args.out.endswith(".npz"):
        raise ValueError(f"--out {args.out} must end in .npz")
    adapter = load_from_args(args)
    if args.input:
        inputs, ids = prepare_inputs(adapter, args.input, "--input"), list(args.input)
    else:
        inputs = default_batch(adapter, args.n)
        ids = [f"default:{i}" for i in range(inputs.shape[0])]
    layers = [part for item in args.layer for part in item.split(",") if part] or None
    position = None
    if args.position:
        try:
            position = tuple(int(v) for v in args.position.split(","))
        except ValueError:
            position = ()
        if len(position) != 2:
            raise ValueError(f"--position {args.position!r} must be H,W (two integers), e.g. 3,3")
    codes = extract_codes(
        adapter,
        inputs,
        layers,
        soft=args.soft,
        beta=args.beta,
        input_ids=ids,
        per_position=args.per_position,
        position=position,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    codes.provenance.update({k: v for k, v in adapter.provenance.items() if k not in codes.provenance})
    write_with(args.out, codes.save)
    info = codes.summary()
    stream = sys.stderr if args.json == "-" else sys.stdout
    print(
        f"{info['n_inputs']} inputs, {sum(layer['units'] for layer in info['layers'])} units "
        f"({info['n_units']} code bits), {info['distinct_codes']} distinct codes -> {args.out}",
        file=stream,
    )
    for layer in info["layers"]:
        print(
            f"  {layer['name']:<32} {layer['kind']:<10} {layer['units']:>8} units  "
            f"{100 * layer['fraction_on']:5.1f}% of bits on",
            file=stream,
        )
    write_json({**info, "out": args.out}, args.json)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "codes",
        help="spline codes of inputs at activation layers, bit-packed to an .npz",
        description=__doc__.splitlines()[0],
    )
    add_model_args(p)
    p.add_argument(
        "--layer",
        action="append",
        default=[],
        metavar="NAME",
        help="activation layer (name or wildcard; repeatable or comma-separated; default: all)",
    )
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="X",
        help="an input: .npy/image file, index into the model's default inputs, or text (repeatable)",
    )
    p.add_argument("--n", type=int, default=16, help="without --input: code the first N default inputs (default 16)")
    p.add_argument("--soft", action="store_true", help="also store soft codes: Φ(z) for GELU, σ(βz) for SiLU")
    p.add_argument("--beta", type=float, default=1.0, help="β of the SiLU/Swish soft code σ(βz) (default 1)")
    p.add_argument("--per-position", action="store_true", help="one code per token position ([n, seq, d] layers)")
    p.add_argument(
        "--position", metavar="H,W", help="conv layers: code only the channel vector at spatial position H,W"
    )
    p.add_argument("--batch-size", type=int, default=64, help="inputs per forward pass (default 64)")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="where to write the codes")
    p.add_argument("--json", metavar="PATH", help="write a JSON summary to PATH ('-' for stdout)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(handler=run)
