"""k-medoids under the points' metric (Hamming for codes, Euclidean or cosine for activations)."""

from __future__ import annotations

import numpy as np

from polylens.clustering.base import ClustererBase, as_points, metric_of
from polylens.clustering.hamming import unique_rows
from polylens.validation import check_int


class KMedoids(ClustererBase):
    """k-medoids: k-medoids++ seeding, then alternate (assign to the nearest medoid; move each
    medoid to the member with the least total distance to its cluster) until nothing changes.
    Members are weighted by their counts. In clusters above ``max_candidates`` members the new
    medoid is sought among a seeded sample of them plus the current one (the cost never rises).

    What it promises is a local optimum of this alternation, not the best medoid set (PAM's swaps
    search wider): every point is with its nearest medoid, and each medoid has the least total
    weighted distance to its cluster among the members considered (all of them up to
    ``max_candidates``). With ``n_clusters=1`` that is the exact 1-medoid.

    After ``fit``: ``labels_`` [n], ``medoid_indices_`` [k] (rows of X), ``inertia_`` (the total
    distance of the points to their medoids), ``n_iter_``, ``n_unique_``.
    """

    def __init__(
        self,
        n_clusters: int = 10,
        *,
        metric: str | None = None,
        max_iter: int = 100,
        max_candidates: int = 2000,
        random_state: int = 0,
        progress: bool = False,
        verbose: bool = False,
    ):
        self.n_clusters, self.metric, self.max_iter = n_clusters, metric, max_iter
        self.max_candidates, self.random_state = max_candidates, random_state
        self.progress, self.verbose = progress, verbose

    def fit(self, X, y=None):
        points = as_points(X, self.metric)
        check_int("max_iter", self.max_iter, low=1)
        check_int("max_candidates", self.max_candidates, low=1)
        self.notes_ = []
        uniq = unique_rows(points.data)
        pts, w = points.with_data(uniq.rows), uniq.counts.astype(np.float64)
        k = check_int("n_clusters", self.n_clusters, low=1, high=len(pts), high_name="n_distinct_points")
        rng = np.random.default_rng(self.random_state)
        medoids = [int(rng.choice(len(pts), p=w / w.sum()))]
        nearest = pts.take([medoids[0]]).pairwise(pts)[0].astype(np.float64)
        for _ in range(1, k):
            p = w * nearest**2
            pick = (
                int(rng.choice(len(pts), p=p / p.sum()))
                if p.sum() > 0
                else int(np.flatnonzero(~np.isin(np.arange(len(pts)), medoids))[0])
            )
            medoids.append(pick)
            nearest = np.minimum(nearest, pts.take([pick]).pairwise(pts)[0])
        medoids = np.array(medoids)
        for it in range(self.max_iter):
            d = pts.pairwise(pts.take(medoids)).astype(np.float64)  # [u, k]
            assign = np.argmin(d, axis=1)
            new = medoids.copy()
            for c in range(k):
                members = np.flatnonzero(assign == c)
                if len(members) == 0:
                    continue
                cand = (
                    members
                    if len(members) <= self.max_candidates
                    else np.union1d(rng.choice(members, self.max_candidates, replace=False), [medoids[c]])
                )
                cost = pts.take(cand).pairwise(pts.take(members)).astype(np.float64) @ w[members]
                new[c] = cand[int(np.argmin(cost))]
            if np.array_equal(new, medoids):
                break
            medoids = new
        self.n_iter_ = it + 1
        d = pts.pairwise(pts.take(medoids)).astype(np.float64)
        assign = np.argmin(d, axis=1)
        self.inertia_ = float((d[np.arange(len(d)), assign] * w).sum())
        self.labels_ = assign[uniq.inverse].astype(np.int64)
        self.medoid_indices_ = uniq.first[medoids]
        self.n_clusters_, self.n_unique_, self.route_, self.exact_ = k, len(pts), "dense-medoids", False
        self._medoids = pts.take(medoids)
        return self

    def transform(self, X) -> np.ndarray:
        """Distances ``[n, n_clusters]`` from each point to each medoid."""
        self._check_fitted("_medoids")
        points = as_points(X, metric_of(self._medoids))
        if points.metric != self._medoids.metric or points.data.shape[1] != self._medoids.data.shape[1]:
            raise ValueError(
                f"points ({points.metric}, width {points.data.shape[1]}) differ from the fitted ones "
                f"({self._medoids.metric}, width {self._medoids.data.shape[1]})"
            )
        return points.pairwise(self._medoids)

    def predict(self, X) -> np.ndarray:
        """The label of each point's nearest medoid."""
        return np.argmin(self.transform(X), axis=1).astype(np.int64)
