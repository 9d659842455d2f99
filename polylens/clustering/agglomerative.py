"""Agglomerative clustering of codes or activations on their precomputed distance matrix."""

from __future__ import annotations

import numpy as np

from polylens.clustering.base import ClustererBase, as_points, dense_fits
from polylens.clustering.hamming import unique_rows
from polylens.validation import check_choice, check_int


class Agglomerative(ClustererBase):
    """scikit-learn's ``AgglomerativeClustering`` (``linkage`` average, complete or single) on the
    precomputed distance matrix of all points (distances computed once per distinct point).

    After ``fit``: ``labels_`` [n], ``n_clusters_``, ``n_unique_``. Like scikit-learn's, it has no
    ``predict``: new points are not placed in a finished hierarchy.
    """

    def __init__(
        self,
        n_clusters: int = 10,
        *,
        metric: str | None = None,
        linkage: str = "average",
        max_dense: int = 20_000,
        random_state: int = 0,
        progress: bool = False,
        verbose: bool = False,
    ):
        self.n_clusters, self.metric, self.linkage, self.max_dense = n_clusters, metric, linkage, max_dense
        self.random_state, self.progress, self.verbose = random_state, progress, verbose

    def fit(self, X, y=None):
        from sklearn.cluster import AgglomerativeClustering

        points = as_points(X, self.metric)
        self.notes_ = []
        n = len(points)
        check_int("n_clusters", self.n_clusters, low=1, high=n, high_name="n_points")
        check_choice("linkage", self.linkage, ("average", "complete", "single"))
        check_int("max_dense", self.max_dense, low=1)
        if n > self.max_dense or not dense_fits(n, 8):
            raise ValueError(
                f"agglomerative clustering needs the dense {n}x{n} distance matrix, above "
                f"max_dense={self.max_dense} or the memory free; use HDBSCAN (method='hdbscan') or fewer points"
            )
        uniq = unique_rows(points.data)
        du = points.with_data(uniq.rows).pairwise(progress=self.progress).astype(np.float64)
        dist = du[np.ix_(uniq.inverse, uniq.inverse)]
        model = AgglomerativeClustering(n_clusters=self.n_clusters, metric="precomputed", linkage=self.linkage).fit(
            dist
        )
        self.labels_ = model.labels_.astype(np.int64)
        self.n_clusters_, self.n_unique_, self.route_, self.exact_ = self.n_clusters, len(uniq.rows), "dense", True
        return self
