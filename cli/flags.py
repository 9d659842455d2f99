"""The one place the CLI maps Python parameters to flags: library messages name parameters
(``k=12 must be ...``, scikit-learn style); the user typed flags, so the error line names those."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Callable

CLI = Path(__file__).resolve().parent

# Library parameters whose flag is not the parameter's own name, by command (``sae`` covers its subcommands).
RENAMED = {
    "compare": {
        "n_components": "--k",
        "n_hidden": "--hidden",
        "n_inputs": "--inputs",
        "n_features": "--features",
        "random_state": "--seed",
    },
    "density": {"n_bins": "--bins", "n_samples": "--samples", "n_profile": "--profile-steps"},
    "cluster": {"random_state": "--seed"},
    "sae": {"n_samples": "--samples", "warmup_steps": "--warmup", "n_features": "--features", "d": "--dim"},
}

_PARAM = re.compile(r"(?<![-\w.])([A-Za-z_]\w*)=")
_SWITCH = re.compile(r"(?<![-\w.])([A-Za-z_]\w*)=True\b")


def _options(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The ``--long`` option actions of the command ``args`` ran (its subcommands' parsers followed)."""
    while parser is not None:
        sub = None
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                sub = action.choices.get(getattr(args, action.dest, None) or "")
            elif action.option_strings and action.option_strings[-1].startswith("--"):
                yield action
        parser = sub


def flags_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    """``dest -> --flag`` for the command ``args`` ran."""
    names: dict[str, str] = {}
    for action in _options(parser, args):
        names.setdefault(action.dest, action.option_strings[-1])
    return names


def switches_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    """``dest -> --flag`` of the on/off flags (``store_true``): ``random_weights=True`` reads ``--random-weights``."""
    names: dict[str, str] = {}
    for action in _options(parser, args):
        if isinstance(action, argparse._StoreTrueAction):
            names.setdefault(action.dest, action.option_strings[-1])
    return names


def raised_in_cli(err: BaseException) -> bool:
    """Whether ``err`` was raised by the CLI's own code (whose messages already name flags)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(CLI)


def to_flags(message: str, parser: argparse.ArgumentParser, args: argparse.Namespace | None) -> str:
    """``message`` with each ``param=`` the command has a flag for written ``--flag=``."""
    if args is None or not getattr(args, "command", None):
        return message
    names = {**flags_of(parser, args), **RENAMED.get(args.command, {})}
    switches = switches_of(parser, args)
    message = _SWITCH.sub(lambda m: switches[m.group(1)] if m.group(1) in switches else m.group(0), message)
    return _PARAM.sub(lambda m: f"{names[m.group(1)]}=" if m.group(1) in names else m.group(0), message)


def given(args: argparse.Namespace) -> set[str]:
    """The ``dest`` of every option the user typed, however it was spelled (``--see 9`` is
    ``--seed 9``): ``typed`` worked it out when ``cli.main`` parsed the command line. Empty when
    ``args`` came from elsewhere (a caller that built the namespace itself)."""
    return set(getattr(args, "typed", ()))


def typed(build_parser: Callable[[], argparse.ArgumentParser], argv: list[str]) -> set[str]:
    """The ``dest`` of every option in ``argv``: argparse resolves its own prefixes when the command
    line is parsed again, by a fresh parser from ``build_parser``, with every default suppressed."""
    parser = build_parser()
    todo = [parser]
    while todo:
        p = todo.pop()
        p._defaults.clear()  # set_defaults(...): handlers, data_given
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
            elif action.dest != "help":
                action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command", "sae_command"}
