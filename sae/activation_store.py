"""An on-disk activation store: fixed-size safetensors shards plus a manifest, written and read.

Layout of a store folder::

    manifest.json            format, model, layer, dtype, width, rows (tokens), shard_rows,
                             gradients (what they are the gradient of, or null), weight file,
                             pairs ({layer, width} of the paired site, or null; absent in stores
                             written before it), complete, and per shard {file, rows, sha256}
    shard_000000.safetensors "activations" [rows, width] (and "gradients" [rows, width], and
                             "pairs" [rows, pairs.width]: the same inputs' rows at another site,
                             what a transcoder reconstructs)
    weight.safetensors       "weight" [width, fan_in]: the layer's weight matrix (for --init svd)

``StoreWriter`` takes tensors (running the model is the caller's job): rows are buffered and
written a shard at a time, each shard to a temporary name then renamed, and only then entered in
the manifest (itself replaced atomically). Re-opened on an interrupted store it resumes after
the last complete shard: ``rows_done`` says how many rows to skip, no shard is half-written or
entered twice. ``ActivationStore`` reads a store (checking every shard against the manifest) and
``StoreBatches`` streams shuffled batches from it with bounded memory (see its docstring).

A store is read only through ``read_manifest`` and ``check_shard``: the manifest's type, keys,
dtype, width, shard names (plain names inside the folder), row counts and checksums, and each
file's safetensors header bounded by its size, before anything is allocated.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from pathlib import Path

import torch
from torch import Tensor

from sae.files import (
    load_tensors,
    read_json,
    read_safetensors_header,
    save_tensors_atomic,
    write_json_atomic,
)

FORMAT = "polylens-activation-store/1"
MANIFEST = "manifest.json"
WEIGHT = "weight.safetensors"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
SAFETENSORS_DTYPE = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}


def is_store(path) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


_FILES = r"(manifest\.json|weight\.safetensors|shard_\d{6}\.safetensors)"
_OWN = re.compile(rf"{_FILES}|\.{_FILES}\.[A-Za-z0-9_]+\.(json|safetensors)")  # a store's files, or their temps
_HEX = re.compile(r"[0-9a-f]{64}")
_FIELDS = {  # key: (types, what it must be)
    "format": (str, "a string"),
    "width": (int, "a positive integer"),
    "dtype": (str, f"one of {', '.join(DTYPES)}"),
    "shard_rows": (int, "a positive integer"),
    "rows": (int, "a non-negative integer"),
    "complete": (bool, "true or false"),
    "shards": (list, "a list"),
    "gradients": ((str, type(None)), "a string or null"),
    "weight": ((str, type(None)), "a file name or null"),
}


def _plain(name) -> bool:
    """A file name inside the store folder: no folder part, no ``..``, not absolute."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and os.path.basename(name) == name
        and not any(c in name for c in "/\\\0")
    )


def read_manifest(folder: str | Path) -> dict:
    """The manifest of the store at ``folder``, every field checked (type, keys, dtype, width,
    shard entries, the row total): anything else is a one-line ValueError naming the manifest."""
    path = Path(folder) / MANIFEST
    m = read_json(path)
    damaged = "write the store again with polylens cache --force"
    if not isinstance(m, dict):
        raise ValueError(f"{path} is not an activation store manifest (a JSON {type(m).__name__}, not an object)")
    if m.get("format") != FORMAT:
        raise ValueError(f"{path} is not a polylens activation store manifest (format {m.get('format')!r})")
    for key, (types, want) in _FIELDS.items():
        if key not in m:
            raise ValueError(f"{path} lacks the key {key!r}; the store is damaged ({damaged})")
        value = m[key]
        ok = isinstance(value, types) and not (types is int and isinstance(value, bool))
        if ok and key == "dtype":
            ok = value in DTYPES
        if ok and key in ("width", "shard_rows"):
            ok = value >= 1
        if ok and key == "rows":
            ok = value >= 0
        if ok and key == "weight" and value is not None:
            ok = _plain(value)
        if not ok:
            raise ValueError(f"{path}: {key} is {value!r}, it must be {want}; the store is damaged ({damaged})")
    total = 0
    for i, shard in enumerate(m["shards"]):
        ok = isinstance(shard, dict) and _plain(shard.get("file"))
        ok = ok and type(shard.get("rows")) is int and shard["rows"] >= 1
        ok = ok and isinstance(shard.get("sha256"), str) and _HEX.fullmatch(shard["sha256"]) is not None
        if not ok:
            raise ValueError(
                f"{path}: shard entry {i} ({str(shard)[:80]}) must be {{file: a plain file name in the store, "
                f"rows: a positive integer, sha256: 64 hex digits}}; the store is damaged ({damaged})"
            )
        total += shard["rows"]
    if total != m["rows"]:
        raise ValueError(f"{path}: its shards hold {total} rows, its rows field says {m['rows']} ({damaged})")
    pairs = m.setdefault("pairs", None)
    ok = pairs is None or (
        isinstance(pairs, dict)
        and isinstance(pairs.get("layer"), str)
        and type(pairs.get("width")) is int
        and pairs["width"] >= 1
    )
    if not ok:
        raise ValueError(
            f"{path}: pairs is {str(pairs)[:80]}, it must be null or {{layer: a name, width: a positive integer}}; "
            f"the store is damaged ({damaged})"
        )
    return m


