"""Batch sources: data (a tensor, an array, a ``.npy``/``.safetensors`` file, an activation store
folder, a synthetic stream, a list of batches, a re-iterable) as ``batch(step)``, a pure function
of (seed, step).

So training resumed at step t sees exactly the batches an uninterrupted run would have seen:
synthetic streams seed a generator per step, arrays use a seeded permutation per epoch, a list
of batches is indexed, and a re-iterable is iterated afresh and skipped past t batches. A
one-shot iterator (a generator) cannot be re-read, so it is refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sae.activation_store import ActivationStore, StoreBatches, is_store
from sae.files import load_tensors

SEED_STRIDE = 1_000_003
"""A run's seed times this (a prime) plus a step, an epoch or a salt seeds each generator, so the
streams of different seeds do not overlap."""


def load_array(path: str | Path) -> Tensor:
    """Activations ``[N, d]`` from ``.npy`` (no pickle) or ``.safetensors`` (key 'activations' or the only key)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file {p} does not exist")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False, mmap_mode="r")
        except (ValueError, OSError, EOFError) as err:
            why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if "pickle" in why.lower():  # NumPy's advice to unpickle would run whatever the file holds
                why = "it holds pickled objects or is not a .npy file at all; never unpickled"
            raise ValueError(f"data file {p} is not a plain numeric .npy array ({why})") from None
        if not isinstance(arr, np.ndarray):  # np.load opens a zip (an .npz) whatever the file is called
            arr.close()
            raise ValueError(f"data file {p} is an .npz archive, not a .npy array; save one array with np.save")
        if arr.dtype.kind not in "fiu":
            what = {"c": "complex", "V": "structured", "b": "boolean", "O": "object", "U": "text", "S": "bytes"}.get(
                arr.dtype.kind, str(arr.dtype)
            )
            raise ValueError(
                f"data file {p} holds {what} values ({arr.dtype}); SAE data must be real numbers [n_samples, d]"
            )
        if arr.ndim != 2 or 0 in arr.shape:
            raise ValueError(f"data file {p} must be a non-empty 2-D array [n_samples, d], got shape {arr.shape}")
        with warnings.catch_warnings():  # a read-only memory map: the tensor is only ever read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    elif p.suffix == ".safetensors":
        tensors, _ = load_tensors(p, "data file")
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
    """``batch(step)`` → ``[batch_size, d]``, a pure function of (seed, step) (see the module docstring)."""

    def __init__(
        self, data, batch_size: int, seed: int, device: str | torch.device = "cpu", rank: int = 0, world: int = 1
    ):
        if batch_size % world:
            raise ValueError(
                f"batch_size={batch_size} must be a multiple of the {world} processes (each takes an equal slice)"
            )
        self.batch_size, self.seed, self.device = batch_size, seed, torch.device(device)
        self.rank, self.world = rank, world
        self.stream = self.array = self.batches = self.iterable = self.store = None
        self.d = None
        if isinstance(data, (str, Path)):
            data = ActivationStore(data) if is_store(data) else load_array(data)
        if isinstance(data, ActivationStore):
            self.store, self.d = StoreBatches(data, batch_size, seed, rank=rank, world=world), data.width
            return
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
        elif isinstance(data, Sequence):
            if not len(data):
                raise ValueError("the list of batches is empty")
            self.batches = data
        elif isinstance(data, Iterable):
            if iter(data) is data:
                raise ValueError(
                    f"data is a one-shot iterator ({type(data).__name__}): it cannot be read again, so a resumed or "
                    "restarted run would silently skip or repeat batches; pass a tensor, an array, a file, a list "
                    "of batches, or an object whose __iter__ starts over each time"
                )
            self.iterable, self._it, self._pos = data, None, 0
        else:
            raise ValueError(
                f"data must be a tensor, an array, a .npy/.safetensors path, a stream, a list of batches or a "
                f"re-iterable; got {type(data).__name__}"
            )

    def generator(self, step: int, salt: int = 0) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * SEED_STRIDE + step * 7_919 + salt * 104_729) % (2**63 - 1))
        return g

    def batch(self, step: int) -> Tensor:
        """This process's rows of global batch ``step`` (all of it in a single process)."""
        if self.store is not None:
            return self.store.batch(step).to(self.device)
        x = self.global_batch(step)
        if self.world == 1:
            return x
        per = x.shape[0] // self.world
        return x[self.rank * per : (self.rank + 1) * per]

    def global_batch(self, step: int) -> Tensor:
        if self.store is not None:
            return self.store.global_batch(step).to(self.device)
        if self.stream is not None:
            return self.stream.sample(self.batch_size, self.generator(step))
        if self.array is not None:
            per_epoch = self.array.shape[0] // self.batch_size
            epoch, i = divmod(step, per_epoch)
            if epoch != self._epoch:
                g = torch.Generator().manual_seed(self.seed * SEED_STRIDE + epoch)
                self._epoch, self._perm = epoch, torch.randperm(self.array.shape[0], generator=g)
            idx = self._perm[i * self.batch_size : (i + 1) * self.batch_size]
            return self.array[idx].to(self.device, torch.float32)
        if self.batches is not None:
            if step >= len(self.batches):
                raise ValueError(
                    f"the list holds {len(self.batches)} batches and step {step} needs one more; "
                    "give more batches or fewer samples"
                )
            return torch.as_tensor(self.batches[step]).to(self.device, torch.float32)
        if self._it is None or step < self._pos:
            self._it, self._pos = iter(self.iterable), 0
        try:
            while self._pos < step:  # resuming: skip the batches already trained on
                next(self._it)
                self._pos += 1
            x = torch.as_tensor(next(self._it))
        except StopIteration:
            raise ValueError(
                f"the data ran out after {self._pos} batches; step {step} needs one more; "
                "give more data or fewer samples"
            ) from None
        self._pos += 1
        return x.to(self.device, torch.float32)
