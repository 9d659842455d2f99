"""Model and input flags shared by the polytope commands (``codes``, ``density``)."""

from __future__ import annotations

import sys


def add_model_args(p) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        metavar="SPEC",
        default=None,
        help="digits (default, embedded), efficientnet-lite0, minilm-l6 (trained, offline), gpt2[-medium…], "
        "inceptionv1, torchvision:NAME or FILE.py:FUNCTION",
    )
    g.add_argument("--weights", metavar="PATH", help="weights file or directory for the model")
    g.add_argument(
        "--random-weights",
        action="store_true",
        help="use random weights (offline tests; never reported under a pretrained name)",
    )
    g.add_argument("--device", default="cpu", help="torch device (default cpu)")
    g.add_argument(
        "--no-progress", action="store_true", help="no progress bar (inputs, images or tokens done, rate, time left)"
    )
    g.add_argument(
        "--activation",
        metavar="LAYER=KIND",
        action="append",
        default=[],
        help="FILE.py models: module LAYER's output is the pre-activation of a functional activation KIND "
        "(relu, gelu, gelu_tanh, silu); repeatable",
    )


def load_from_args(args):
    """The ``ModelAdapter`` the flags name."""
    from polylens.models import load_model

    options = {"weights": args.weights, "random_weights": args.random_weights, "device": args.device}
    if args.activation:
        acts = {}
        for item in args.activation:
            layer, sep, kind = item.partition("=")
            if not sep or not layer or not kind:
                raise ValueError(f"--activation {item!r} must be LAYER=KIND, e.g. fc1=relu")
            acts[layer] = kind
        if not (args.model or "").count(".py"):
            raise ValueError("--activation applies to FILE.py:FUNCTION models only")
        options["activations"] = acts
    adapter = load_model(args.model, **options)
    if "mode" in adapter.provenance:  # the adapter changed the model's mode: say so
        print(f"note: {args.model}: {adapter.provenance['mode']}", file=sys.stderr)
    return adapter


def prepare_inputs(adapter, raws: list[str], flag: str):
    """Each raw input (file, index into the default inputs, or text) → one batch ``[n, ...]``."""
    import torch

    xs = [adapter.prepare(raw) for raw in raws]
    for raw, x in zip(raws[1:], xs[1:]):
        if x.shape != xs[0].shape:
            raise ValueError(
                f"{flag} {raw!r} gives shape {tuple(x.shape)} but {flag} {raws[0]!r} gives {tuple(xs[0].shape)}; "
                "inputs must have the same shape"
            )
    return torch.cat(xs)


def default_batch(adapter, n: int, flag: str = "--n"):
    if n < 1:
        raise ValueError(f"{flag}={n} must be a positive integer")
    if adapter.default_inputs is None:
        raise ValueError(f"model {adapter.name} has no bundled inputs; give them with --input")
    return adapter.default_inputs(n)


def model_inputs(adapter, args, *, context: int, tokens: int | None = None, n_default: int | None = None):
    """``(inputs [n, ...], is_text, labels [n] or None)`` from ``--input`` / ``--n``.

    A language model reads one text file cut into contexts of ``context`` tokens (BOS first; at
    most ``tokens`` of them, and ``--n`` contexts); other models read input files, or else the
    first ``--n`` bundled inputs (default ``n_default``; 360, the digits test split, for a model
    with labelled bundled inputs, else 8), with their labels where they have them.
    """
    from cli.experiments.cache import text_contexts

    is_text = adapter.tokenize is not None
    if is_text and args.input:
        if len(args.input) > 1:
            raise ValueError("give one text file with --input")
        contexts = text_contexts(adapter, args.input[0], context, tokens)
        return (contexts[: args.n] if args.n else contexts), True, None
    if args.input:
        return prepare_inputs(adapter, args.input, "--input"), is_text, None
    labelled = adapter.default_labels is not None
    inputs = default_batch(adapter, args.n or n_default or (360 if labelled else 8))
    return inputs, is_text, (adapter.default_labels(inputs.shape[0]) if labelled else None)
