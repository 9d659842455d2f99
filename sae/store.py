"""On-disk pieces: atomic writes, checkpoints (safetensors + JSON), and batch sources.

A batch source maps a step number to a batch, so training resumed at step t sees exactly the
batches an uninterrupted run would have seen (synthetic streams seed a generator per step;
arrays use a seeded permutation per epoch; plain iterators are re-consumed past t batches).
"""

from __future__ import annotations

import json
import math
import os
import warnings
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; the file gets the mode open() would give
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _finite(obj):
    """JSON has no NaN/inf: they become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json_atomic(obj, path: str | Path) -> None:
    """``obj`` as JSON (NaN/inf as null), written to a temp file and renamed onto ``path``."""
    text = json.dumps(_finite(obj), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_tensors_atomic(tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=metadata))


def load_tensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file; a corrupt or missing file is a one-line ValueError/FileNotFoundError."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint file {p} does not exist")
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
            return {k: fh.get_tensor(k) for k in fh.keys()}, meta
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise ValueError(f"checkpoint file {p} is not a readable safetensors file ({type(err).__name__}: {err})") from None


def read_json(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{p} is not valid JSON ({err})") from None


def load_array(path: str | Path) -> Tensor:
    """Activations ``[N, d]`` from ``.npy`` (no pickle) or ``.safetensors`` (key 'activations' or the only key)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file {p} does not exist")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False, mmap_mode="r")
        except ValueError as err:
            raise ValueError(f"data file {p} is not a plain numeric .npy array ({str(err).splitlines()[0]})") from None
        if arr.dtype.kind not in "fiu":
            what = {"c": "complex", "V": "structured", "b": "boolean", "O": "object", "U": "text", "S": "bytes"}.get(arr.dtype.kind, str(arr.dtype))
            raise ValueError(f"data file {p} holds {what} values ({arr.dtype}); SAE data must be real numbers [n_samples, d]")
        if arr.ndim != 2 or 0 in arr.shape:
            raise ValueError(f"data file {p} must be a non-empty 2-D array [n_samples, d], got shape {arr.shape}")
        with warnings.catch_warnings():  # a read-only memory map: the tensor is only ever read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    elif p.suffix == ".safetensors":
        tensors, _ = load_tensors(p)
        if "activations" in tensors:
            x = tensors["activations"]
        elif len(tensors) == 1:
            x = next(iter(tensors.values()))
        else:
            raise ValueError(f"data file {p} holds keys {sorted(tensors)}; name the activations 'activations'")
        x = x.float()
    else:
        raise ValueError(f"data file {p} must end in .npy or .safetensors")
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"data file {p} must hold a non-empty 2-D array [n_samples, d]; got shape {tuple(x.shape)}")
    return x


class BatchSource:
    """``batch(step)`` → ``[batch_size, d]``, a pure function of (seed, step) for streams and arrays."""

    def __init__(self, data, batch_size: int, seed: int, device: str | torch.device = "cpu"):
        self.batch_size, self.seed, self.device = batch_size, seed, torch.device(device)
        self.stream = self.array = self.iterator = None
        if isinstance(data, (str, Path)):
            data = load_array(data)
        if isinstance(data, np.ndarray):
            data = torch.from_numpy(np.asarray(data, dtype=np.float32))
        if hasattr(data, "sample") and hasattr(data, "d"):
            self.stream, self.d = data, data.d
        elif isinstance(data, Tensor):
            if data.ndim != 2:
                raise ValueError(f"data must be 2-D [n_samples, d]; got shape {tuple(data.shape)}")
            if data.shape[0] < batch_size:
                raise ValueError(f"batch_size={batch_size} must be <= the number of samples {data.shape[0]}")
            self.array, self.d = data, data.shape[1]
            self._epoch, self._perm = -1, None
        elif isinstance(data, Iterable):
            self.iterator, self._it, self._pos, self.d = data, None, 0, None
        else:
            raise ValueError(f"data must be a tensor, an array, a .npy/.safetensors path, a stream or an iterable; got {type(data).__name__}")

    def generator(self, step: int, salt: int = 0) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * 1_000_003 + step * 7_919 + salt * 104_729) % (2**63 - 1))
        return g

    def batch(self, step: int) -> Tensor:
        if self.stream is not None:
            return self.stream.sample(self.batch_size, self.generator(step))
        if self.array is not None:
            per_epoch = self.array.shape[0] // self.batch_size
            epoch, i = divmod(step, per_epoch)
            if epoch != self._epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._epoch, self._perm = epoch, torch.randperm(self.array.shape[0], generator=g)
            idx = self._perm[i * self.batch_size : (i + 1) * self.batch_size]
            return self.array[idx].to(self.device, torch.float32)
        if self._it is None or step < self._pos:
            self._it, self._pos = iter(self.iterator), 0
        while self._pos < step:  # resuming: skip the batches already trained on
            next(self._it)
            self._pos += 1
        self._pos += 1
        x = torch.as_tensor(next(self._it))
        return x.to(self.device, torch.float32)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
