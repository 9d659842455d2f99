"""Safe output for every command: check paths before work, write atomically, never clobber.

Usage in a handler: call ``check_outputs`` with every path the command will
write *before* computing anything, then ``write_json`` / ``write_with`` at the end.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


def check_output(path: str | None, force: bool, *, kind: str = "output") -> None:
    """Raise a one-line error if ``path`` exists (without force) or cannot be written."""
    if path == "-" and kind != "json":
        raise ValueError(f"--{kind} - : a {kind} file cannot go to stdout; give a file name")
    if path is None or path == "-":
        return
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{kind} path {path} is a directory; give a file name")
    if p.exists() and not force:
        raise FileExistsError(f"{kind} file {path} already exists; pass --force to overwrite it")
    _check_parent(p, f"{kind} file {path}")


def _check_parent(p: Path, what: str) -> None:
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"folder {parent} for {what} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write {what}: folder {parent} is not writable")


def check_output_dir(path: str, force: bool) -> None:
    """``check_output`` for an output folder (replaced whole with ``force``)."""
    p = Path(path)
    if p.exists() and not force:
        raise FileExistsError(f"output folder {path} already exists; pass --force to replace it")
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out {path} is a file; give a folder name")
    _check_parent(p, f"--out {path}")


def write_dir(path: str, writer: Callable[[Path], None]) -> None:
    """``writer(tmp_folder)``, then swap the folder in for ``path`` (an old one removed after)."""
    import shutil

    p = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.", dir=p.parent if str(p.parent) else "."))
    try:
        writer(tmp)
        from sae.files import current_umask

        os.chmod(tmp, 0o777 & ~current_umask())
        if p.exists():
            old = p.with_name(f".{p.name}.old.{os.getpid()}")
            os.replace(p, old)
            os.replace(tmp, p)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_outputs(force: bool, *, inputs=(), **paths: str | None) -> None:
    """``check_output`` for each keyword (the keyword names the kind in messages); no output may
    be one of ``inputs`` (files the command reads), whatever ``force`` says."""
    reads = {os.path.abspath(str(p)) for p in inputs if p not in (None, "-") and os.path.exists(str(p))}
    for kind, path in paths.items():
        if path not in (None, "-") and os.path.abspath(path) in reads:
            raise ValueError(
                f"--{kind} {path} is also an input of this command; writing it would destroy the data being read"
            )
    seen = {}
    for kind, path in paths.items():
        check_output(path, force, kind=kind)
        if path not in (None, "-"):
            if os.path.abspath(path) in seen:
                raise ValueError(
                    f"--{kind} and --{seen[os.path.abspath(path)]} name the same file {path}; give different paths"
                )
            seen[os.path.abspath(path)] = kind


def write_with(path: str, writer: Callable[[str], None]) -> None:
    """Call ``writer(tmp_path)`` then rename onto ``path``: readers never see a half-written file
    (``sae.files.atomic_write``, the one atomic writer; torch-free)."""
    from sae.files import atomic_write

    atomic_write(path, writer)


def write_json(obj, path: str | None) -> None:
    """Write ``obj`` as JSON to ``path`` (``-`` for stdout; None: nothing)."""
    if path is None:
        return
    from sae.files import finite  # JSON has no NaN/inf: they become null

    text = json.dumps(finite(obj), indent=2) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return

    def dump(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)

    write_with(path, dump)
