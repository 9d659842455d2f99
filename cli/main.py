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
    previous = _stops_as_interrupts()
    try:
        return _run(argv)
    finally:
        if previous:
            import signal

            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _stops_as_interrupts() -> dict:
    """SIGTERM (``kill PID``, ``timeout``, a batch scheduler) stops a command as Ctrl-C does, so it
    saves what it has (a checkpoint, the last complete shard) and says how to resume; a second
    SIGTERM, sent while that is saved, is ignored. During SAE training both wait for the end of
    the step under way (``sae.engine.request_stop``: raised mid-step, an interrupt would save
    weights one update ahead of the step counter, and the resumed run would differ from an
    uninterrupted one); a second Ctrl-C stops at once. Returns the handlers replaced."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    sent = []

    def stop(signum, frame):
        name = "SIGTERM" if signum == signal.SIGTERM else ""
        if sent:
            if signum == signal.SIGTERM:
                return
            raise KeyboardInterrupt(name)  # Ctrl-C twice: now
        sent.append(signum)
        engine = sys.modules.get("sae.engine")
        if engine is None or not engine.request_stop(name):
            raise KeyboardInterrupt(name)

    return {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}


def _resume_hint(args) -> str:
    """What an interrupted command left, and how to go on from it."""
    from pathlib import Path

    out = getattr(args, "out", None)
    if out is None:
        return ""
    out = Path(out)
    if args.command == "cache":
        try:
            from sae.activation_store import read_manifest

            manifest = read_manifest(out)
        except (OSError, ValueError):
            return f"; nothing was stored in {out}"
        if manifest["complete"]:
            return f"; the store in {out} is complete"
        rows = manifest["rows"]
        return f"; {rows:,} rows in complete shards are kept in {out}: run the same command again to finish the store"
    if args.command == "sae" and getattr(args, "sae_command", None) in ("train", "sweep"):
        from sae.files import CHECKPOINT

        if not (out / CHECKPOINT).is_file():
            if out.is_dir() and any(out.iterdir()):
                return "; it stopped before its first step (nothing to resume): start it again with --force"
            return f"; nothing was written to {out}"
        again = "the same command again" if getattr(args, "resume", False) else "the same command with --resume"
        return f"; its checkpoint is saved in {out}: run {again} to continue"
    return ""


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        from cli.flags import typed

        # which options were typed, however spelled (resume and the refusals of flags that do not apply read it)
        args.typed = sorted(typed(build_parser, list(sys.argv[1:] if argv is None else argv)))
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
    except KeyboardInterrupt as err:
        how = " by SIGTERM" if str(err) == "SIGTERM" else ""
        hint = _resume_hint(args) if args is not None else ""
        print(f"polylens: interrupted{how}{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
