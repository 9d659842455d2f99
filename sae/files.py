"""Files: atomic writes, safetensors tensors with metadata, JSON records; the checkpoint names.

Every write goes to a temporary file in the same folder and is renamed onto its name, so a
reader (or a run killed mid-write) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
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
