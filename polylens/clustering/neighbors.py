"""One interface to distances and neighbours over the points a clusterer sees: packed spline codes
under Hamming distance (``polylens.clustering.hamming``) or activation vectors under Euclidean or cosine
distance (torch matmuls, faiss HNSW for the approximate k-NN).

``Points`` wraps either kind; clusterers call ``pairwise``, ``knn`` and ``knn_to`` and never ask
which kind they hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from polylens.clustering import hamming
from polylens.clustering.hamming import Neighbors

Metric = Literal["hamming", "euclidean", "cosine"]


@dataclass
class Points:
    """``data``: uint64 words ``[n, n_words]`` (metric ``hamming``) or float32 vectors ``[n, d]``
    (``euclidean`` / ``cosine``; cosine distance is 1 − cos)."""

    data: np.ndarray
    metric: Metric

    def __post_init__(self):
        if self.metric == "hamming":
            if self.data.dtype != np.uint64 or self.data.ndim != 2:
                raise ValueError(
                    f"Hamming points must be packed uint64 codes [n, n_words], got {self.data.dtype} {self.data.shape}"
                )
        elif self.metric in ("euclidean", "cosine"):
            data = np.asarray(self.data, dtype=np.float32)
            if data.ndim != 2:
                raise ValueError(f"activation vectors must be 2-D [n, d], got shape {data.shape}")
            if not np.isfinite(data).all():
                raise ValueError("activation vectors contain NaN or inf; check the model and inputs")
            if self.metric == "cosine":
                norms = np.linalg.norm(data, axis=1, keepdims=True)
                if (norms == 0).any():
                    raise ValueError(
                        f"{int((norms == 0).sum())} activation vectors are all zero: cosine distance is undefined "
                        "for them; use metric='euclidean'"
                    )
                # rows already of unit length stay as they are, so rows taken from Points are unchanged
                unit = np.abs(norms - 1) <= 4 * np.finfo(np.float32).eps
                data = np.where(unit, data, data / norms)
            self.data = np.ascontiguousarray(data)
        else:
            raise ValueError(f"metric={self.metric!r} must be one of hamming, euclidean, cosine")

    def __len__(self) -> int:
        return len(self.data)

    def take(self, index) -> Points:
        """The rows at ``index`` (any numpy index over the first axis)."""
        return self.with_data(self.data[index])

    def with_data(self, data: np.ndarray) -> Points:
        """Other rows under this metric (rows of this ``data``: already checked and normalised)."""
        return Points(np.ascontiguousarray(data), self.metric)

    def pairwise(self, other: Points | None = None, *, progress: bool = False) -> np.ndarray:
        """``[n, m]`` distances (int32 for Hamming, float32 otherwise)."""
        other = self if other is None else other
        if self.metric == "hamming":
            return hamming.pairwise(self.data, other.data, progress=progress)
        return _vector_pairwise(self.data, other.data, self.metric)

    def knn(
        self, k: int, *, method: Literal["exact", "hnsw"] = "exact", seed: int = 0, progress: bool = False
    ) -> Neighbors:
        """k nearest other rows of every row (self excluded)."""
        if method == "hnsw":
            if self.metric == "hamming":
                return hamming.hnsw_knn(self.data, k, seed=seed, progress=progress)
            return _vector_hnsw(self.data, k, self.metric)
        if self.metric == "hamming":
            return hamming.knn(self.data, None, k, exclude_self=True, progress=progress)
        return _vector_knn(self.data, self.data, k, exclude_self=True, metric=self.metric)

    def knn_to(
        self, base: Points, k: int, *, method: Literal["exact", "hnsw"] = "exact", progress: bool = False
    ) -> Neighbors:
        """k nearest rows of ``base`` for each row of self."""
        k = min(k, len(base))
        if method == "hnsw":
            return _hnsw_query(base, self, k)
        if self.metric == "hamming":
            return hamming.knn(self.data, base.data, k, progress=progress)
        return _vector_knn(self.data, base.data, k, exclude_self=False, metric=self.metric)


def _vector_pairwise(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    import torch

    x, y = torch.from_numpy(a), torch.from_numpy(b)
    if metric == "cosine":
        return (1.0 - x @ y.T).clamp_min_(0).numpy()
    step = max(1, 2**24 // max(1, len(b)))
    return torch.cat(
        [torch.cdist(x[i : i + step].double(), y.double()).float() for i in range(0, len(a), step)]
    ).numpy()


def _vector_knn(q: np.ndarray, base: np.ndarray, k: int, *, exclude_self: bool, metric: str) -> Neighbors:
    import torch

    avail = len(base) - (1 if exclude_self else 0)
    if not 1 <= k <= avail:
        raise ValueError(f"k={k} must be between 1 and the {avail} candidate neighbours")
    step = max(1, 2**24 // max(1, len(base)))
    dist, idx = [], []
    for s in range(0, len(q), step):
        d = torch.from_numpy(_vector_pairwise(q[s : s + step], base, metric)).double()
        if exclude_self:
            rows = torch.arange(d.shape[0])
            d[rows, rows + s] = float("inf")
        top = torch.topk(d, k, dim=1, largest=False, sorted=True)
        dist.append(top.values.float().numpy())
        idx.append(top.indices.numpy())
    return Neighbors(np.concatenate(dist), np.concatenate(idx).astype(np.int64))


def _faiss_index(data: np.ndarray, metric: str):
    import faiss

    index = faiss.IndexHNSWFlat(data.shape[1], 16)  # L2; on unit vectors ‖a − b‖² = 2(1 − cos)
    index.hnsw.efConstruction = 64
    index.add(np.ascontiguousarray(data, dtype=np.float32))
    return index


def _from_l2(d2: np.ndarray, metric: str) -> np.ndarray:
    d2 = np.maximum(d2, 0)
    return (d2 / 2 if metric == "cosine" else np.sqrt(d2)).astype(np.float32)


def _vector_hnsw(data: np.ndarray, k: int, metric: str) -> Neighbors:
    index = _faiss_index(data, metric)
    index.hnsw.efSearch = max(2 * k + 2, 64)
    d2, ids = index.search(np.ascontiguousarray(data, dtype=np.float32), k + 1)
    return hamming._drop_self(_from_l2(d2, metric), ids.astype(np.int64), k)


def _hnsw_query(base: Points, query: Points, k: int) -> Neighbors:
    if base.metric == "hamming":
        import faiss

        b8 = np.ascontiguousarray(base.data.view(np.uint8))
        index = faiss.IndexBinaryHNSW(8 * b8.shape[1], 16)
        index.hnsw.efConstruction = 64
        index.add(b8)
        index.hnsw.efSearch = max(2 * k + 2, 64)
        d, ids = index.search(np.ascontiguousarray(query.data.view(np.uint8)), k)
        return Neighbors(d.astype(np.int32), ids.astype(np.int64))
    index = _faiss_index(base.data, base.metric)
    index.hnsw.efSearch = max(2 * k + 2, 64)
    d2, ids = index.search(np.ascontiguousarray(query.data, dtype=np.float32), k)
    return Neighbors(_from_l2(d2, base.metric), ids.astype(np.int64))
