"""Exact Hamming distances and nearest neighbours on bit-packed spline codes.

Codes are ``[n, n_words]`` uint64 words as ``polylens.lens.codes.pack_bits`` writes them (padding bits
zero, so they never add to a distance). Everything here is blockwise: memory stays at one block of
distances, whatever ``n`` is, except where a full matrix is what the caller asked for.

Routes (all exact; ``choose_route`` times each available one on a small block at the codes' width
and keeps the fastest for the process, since the winner depends on the CPU; a job of at most
``SMALL_WORK`` word pairs (2,000 codes of 1,000 bits) takes the numpy route without that probe,
which would import numba, torch and faiss and load a compiled kernel, a second or more, for
work of well under a second):

- ``popcount``: a numba kernel, XOR + ``llvm.ctpop`` over the words, four query rows at a time
  (compiled for the host CPU, so AVX2 gets LLVM's vectorised popcount, AVX-512 ``vpopcntq``).
- ``int8``: ``torch._int_mm`` over ±1-unpacked bits, ``ham = (d − x·y) / 2`` (fast with VNNI,
  a slow path without it).
- ``fp32``: the same identity as an fp32 matmul (exact: integers below 2²⁴).
- ``cuda``: the fp32 matmul on the GPU, when one is present.
- ``faiss``: faiss's ``hammings`` (its generic popcount loop for widths other than 4–64 bytes).
- ``numpy``: ``popcount_rows`` on the XOR, the reference.

k-nearest neighbours: ``knn`` (exact; the popcount route keeps each row's k best while it scans,
the others take top-k of each block and merge), ``hnsw_knn`` (approximate, faiss's
``IndexBinaryHNSW``; ``knn_recall`` measures it against the exact one on a sample).
Ties are broken by the lower index, so every route returns the same neighbours.

Soft codes: ``expected_hamming`` (``Σ p(1−q) + q(1−p)``) and ``l1`` matrices.
Duplicates: ``unique_rows`` collapses repeated codes once, with counts, and the inverse index to
expand results back; it is how distinct codes are counted everywhere. ``popcount_rows`` is the one
row popcount in numpy (the numba kernels in ``_popcount`` count bits inside compiled loops, where
numpy cannot run).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

ROUTES = ("popcount", "int8", "fp32", "cuda", "faiss", "numpy")


class Neighbors(NamedTuple):
    """k nearest neighbours of each query: ``distances [n, k]`` (ascending), ``indices [n, k]``."""

    distances: np.ndarray
    indices: np.ndarray


class Unique(NamedTuple):
    """Distinct rows: ``rows [u, ...]``, ``counts [u]``, ``inverse [n]`` (row i is ``rows[inverse[i]]``),
    ``first [u]`` (the first input row holding each distinct row)."""

    rows: np.ndarray
    counts: np.ndarray
    inverse: np.ndarray
    first: np.ndarray


_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def popcount_rows(words: np.ndarray) -> np.ndarray:
    """Set bits per row of ``[..., n_words]`` uint64 → ``[...]`` int64: the one popcount outside
    the compiled kernels (numpy ≥ 2: ``bitwise_count``; older numpy: a byte lookup table)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words).sum(axis=-1, dtype=np.int64)
    as_bytes = np.ascontiguousarray(words).view(np.uint8)
    return _POP8[as_bytes].sum(axis=-1)


def unique_rows(x: np.ndarray) -> Unique:
    """Collapse repeated rows of a 2-D array (codes or vectors), keeping first-appearance order."""
    x = np.ascontiguousarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array [n, width], got shape {x.shape}")
    if len(x) == 0:
        return Unique(x, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    keys = x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()
    _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    order = np.argsort(first, kind="stable")  # renumber by first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return Unique(
        x[first[order]],
        counts[order].astype(np.int64),
        rank[inverse.ravel()].astype(np.int64),
        first[order].astype(np.int64),
    )


def _as_words(words: np.ndarray, name: str = "codes") -> np.ndarray:
    words = np.asarray(words)
    if words.ndim != 2 or words.dtype != np.uint64:
        raise ValueError(
            f"{name} must be packed uint64 words [n, n_words] (polylens.lens.codes.pack_bits), "
            f"got {words.dtype} {words.shape}"
        )
    return np.ascontiguousarray(words)