def check_shard(folder: str | Path, manifest: dict, shard: dict) -> None:
    """The shard file exists and its header declares the manifest's dtype and shape for each
    tensor the store holds (read within the file's size, nothing allocated)."""
    path = Path(folder) / shard["file"]
    if not path.is_file():
        raise ValueError(
            f"shard {path} named in the manifest is missing; "
            "the store is damaged (write it again with polylens cache --force)"
        )
    header = read_safetensors_header(path, "shard")
    want = SAFETENSORS_DTYPE[manifest["dtype"]]
    widths = {"activations": manifest["width"]}
    if manifest.get("gradients"):
        widths["gradients"] = manifest["width"]
    if manifest.get("pairs"):
        widths["pairs"] = manifest["pairs"]["width"]
    for key, width in widths.items():
        info = header.get(key)
        if info is None:
            raise ValueError(f"shard {path} has no {key!r} tensor")
        if info["dtype"] != want or info["shape"] != [shard["rows"], width]:
            raise ValueError(
                f"shard {path}: {key} is {info['dtype']} {info['shape']}, the manifest says "
                f"{want} {[shard['rows'], width]}"
            )


def foreign_file(folder: str | Path) -> str | None:
    """The first entry of ``folder`` that is not part of an activation store (the manifest of a
    polylens store, its weight file, its shards, their temporary files), or None: the folder holds
    nothing but a store (or nothing) and may be replaced."""
    p = Path(folder)
    names = sorted(os.listdir(p))
    if names and MANIFEST not in names:
        return names[0]
    if names:
        try:
            ours = read_json(p / MANIFEST)
        except (OSError, ValueError):
            ours = None
        if not isinstance(ours, dict) or ours.get("format") != FORMAT:
            return MANIFEST
    for name in names:
        if not _OWN.fullmatch(name) or (p / name).is_symlink() or not (p / name).is_file():
            return name
    return None


