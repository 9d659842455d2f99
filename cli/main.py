"""Entry point of the ``polylens`` console script."""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, each with ``register(subparsers)``. Adding a command touches this list only.
COMMANDS = [
    "cli.commands.cache",
    "cli.commands.cluster",
    "cli.commands.compare",
    "cli.commands.codes",
    "cli.commands.density",
    "cli.commands.sae",
]


class UsageError(Exception):
    """Bad command-line usage; reported as one line with exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump), exit code 2."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="polylens",
        description="Polytope-lens analysis, activation vs gradient PCA, and sparse autoencoders. "
        "Run 'polylens COMMAND --help' for each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if "sae.distributed" in sys.modules:  # a torchrun rank: leave without C++ teardown (see exit_rank)
        sys.modules["sae.distributed"].exit_rank(code)
    return code


def _main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # which flags were given (resume checks them)
        if not getattr(args, "handler", None):
            parser.print_help()
            return 2
        return args.handler(args) or 0
    except UsageError as err:
        print(str(err), file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError) as err:
        from cli.flags import raised_in_cli, to_flags

        message = str(err) if raised_in_cli(err) else to_flags(str(err), parser, args)
        print(f"polylens: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("polylens: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
