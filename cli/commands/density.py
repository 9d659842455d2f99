"""``polylens density``: polytope boundary crossings along a path (exact for piecewise-linear nets).

Python equivalent: ``polylens.lens.density.boundary_density(adapter, path)`` with a path from
``polylens.lens.paths`` (``interpolation_path``, ``scaling_path``, ``polyline_path``), or
``polylens.lens.shell.shell_profile`` for ``--path shell``.
"""

from __future__ import annotations

import sys

from cli.modelargs import add_model_args, default_batch, load_from_args, prepare_inputs

PATHS = ("interp", "scale", "input", "shell")


def _count_layers(args):
    names = [part for item in args.count_layers for part in item.split(",") if part]
    return names or None


def _exact(args):
    return True if args.exact else (False if args.smooth else None)


def format_result(res) -> str:
    import numpy as np

    kind = "exact" if res.exact else "sampled"
    lines = [
        f"{res.model}: path {res.path['kind']} in {res.space_layer}, length {res.path['length']:.4g}",
        f"{res.n_crossings} crossings ({kind}, {res.evaluations} evaluations), "
        f"{res.density_per_unit_length:.4g} per unit length",
    ]
    lines += [f"  {name:<32} {count:>8}" for name, count in res.crossings_per_layer.items()]
    jumps = [c.affine_change for c in res.crossings if c.affine_change is not None]
    if jumps:
        q = [float(v) for v in np.quantile(jumps, [0.1, 0.5, 0.9])]
        lines.append(
            "affine map change per crossing, ||A+ - A-||_F (to the output): "
            f"median {q[1]:.4g} [10%: {q[0]:.4g}, 90%: {q[2]:.4g}]"
        )
    labels = res.profile.get("labels") or []
    if labels:
        corr = "n/a" if res.peak_output_correlation is None else f"{res.peak_output_correlation:.3f}"
        lines.append(
            f"output {labels[0]} -> {labels[-1]}, {len(res.output_changes)} changes; "
            f"corr(crossings, output change) = {corr}"
        )
    return "\n".join(lines)


def run_shell(args, adapter, stream):
    from cli.output import write_json, write_with
    from polylens.lens.shell import shell_profile

    inputs = prepare_inputs(adapter, args.input, "--input") if args.input else default_batch(adapter, args.n)
    prof = shell_profile(
        adapter,
        inputs,
        args.layer,
        alpha_max=args.alpha_max,
        n_bins=args.bins,
        count_layers=_count_layers(args),
        exact=_exact(args),
        n_samples=args.samples,
    )
    print(
        f"{prof.model}: shell profile in {prof.layer} over {prof.n_paths} scaling paths, "
        f"{prof.n_crossings} crossings ({'exact' if prof.exact else 'sampled'})",
        file=stream,
    )
    if args.plot:
        from polylens.plots import plot_shell_profile

        write_with(args.plot, lambda tmp: plot_shell_profile(prof, tmp))
    write_json(prof.to_json(), args.json)
    return 0


def run(args) -> int:
    from cli.output import check_outputs, write_json, write_with

    if args.path not in PATHS:
        raise ValueError(f"unknown --path {args.path!r}; choose one of {', '.join(PATHS)}")
    check_outputs(
        args.force, inputs=[args.from_, args.to, *(args.via or []), args.weights], json=args.json, plot=args.plot
    )
    stream = sys.stderr if args.json == "-" else sys.stdout
    layer = "input" if args.path == "input" else args.layer
    if args.path == "input" and args.layer not in ("input", None):
        raise ValueError(f"--path input interpolates in input space; drop --layer {args.layer} or use --path interp")
    if layer is None:
        raise ValueError("--layer is required: the layer whose space the path lives in ('input' for input space)")
    args.layer = layer
    adapter = load_from_args(args)
    adapter.check_layer(layer, allowed=["input", *adapter.space_layers])
    if args.path == "shell":
        if not args.affine_change:
            raise ValueError("--no-affine-change does not apply to --path shell, which never computes it; drop it")
        return run_shell(args, adapter, stream)
    from polylens.lens.density import boundary_density
    from polylens.lens.paths import interpolation_path, scaling_path

    x0 = adapter.prepare(args.from_)
    if args.path == "scale":
        path = scaling_path(adapter, x0, layer, args.alpha_max, args.alpha_min)
    else:
        x1 = adapter.prepare(args.to)
        via = [adapter.prepare(v) for v in args.via]
        path = interpolation_path(adapter, x0, x1, layer, via)
    res = boundary_density(
        adapter,
        path,
        count_layers=_count_layers(args),
        exact=_exact(args),
        n_samples=args.samples,
        n_profile=args.profile_steps,
        affine_change=args.affine_change,
    )
    print(format_result(res), file=stream)
    if args.plot:
        from polylens.plots import plot_density_path

        write_with(args.plot, lambda tmp: plot_density_path(res, tmp))
    write_json(res.to_json(), args.json)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "density",
        help="polytope boundary crossings along interpolation / scaling paths, and the shell profile",
        description=__doc__.splitlines()[0],
    )
    add_model_args(p)
    p.add_argument(
        "--layer", default=None, help="the layer whose activation space the path lives in ('input' for input space)"
    )
    p.add_argument(
        "--path",
        default="interp",
        help="interp (between --from and --to at --layer), scale (α·a(--from)), input (interp in input space), "
        "shell (radial profile over many scaling paths)",
    )
    p.add_argument(
        "--from",
        dest="from_",
        default="0",
        metavar="X",
        help="start input: .npy/image file, index into the default inputs, or text (default 0)",
    )
    p.add_argument("--to", default="1", metavar="X", help="end input for interp/input paths (default 1)")
    p.add_argument(
        "--via",
        action="append",
        default=[],
        metavar="X",
        help="intermediate inputs: the path becomes a polyline through them (repeatable)",
    )
    p.add_argument("--alpha-max", type=float, default=2.0, help="scale/shell: largest α (default 2)")
    p.add_argument("--alpha-min", type=float, default=0.0, help="scale: smallest α (default 0)")
    p.add_argument(
        "--count-layers",
        action="append",
        default=[],
        metavar="NAMES",
        help="count crossings only at these activation layers (comma-separated; default: all at and after --layer)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--exact", action="store_true", help="require exact counting (error on a non-piecewise-linear layer)"
    )
    mode.add_argument(
        "--smooth",
        action="store_true",
        help="sampled mode: sign changes between --samples points, refined by bisection",
    )
    p.add_argument("--samples", type=int, default=1000, help="sampled mode: steps along the path (default 1000)")
    p.add_argument(
        "--profile-steps",
        type=int,
        default=200,
        help="grid steps for the Hamming/output profile (default 200; 0: none)",
    )
    p.add_argument(
        "--no-affine-change",
        dest="affine_change",
        action="store_false",
        help="exact mode: skip ||A+ - A-||_F at each crossing (it costs a backward and a forward-mode pass "
        "a batch of crossings; on a path of 10^4 crossings that is most of the run)",
    )
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="X",
        help="shell: the inputs whose scaling paths are used (default: the first --n default inputs)",
    )
    p.add_argument("--n", type=int, default=50, help="shell: number of default inputs (default 50)")
    p.add_argument("--bins", type=int, default=30, help="shell: radius bins (default 30)")
    p.add_argument(
        "--plot",
        metavar="PNG",
        help="write a PNG (crossings along the path with the output under it, or the shell profile)",
    )
    p.add_argument("--json", metavar="PATH", help="write the result as JSON to PATH ('-' for stdout)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(handler=run)