def clear_store(folder: str | Path) -> None:
    """Remove a store's files from ``folder`` (which ``foreign_file`` found to hold nothing else),
    the manifest last: a removal cut short leaves a damaged store, still recognisable as one."""
    p = Path(folder)
    names = sorted(n for n in os.listdir(p) if _OWN.fullmatch(n))
    for name in sorted(names, key=lambda n: n == MANIFEST):
        (p / name).unlink()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class StoreWriter:
    """Write rows ``[n, width]`` into a store folder, ``shard_rows`` rows a shard.

    meta: what the rows are (``model``, ``layer``, ``context`` …), recorded in the manifest; a store
    re-opened with other meta, width, dtype or gradients is refused (it is another store).
    weight: the layer's weight matrix ``[width, fan_in]`` (written once). gradients: what the
    gradients are of (``"next-token loss"``), or None for none. pairs: ``{"layer", "width"}`` of a
    second site whose rows come with every batch (``add(acts, pairs=...)``), or None.
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        width: int,
        dtype: str = "float32",
        shard_rows: int = 65536,
        meta: dict | None = None,
        weight: Tensor | None = None,
        gradients: str | None = None,
        pairs: dict | None = None,
    ):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if shard_rows < 1 or width < 1:
            raise ValueError(f"shard_rows={shard_rows} and width={width} must be positive")
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        fields = {
            "format": FORMAT,
            "width": width,
            "dtype": dtype,
            "shard_rows": shard_rows,
            "gradients": gradients,
            "pairs": pairs,
            **(meta or {}),
        }
        path = self.out / MANIFEST
        if path.is_file():
            self.manifest = read_manifest(self.out)
            for key, value in fields.items():
                if self.manifest.get(key) != value:
                    raise ValueError(
                        f"{self.out} holds another store ({key} {self.manifest.get(key)!r}, not {value!r}); "
                        "give another --out, or --force to replace it"
                    )
        else:
            self.manifest = {**fields, "rows": 0, "weight": None, "complete": False, "shards": []}
            if weight is not None:
                save_tensors_atomic({"weight": weight.detach().float().contiguous().cpu()}, self.out / WEIGHT)
                self.manifest["weight"] = WEIGHT
            write_json_atomic(self.manifest, path)
        self.dtype = DTYPES[dtype]
        self.rows_done = self.manifest["rows"]
        """Rows already in complete shards: feed rows from this one on (``begin``)."""
        self._drop = 0
        self._acts: list[Tensor] = []
        self._grads: list[Tensor] = []
        self._pairs: list[Tensor] = []
        self._buffered = 0

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def begin(self, at_row: int) -> None:
        """The caller feeds rows from ``at_row`` (≤ ``rows_done``, e.g. the start of the input that
        holds row ``rows_done``): the rows before ``rows_done`` are dropped, not written again."""
        if not 0 <= at_row <= self.rows_done:
            raise ValueError(f"at_row={at_row} must be between 0 and rows_done={self.rows_done}")
        self._drop = self.rows_done - at_row

    def add(self, acts: Tensor, grads: Tensor | None = None, pairs: Tensor | None = None) -> None:
        width = self.manifest["width"]
        if acts.dim() != 2 or acts.shape[1] != width:
            raise ValueError(f"rows must be [n, {width}], got {tuple(acts.shape)}")
        if (grads is None) != (self.manifest["gradients"] is None) or (grads is not None and grads.shape != acts.shape):
            raise ValueError(
                "gradients must come with every row batch, shaped as the activations, exactly when the store holds them"
            )
        p = self.manifest["pairs"]
        if (pairs is None) != (p is None) or (pairs is not None and tuple(pairs.shape) != (acts.shape[0], p["width"])):
            raise ValueError(
                "paired rows must come with every row batch, one per row, exactly when the store holds them"
            )
        if self._drop:
            k = min(self._drop, acts.shape[0])
            acts, grads = acts[k:], (None if grads is None else grads[k:])
            pairs = None if pairs is None else pairs[k:]
            self._drop -= k
        if not acts.shape[0]:
            return
        self._acts.append(acts.detach().to("cpu", self.dtype))
        if grads is not None:
            self._grads.append(grads.detach().to("cpu", self.dtype))
        if pairs is not None:
            self._pairs.append(pairs.detach().to("cpu", self.dtype))
        self._buffered += acts.shape[0]
        while self._buffered >= self.manifest["shard_rows"]:
            self._flush(self.manifest["shard_rows"])

    def close(self) -> dict:
        """Write the last (possibly shorter) shard and mark the store complete; returns the manifest."""
        if self._buffered:
            self._flush(self._buffered)
        self.manifest["complete"] = True
        write_json_atomic(self.manifest, self.out / MANIFEST)
        return self.manifest

    def _flush(self, n: int) -> None:
        acts = torch.cat(self._acts)
        tensors = {"activations": acts[:n].contiguous()}
        self._acts = [acts[n:]]
        for key, held in (("gradients", self._grads), ("pairs", self._pairs)):
            if held:
                rows = torch.cat(held)
                tensors[key] = rows[:n].contiguous()
                held[:] = [rows[n:]]
        self._buffered -= n
        name = f"shard_{len(self.manifest['shards']):06d}.safetensors"
        save_tensors_atomic(tensors, self.out / name)  # complete on disk before the manifest names it
        self.manifest["shards"].append({"file": name, "rows": n, "sha256": sha256(self.out / name)})
        self.manifest["rows"] += n
        self.rows_done = self.manifest["rows"]
        write_json_atomic(self.manifest, self.out / MANIFEST)


class ActivationStore:
    """A store folder opened for reading: every shard named in the manifest must exist with the
    manifest's dtype, width and row count (checked on opening, from the headers), and its sha256
    must match (checked the first time the shard is read). Any disagreement is a one-line
    ValueError naming the shard."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not is_store(self.path):
            raise FileNotFoundError(
                f"{self.path} is not an activation store (no {MANIFEST}); write one with polylens cache"
            )
        m = self.manifest = read_manifest(self.path)
        if not m["complete"]:
            raise ValueError(
                f"the store {self.path} is incomplete (its writing stopped); run polylens cache again to finish it"
            )
        if not m["shards"]:
            raise ValueError(f"the store {self.path} holds no rows")
        self.width, self.rows, self.dtype = m["width"], m["rows"], m["dtype"]
        self.d = self.width
        self.has_gradients = m["gradients"] is not None
        self.pair_width = m["pairs"]["width"] if m["pairs"] else None
        self.paired = False
        """True in the view ``with_pairs`` returns: rows ``[activations, pairs]``."""
        self.starts = []
        total = 0
        for shard in m["shards"]:
            check_shard(self.path, m, shard)
            self.starts.append(total)
            total += shard["rows"]
        if m["weight"] is not None:
            path = self.path / m["weight"]
            if not path.is_file():
                raise ValueError(f"the weight file {path} named in the manifest is missing; the store is damaged")
            info = read_safetensors_header(path, "weight file").get("weight")
            if info is None or info["dtype"] != "F32" or len(info["shape"]) != 2 or info["shape"][0] != self.width:
                raise ValueError(f"weight file {path} holds no F32 'weight' [{self.width}, fan_in] tensor")
        self._verified: set[str] = set()
        self._cache: tuple[int, dict[str, Tensor]] | None = None

    def shard(self, i: int) -> dict[str, Tensor]:
        """Shard ``i``'s tensors (float32), its checksum verified once."""
        if self._cache is not None and self._cache[0] == i:
            return self._cache[1]
        info = self.manifest["shards"][i]
        path = self.path / info["file"]
        if info["file"] not in self._verified:
            if sha256(path) != info["sha256"]:
                raise ValueError(
                    f"shard {path}: its sha256 does not match the manifest; "
                    "the store is damaged (write it again with polylens cache --force)"
                )
            self._verified.add(info["file"])
        tensors, _ = load_tensors(path, "shard")
        out = {k: v.float() for k, v in tensors.items()}
        self._cache = (i, out)
        return out

    def with_pairs(self) -> ActivationStore:
        """This store read as a transcoder's rows ``[x, y]``: each row's activations, then the paired
        site's (``width`` = both widths). A store without paired rows is refused in one line."""
        if self.pair_width is None:
            raise ValueError(
                f"the store {self.path} holds no paired rows ({self.manifest.get('layer')} only), which a transcoder "
                "reconstructs; write one with polylens cache --layer IN --pair-layer OUT"
            )
        view = copy.copy(self)
        view.paired = True
        view.width = view.d = self.manifest["width"] + self.pair_width
        return view

    def read(self, lo: int, hi: int, key: str = "activations") -> Tensor:
        """Rows ``[lo, hi)`` of the store (float32); in the ``with_pairs`` view, activations and pairs side by side."""
        if self.paired and key == "activations":
            return torch.cat([self._read(lo, hi, "activations"), self._read(lo, hi, "pairs")], dim=1)
        return self._read(lo, hi, key)

    def _read(self, lo: int, hi: int, key: str) -> Tensor:
        import bisect

        parts = []
        while lo < hi:
            i = bisect.bisect_right(self.starts, lo) - 1
            start, rows = self.starts[i], self.manifest["shards"][i]["rows"]
            take = min(hi, start + rows) - lo
            parts.append(self.shard(i)[key][lo - start : lo - start + take])
            lo += take
        width = self.pair_width if key == "pairs" else self.manifest["width"]
        return torch.cat(parts) if parts else torch.empty(0, width)

    def weight(self) -> Tensor | None:
        """The layer's weight matrix ``[width, fan_in]`` recorded with the store, or None."""
        if self.manifest["weight"] is None:
            return None
        return load_tensors(self.path / self.manifest["weight"], "weight file")[0]["weight"]


