"""Model and input flags shared by the polytope commands (``codes``, ``density``)."""

from __future__ import annotations

import sys
from pathlib import Path


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


def check_device(name: str) -> None:
    """``--device`` refused in one line, before any work, when it is no torch device or absent here."""
    if name == "cpu":
        return  # always there; a command that stops before its model runs then never imports torch
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices (cuda:0 to "
                f"cuda:{torch.cuda.device_count() - 1})"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {name}: Apple's MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise ValueError(f"--device {name}: only cpu, cuda and mps are supported")


ZIP = b"PK\x03\x04"


def check_npy(path, flag: str) -> None:
    """A file named ``.npy`` that is another format (an ``.npz`` or a ``torch.save`` file renamed:
    both are zip archives, which NumPy would open as a dict of arrays) is refused in one line."""
    p = Path(str(path))
    if p.suffix != ".npy" or not p.is_file():
        return
    with open(p, "rb") as fh:
        head = fh.read(6)
    if head.startswith(ZIP):
        raise ValueError(
            f"{flag} {path} is a zip archive (an .npz or a torch.save file), not a .npy array; "
            "save the array itself with numpy.save"
        )


def check_input_files(args) -> None:
    """``check_npy`` on every input file the command's flags name."""
    for dest, flag in (
        ("input", "--input"),
        ("from_", "--from"),
        ("to", "--to"),
        ("via", "--via"),
        ("codes", "--codes"),
    ):
        value = getattr(args, dest, None)
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                check_npy(item, flag)


def load_from_args(args):
    """The ``ModelAdapter`` the flags name (``--device`` and the input files checked first)."""
    from polylens.models import load_model

    check_device(args.device)
    check_input_files(args)
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
    from cli.flags import given

    if not is_text and "context" in given(args):
        raise ValueError(
            f"--context applies to text models (gpt2, minilm-l6); {adapter.name} does not read text: drop it"
        )
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