# ---------------------------------------------------------------------------------------------
# the numba kernels (compiled on first use, cached on disk)


def _numba_kernels():
    """The numba kernels (``polylens.clustering._popcount``), imported on first use: numba costs ~1 s to import."""
    from polylens.clustering import _popcount

    return _popcount


# ---------------------------------------------------------------------------------------------
# routes: each fills out[:, :] with the distances between two blocks


def _unpack_pm1(words: np.ndarray, dtype):
    import torch

    bits = np.unpackbits(words.view(np.uint8), axis=1)  # bit order is irrelevant for a distance
    return torch.from_numpy(bits).to(dtype).mul_(2).sub_(1)


def _block_popcount(a, b, out):
    _numba_kernels().pairwise(a, b, out)


def _block_numpy(a, b, out):
    step = max(1, 2**22 // max(1, b.size))
    for i in range(0, len(a), step):
        out[i : i + step] = popcount_rows(a[i : i + step, None, :] ^ b[None, :, :])


def _block_matmul(dtype, device: str = "cpu"):
    def run(a, b, out):
        import torch

        d = 64 * a.shape[1]
        x, y = _unpack_pm1(a, dtype).to(device), _unpack_pm1(b, dtype).to(device)
        if dtype == torch.int8:
            dots = torch._int_mm(x, y.T)  # y.T of a row-major [m, d]: the fast layout
        else:
            dots = x @ y.T
        out[:] = ((d - dots) // 2).to(torch.int32).cpu().numpy()

    return run


def _block_faiss(a, b, out):
    import faiss

    a8, b8 = a.view(np.uint8), b.view(np.uint8)
    dis = np.empty((len(a), len(b)), dtype=np.int32)
    faiss.hammings(faiss.swig_ptr(a8), faiss.swig_ptr(b8), len(a), len(b), a8.shape[1], faiss.swig_ptr(dis))
    out[:] = dis


def _available_routes() -> dict[str, Callable]:
    import importlib.util

    import torch

    routes: dict[str, Callable] = {}
    if importlib.util.find_spec("numba") is not None:
        routes["popcount"] = _block_popcount
    if hasattr(torch, "_int_mm"):
        routes["int8"] = _block_matmul(torch.int8)
    routes["fp32"] = _block_matmul(torch.float32)
    if torch.cuda.is_available():
        routes["cuda"] = _block_matmul(torch.float32, "cuda")
    if importlib.util.find_spec("faiss") is not None:
        routes["faiss"] = _block_faiss
    routes["numpy"] = _block_numpy
    return routes


SMALL_WORK = 2**26  # word pairs (rows × rows × words) up to which route="auto" is numpy, unprobed (< 1 s)
_CHOSEN: dict[int, str] = {}
PROBE_TIMES: dict[int, dict[str, float]] = {}  # n_words -> route -> pairs/s of the last probe


def choose_route(n_words: int) -> str:
    """The fastest exact route at this code width on this machine (timed once per process)."""
    if n_words in _CHOSEN:
        return _CHOSEN[n_words]
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**63, size=(256, n_words), dtype=np.uint64)
    b = rng.integers(0, 2**63, size=(1024, n_words), dtype=np.uint64)
    out = np.empty((256, 1024), dtype=np.int32)
    small = np.empty((8, 32), dtype=np.int32)  # contiguous like ``out``: the warm-up compiles what is timed
    speeds = {}
    for name, fn in _available_routes().items():
        try:
            fn(a[:8], b[:32], small)  # compile / warm up
            start = time.perf_counter()
            fn(a, b, out)
            speeds[name] = a.shape[0] * b.shape[0] / max(time.perf_counter() - start, 1e-9)
        except Exception:  # a route this build cannot run (e.g. _int_mm shape rules) is skipped
            continue
    PROBE_TIMES[n_words] = speeds
    _CHOSEN[n_words] = max(speeds, key=speeds.get)
    return _CHOSEN[n_words]


def _route_fn(route: str, n_words: int, work: int | None = None) -> tuple[str, Callable]:
    """The route's name and block function; ``work`` (word pairs of the job) lets "auto" skip the probe."""
    if route == "auto" and work is not None and work <= SMALL_WORK and n_words not in _CHOSEN:
        return "numpy", _block_numpy
    if route == "auto":
        route = choose_route(n_words)
    routes = _available_routes()
    if route not in routes:
        raise ValueError(f"route={route!r} is not available here; available: {', '.join(routes)} (or 'auto')")
    return route, routes[route]


def _block_rows(n_cols: int, budget: int = 2**26) -> int:
    """Rows per block so that one int32 block stays near ``budget`` bytes (64 MiB)."""
    return max(64, min(8192, budget // (4 * max(1, n_cols))))


def pairwise(a: np.ndarray, b: np.ndarray | None = None, *, route: str = "auto", progress: bool = False) -> np.ndarray:
    """All Hamming distances ``[n, m]`` int32 between packed codes ``a [n, w]`` and ``b [m, w]``
    (``b`` defaults to ``a``). The full matrix is the result; it is computed in row blocks."""
    a = _as_words(a)
    b = a if b is None else _as_words(b, "other codes")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"codes have different widths: {a.shape[1]} vs {b.shape[1]} words")
    _, fn = _route_fn(route, a.shape[1], len(a) * len(b) * a.shape[1])
    out = np.empty((len(a), len(b)), dtype=np.int32)
    step = _block_rows(len(b))
    for start in _progress(range(0, len(a), step), progress, "hamming distances"):
        fn(a[start : start + step], b, out[start : start + step])
    return out


def knn(
    query: np.ndarray,
    base: np.ndarray | None = None,
    k: int = 10,
    *,
    exclude_self: bool = False,
    route: str = "auto",
    progress: bool = False,
) -> Neighbors:
    """Exact k nearest neighbours of each ``query`` row among ``base`` (default: query itself).

    exclude_self: with ``base`` omitted, a row is not its own neighbour (its duplicates still are).
    Distances ascending; ties go to the lower index. Never holds more than one block of distances.
    """
    query = _as_words(query)
    base = query if base is None else _as_words(base, "base codes")
    if query.shape[1] != base.shape[1]:
        raise ValueError(f"codes have different widths: {query.shape[1]} vs {base.shape[1]} words")
    avail = len(base) - (1 if exclude_self else 0)
    if not 1 <= k <= avail:
        raise ValueError(f"k={k} must be between 1 and the {avail} candidate neighbours")
    if exclude_self and base is not query:
        raise ValueError("exclude_self applies only when base is the query set itself")
    route, fn = _route_fn(route, query.shape[1], len(query) * len(base) * query.shape[1])
    dist = np.empty((len(query), k), dtype=np.int32)
    idx = np.empty((len(query), k), dtype=np.int64)
    step = 4096 if route == "popcount" else _block_rows(len(base))
    for start in _progress(range(0, len(query), step), progress, "exact k-NN"):
        q = query[start : start + step]
        if route == "popcount":
            _numba_kernels().knn(
                q, base, k, start if exclude_self else -1, dist[start : start + len(q)], idx[start : start + len(q)]
            )
        else:
            dist[start : start + len(q)], idx[start : start + len(q)] = _knn_by_blocks(
                q, base, k, start if exclude_self else -1, fn
            )
    return Neighbors(dist, idx)


def _knn_by_blocks(
    q: np.ndarray, base: np.ndarray, k: int, self_offset: int, fn: Callable
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row over column blocks of ``base``, merged; key = distance·m + index breaks ties."""
    m = len(base)
    best = np.full((len(q), 0), 0, dtype=np.int64)
    col_step = max(k, 2**24 // max(1, len(q)))
    for c0 in range(0, m, col_step):
        block = np.empty((len(q), min(col_step, m - c0)), dtype=np.int32)
        fn(q, base[c0 : c0 + col_step], block)
        keys = block.astype(np.int64) * m + np.arange(c0, c0 + block.shape[1])
        if self_offset >= 0:
            rows = np.arange(len(q))
            cols = rows + self_offset - c0
            ok = (cols >= 0) & (cols < block.shape[1])
            keys[rows[ok], cols[ok]] = np.iinfo(np.int64).max
        both = np.concatenate([best, keys], axis=1)
        take = min(k, both.shape[1])
        part = np.partition(both, take - 1, axis=1)[:, :take] if both.shape[1] > take else both
        best = np.sort(part, axis=1)
    return (best // m).astype(np.int32), best % m


def hnsw_knn(
    codes: np.ndarray,
    k: int,
    *,
    m: int = 16,
    ef_construction: int = 64,
    ef_search: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Neighbors:
    """Approximate k-NN of every row among all rows (itself excluded) with faiss's ``IndexBinaryHNSW``.

    An approximation: measure it with ``knn_recall``. ef_search defaults to max(2k, 64).
    """
    import faiss

    codes = _as_words(codes)
    if not 1 <= k < len(codes):
        raise ValueError(f"k={k} must be between 1 and n-1={len(codes) - 1}")
    c8 = np.ascontiguousarray(codes.view(np.uint8))
    index = faiss.IndexBinaryHNSW(8 * c8.shape[1], m)
    index.hnsw.efConstruction = ef_construction
    index.hnsw.efSearch = ef_search or max(2 * k + 2, 64)
    order = np.random.default_rng(seed).permutation(len(c8))  # insertion order: seeded
    step = 50_000
    for start in _progress(range(0, len(c8), step), progress, "HNSW build"):
        index.add(c8[order[start : start + step]])
    dist = np.empty((len(c8), k + 1), dtype=np.int32)
    ids = np.empty((len(c8), k + 1), dtype=np.int64)
    for start in _progress(range(0, len(c8), step), progress, "HNSW search"):
        d, i = index.search(c8[start : start + step], k + 1)
        dist[start : start + step], ids[start : start + step] = d, np.where(i >= 0, order[np.maximum(i, 0)], -1)
    return _drop_self(dist, ids, k)


def _drop_self(dist: np.ndarray, ids: np.ndarray, k: int) -> Neighbors:
    """From k+1 neighbours that may include the query itself, keep k others (in order)."""
    n = len(ids)
    is_self = ids == np.arange(n)[:, None]
    keep = ~is_self
    # rows where self was not returned: drop the last column instead
    no_self = ~is_self.any(axis=1)
    keep[no_self, -1] = False
    return Neighbors(dist[keep].reshape(n, k), ids[keep].reshape(n, k))


def knn_recall(codes: np.ndarray, approx: Neighbors, *, n_queries: int = 500, seed: int = 0) -> float:
    """Recall of an approximate k-NN (self excluded) on a seeded sample of rows: the share of its
    neighbours lying within the exact k-th nearest distance (so ties at that distance count)."""
    codes = _as_words(codes)
    k = approx.indices.shape[1]
    rows = np.random.default_rng(seed).choice(len(codes), size=min(n_queries, len(codes)), replace=False)
    exact = knn(codes[rows], codes, k + 1)
    kth = np.empty(len(rows), dtype=np.int64)
    for r, (ed, ei) in enumerate(zip(*exact)):
        kth[r] = ed[ei != rows[r]][:k][-1]
    found = (approx.indices[rows] >= 0) & (approx.distances[rows] <= kth[:, None])
    return float(found.sum() / (len(rows) * k))


# ---------------------------------------------------------------------------------------------
# soft codes


def expected_hamming(p: np.ndarray, q: np.ndarray | None = None) -> np.ndarray:
    """``[n, m]`` expected Hamming distance ``Σ_u p_u(1−q_u) + q_u(1−p_u)`` between soft codes
    (probabilities in [0, 1]), as ``Σp + Σq − 2 p·q`` in float64 blocks."""
    import torch

    p64 = torch.as_tensor(np.asarray(p, dtype=np.float64))
    q64 = p64 if q is None else torch.as_tensor(np.asarray(q, dtype=np.float64))
    out = p64.sum(1, keepdim=True) + q64.sum(1)[None, :] - 2 * (p64 @ q64.T)
    return out.clamp_min_(0).numpy()


def l1(p: np.ndarray, q: np.ndarray | None = None) -> np.ndarray:
    """``[n, m]`` L1 distance ``Σ_u |p_u − q_u|`` between soft codes, float64."""
    import torch

    p64 = torch.as_tensor(np.asarray(p, dtype=np.float64))
    q64 = p64 if q is None else torch.as_tensor(np.asarray(q, dtype=np.float64))
    step = max(1, 2**24 // max(1, q64.shape[0] * q64.shape[1]))
    return torch.cat([torch.cdist(p64[i : i + step], q64, p=1) for i in range(0, len(p64), step)]).numpy()


def _progress(it, enabled: bool, desc: str):
    if not enabled or len(it) <= 1:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False)
