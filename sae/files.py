"""Files: atomic writes, safetensors tensors with metadata, JSON records; the checkpoint names.

Every write goes to a temporary file in the same folder and is renamed onto its name, so a
reader (or a run killed mid-write) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing this module must not import torch: cli.output writes through it
    from torch import Tensor

CHECKPOINT = "checkpoint.safetensors"
STATE = "checkpoint.json"


def atomic_write(path: str | Path, writer: Callable[[str], None]) -> None:
    """``writer(tmp)`` then rename onto ``path``: a reader never sees a half-written file."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=p.suffix, dir=p.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600; the file gets the mode open() would give
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def finite(obj):
    """JSON has no NaN/inf: they become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json_atomic(obj, path: str | Path) -> None:
    """``obj`` as JSON (NaN/inf as null), written to a temp file and renamed onto ``path``."""
    text = json.dumps(finite(obj), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_tensors_atomic(tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=metadata))


def load_tensors(path: str | Path, what: str = "checkpoint file") -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file; a corrupt or missing file is a one-line ValueError/FileNotFoundError
    naming it as ``what`` ("checkpoint file", "data file")."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} does not exist")
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
            return {k: fh.get_tensor(k) for k in fh.keys()}, meta
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{what} {p} is not a readable safetensors file ({type(err).__name__}: {err})") from None


def read_json(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{p} is not valid JSON ({err})") from None


def current_umask() -> int:
    """The process's umask (read without changing it for good)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


SAFETENSORS_ITEMSIZE = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "I16": 2,
    "F16": 2,
    "BF16": 2,
    "U32": 4,
    "I32": 4,
    "F32": 4,
    "U64": 8,
    "I64": 8,
    "F64": 8,
}
MAX_HEADER = 100 << 20  # safetensors' own limit on a header's length


def read_safetensors_header(path: str | Path, what: str = "file") -> dict[str, dict]:
    """The tensors a safetensors file declares (``name -> {"dtype", "shape", "data_offsets"}``),
    checked against the file's size before anything is read or allocated: a header length beyond
    the file, a header that is not a JSON object of well-formed entries, or tensors whose bytes do
    not fill the data section exactly is a one-line ValueError naming the file as ``what``."""
    p = Path(path)

    def bad(why: str) -> ValueError:
        return ValueError(f"{what} {p} is not a safetensors file ({why})")

    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            first = fh.read(8)
            if len(first) < 8:
                raise bad(f"{size} bytes, shorter than a header")
            n = int.from_bytes(first, "little")
            if n > min(size - 8, MAX_HEADER):
                raise bad(f"its first 8 bytes give a header of {n:,} bytes, the file has {size:,}")
            raw = fh.read(n)
    except OSError as err:
        raise ValueError(f"cannot read {what} {p}: {err.strerror or err}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad("its header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    header.pop("__metadata__", None)
    data = size - 8 - n
    spans = []
    for name, info in header.items():
        ok = isinstance(info, dict) and info.get("dtype") in SAFETENSORS_ITEMSIZE
        shape, offsets = (info.get("shape"), info.get("data_offsets")) if ok else (None, None)
        ok = ok and isinstance(shape, list) and all(type(v) is int and v >= 0 for v in shape)
        ok = ok and isinstance(offsets, list) and len(offsets) == 2 and all(type(v) is int for v in offsets)
        if not ok:
            raise bad(f"tensor {name!r} has no valid dtype, shape and data_offsets")
        lo, hi = offsets
        if not 0 <= lo <= hi <= data or hi - lo != math.prod(shape) * SAFETENSORS_ITEMSIZE[info["dtype"]]:
            raise bad(f"tensor {name!r}'s bytes {lo}..{hi} do not fit its shape or the file's {data:,} data bytes")
        spans.append((lo, hi))
    if sum(hi - lo for lo, hi in spans) != data:
        raise bad(f"its tensors do not fill its {data:,} data bytes (truncated, or other bytes appended)")
    return header


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder``'s lock (an exclusive ``flock`` on the folder itself, so no lock file is left
    behind; the lock ``sae.runs.run_lock`` takes): a second writer is refused at once with a
    one-line ValueError naming the process that holds it."""
    import fcntl

    p = Path(folder)
    fd = os.open(p, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = lock_holder(p)
        who = f"process {pid}" if pid else "another process"
        raise ValueError(
            f"{who} is writing {p} now (it holds the folder's lock); wait for it to end, or write elsewhere"
        ) from None
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def lock_holder(path: str | Path) -> int | None:
    """The pid holding an ``flock`` on ``path`` (Linux's /proc/locks), or None where unknown."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        fields = line.split()
        if "->" in fields:  # a process waiting for the lock, not holding it
            continue
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == want and fields[4].isdigit():
            return int(fields[4])
    return None