class StoreBatches:
    """Shuffled batches from a store with bounded memory; batch t is a pure function of (seed, t,
    rank, world size).

    An epoch cuts the store into chunks of ``chunk_rows`` consecutive rows (a tail shorter than a
    chunk is left out of that epoch) and orders them by a permutation seeded by (seed, epoch). A
    window of ``window_chunks`` chunks in that order is the shuffle buffer: its rows are permuted
    by (seed, epoch, window) and cut into global batches of ``batch_size``; rank r of a world of
    W takes rows [r·B/W, (r+1)·B/W) of each. Only one window is held in memory.
    """

    def __init__(
        self,
        store: ActivationStore,
        batch_size: int,
        seed: int,
        *,
        chunk_rows: int = 4096,
        buffer_bytes: int = 1 << 30,
        rank: int = 0,
        world: int = 1,
        key: str = "activations",
    ):
        self.store, self.batch_size, self.seed, self.rank, self.world, self.key = (
            store,
            batch_size,
            seed,
            rank,
            world,
            key,
        )
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} must be a multiple of the {world} processes")
        self.chunk_rows = min(chunk_rows, store.rows)
        self.n_chunks = store.rows // self.chunk_rows
        per_window = max(1, -(-batch_size // self.chunk_rows), buffer_bytes // (4 * store.width * self.chunk_rows))
        self.window_chunks = min(per_window, self.n_chunks)
        if self.window_chunks * self.chunk_rows < batch_size:
            raise ValueError(f"batch_size={batch_size} is more than the store's {store.rows} rows")
        n_windows = -(-self.n_chunks // self.window_chunks)
        self.window_batches = [
            (min(self.n_chunks, (w + 1) * self.window_chunks) - w * self.window_chunks) * self.chunk_rows // batch_size
            for w in range(n_windows)
        ]
        self.per_epoch = sum(self.window_batches)
        self._window: tuple[tuple[int, int], Tensor] | None = None

    def _locate(self, step: int) -> tuple[int, int, int]:
        epoch, j = divmod(step, self.per_epoch)
        for w, n in enumerate(self.window_batches):
            if j < n:
                return epoch, w, j
            j -= n
        raise AssertionError("unreachable")

    def _load(self, epoch: int, w: int) -> Tensor:
        if self._window is not None and self._window[0] == (epoch, w):
            return self._window[1]
        self._window = None  # the old window goes first: one in memory at a time
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.n_chunks, generator=g)[w * self.window_chunks : (w + 1) * self.window_chunks]
        rows = torch.cat(
            [
                self.store.read(int(c) * self.chunk_rows, (int(c) + 1) * self.chunk_rows, self.key)
                for c in order.sort().values
            ]
        )
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 7_919 + w + 1)
        rows = rows[torch.randperm(rows.shape[0], generator=g)]
        self._window = ((epoch, w), rows)
        return rows

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` rows from random chunks (resampling pools), a function of ``generator``."""
        k = min(self.n_chunks, -(-n // self.chunk_rows))
        chunks = torch.randperm(self.n_chunks, generator=generator)[:k].sort().values
        rows = torch.cat(
            [self.store.read(int(c) * self.chunk_rows, (int(c) + 1) * self.chunk_rows, self.key) for c in chunks]
        )
        return rows[torch.randperm(rows.shape[0], generator=generator)[:n]]

    def global_batch(self, step: int) -> Tensor:
        epoch, w, j = self._locate(step)
        return self._load(epoch, w)[j * self.batch_size : (j + 1) * self.batch_size]

    def batch(self, step: int) -> Tensor:
        """This rank's slice of global batch ``step``."""
        per = self.batch_size // self.world
        return self.global_batch(step)[self.rank * per : (self.rank + 1) * per]
