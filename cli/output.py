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


MARKER = ".polylens-output.json"
"""What ``write_dir`` leaves in each folder it writes: the command and the files it wrote, so that
``--force`` replaces a folder only when it holds nothing but that command's earlier output."""


def out_folder(path: str, flag: str = "--out") -> Path:
    """The real folder ``path`` names (symbolic links followed), checked before any work: not the
    current folder or one that holds it, not a file, its parent an existing writable folder."""
    p = Path(path)
    real = Path(os.path.realpath(p))
    here = os.path.realpath(os.getcwd())
    if here == str(real) or here.startswith(str(real).rstrip(os.sep) + os.sep):
        what = "the current folder" if here == str(real) else "a folder that holds the current folder"
        raise ValueError(f"{flag} {path} is {what}; give the name of a new folder for the output")
    if real.exists() and not real.is_dir():
        raise ValueError(f"{flag} {path} is a file; give a folder name")
    _check_parent(real, f"{flag} {path}")
    if real.is_dir() and not os.access(real, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {flag} {path}: this user may not write the folder (permission denied)")
    return real


def foreign_in(folder: Path, command: str, legacy: tuple[str, ...] = ()) -> str | None:
    """The first entry of ``folder`` that is not part of an earlier output of ``command`` (recognised
    by ``MARKER``, or for an output written before the marker by every name matching ``legacy``'s
    patterns, the first of them present), or None: the folder may be replaced."""
    from fnmatch import fnmatch

    names = sorted(os.listdir(folder))
    if not names:
        return None
    if MARKER in names:
        try:
            record = json.loads((folder / MARKER).read_text())
        except (OSError, ValueError):
            record = None
        if not (
            isinstance(record, dict) and record.get("command") == command and isinstance(record.get("files"), list)
        ):
            return MARKER
        ours = lambda name: name == MARKER or name in record["files"]  # noqa: E731
    elif legacy and legacy[0] in names:
        ours = lambda name: any(fnmatch(name, pattern) for pattern in legacy)  # noqa: E731
    else:
        return names[0]
    for name in names:
        if not ours(name) or (folder / name).is_symlink() or not (folder / name).is_file():
            return name
    return None


def refuse_foreign(path: str, name: str, command: str, flag: str = "--out") -> ValueError:
    return ValueError(
        f"{flag} {path} holds {name}, which is not part of an earlier polylens {command} output; "
        f"--force replaces only such a folder: give a new folder, or move {name} out of it"
    )


def check_output_dir(path: str, force: bool, *, command: str, legacy: tuple[str, ...] = ()) -> None:
    """``check_output`` for an output folder, replaced whole with ``force`` only when it holds
    nothing but an earlier output of ``command`` (see ``foreign_in``)."""
    real = out_folder(path)
    if not real.exists():
        return
    name = foreign_in(real, command, legacy)
    if name is not None:
        raise refuse_foreign(path, name, command)
    if not force:
        raise FileExistsError(f"output folder {path} already exists; pass --force to replace it")


def write_dir(path: str, writer: Callable[[Path], None], *, command: str, legacy: tuple[str, ...] = ()) -> None:
    """``writer(tmp_folder)``, then swap the folder in for ``path`` (its real folder, symbolic links
    followed); an old one, checked again to hold nothing but ``command``'s output, removed after."""
    import shutil

    real = out_folder(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{real.name}.", dir=real.parent))
    try:
        writer(tmp)
        files = sorted(os.listdir(tmp))
        (tmp / MARKER).write_text(json.dumps({"command": command, "files": files}) + "\n")
        from sae.files import current_umask

        os.chmod(tmp, 0o777 & ~current_umask())
        if real.exists():
            name = foreign_in(real, command, legacy)
            if name is not None:  # written to while this command ran
                raise refuse_foreign(path, name, command)
            old = real.with_name(f".{real.name}.old.{os.getpid()}")
            os.replace(real, old)
            os.replace(tmp, real)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, real)
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
