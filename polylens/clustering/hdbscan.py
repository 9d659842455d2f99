"""HDBSCAN under Hamming distance (spline codes) or Euclidean/cosine distance (activations).

The mutual-reachability minimum spanning tree is built here (``polylens.clustering.mst``): exactly,
from the full distance matrix of the distinct points, up to ``max_dense`` of them; beyond that from
a k-NN graph, exact or faiss HNSW. Each repeated point joins its copy at its core distance, so the
tree spans all n points as HDBSCAN on the expanded set would build it; the hierarchy, the condensed
tree and the cluster selection are fast_hdbscan's (``clusters_from_spanning_tree``; up to
``hierarchy.SMALL_POINTS`` points its port in ``polylens.clustering.hierarchy``, which starts without
importing scikit-learn or numba, and gives the same result). ``sample=N``
fits a seeded sample and gives every other point the label HDBSCAN's own prediction rule gives
(``predict``: the approximate_predict rule of the hdbscan package: mutual reachability to the
nearest fitted neighbours, then up the condensed tree; noise stays noise).
"""

from __future__ import annotations

import math

import numpy as np

from polylens.clustering import hierarchy
from polylens.clustering.base import ClustererBase, as_points, dense_fits, metric_of
from polylens.clustering.hamming import Unique, unique_rows
from polylens.clustering.mst import core_distances, dense_sorted_neighbours, knn_graph_mst, prim_mst
from polylens.clustering.neighbors import Points
from polylens.validation import check_choice, check_int


class HDBSCAN(ClustererBase):
    """HDBSCAN under Hamming (codes) or Euclidean/cosine (activations) distance.

    min_cluster_size: smallest cluster (counting repeated points); min_samples: neighbours that
    make a core point, the point itself included (default min_cluster_size, as scikit-learn).
    max_dense: up to this many distinct points the exact dense route; beyond, a k-NN graph with
    ``knn`` = ``exact`` | ``hnsw`` | ``auto`` (exact up to 100,000 distinct points) and ``knn_k``
    neighbours a point (default max(2·min_samples, 16)). dedup: collapse repeated points (False
    treats every point as distinct: the same result, computed on all of them). sample: fit on this many points drawn
    with ``random_state``, predict the rest.

    After ``fit``: ``labels_``, ``probabilities_`` [n]; ``route_`` (``dense``, ``knn-exact``,
    ``knn-hnsw``, each with ``+assign`` after sampling); ``exact_`` (True only for the dense route
    without sampling); ``knn_recall_`` (HNSW's measured recall, else None); ``n_unique_``;
    ``notes_`` (what was decided and why); ``condensed_tree_`` (fast_hdbscan's, over the fitted
    distinct points).
    """

    def __init__(
        self,
        min_cluster_size: int = 10,
        min_samples: int | None = None,
        *,
        metric: str | None = None,
        max_dense: int = 20_000,
        knn: str = "auto",
        knn_k: int | None = None,
        sample: int | None = None,
        cluster_selection_method: str = "eom",
        allow_single_cluster: bool = False,
        dedup: bool = True,
        random_state: int = 0,
        progress: bool = False,
        verbose: bool = False,
    ):
        self.min_cluster_size, self.min_samples, self.metric = min_cluster_size, min_samples, metric
        self.max_dense, self.knn, self.knn_k, self.sample = max_dense, knn, knn_k, sample
        self.cluster_selection_method, self.allow_single_cluster = cluster_selection_method, allow_single_cluster
        self.dedup = dedup
        self.random_state, self.progress, self.verbose = random_state, progress, verbose

    def _check(self, n: int) -> int:
        """The parameters checked against ``n`` points; returns min_samples resolved."""
        mcs = check_int("min_cluster_size", self.min_cluster_size, low=2)
        check_int("max_dense", self.max_dense, low=1)
        if self.knn_k is not None:
            check_int("knn_k", self.knn_k, low=1)
        ms = mcs if self.min_samples is None else check_int("min_samples", self.min_samples, low=1)
        check_choice("knn", self.knn, ("auto", "exact", "hnsw"))
        check_choice("cluster_selection_method", self.cluster_selection_method, ("eom", "leaf"))
        if n < mcs:
            raise ValueError(
                f"{n} points is fewer than min_cluster_size={mcs}; give more points or a smaller min_cluster_size"
            )
        if ms > n:
            raise ValueError(f"min_samples={ms} must be at most the {n} points")
        if self.sample is not None:
            check_int("sample", self.sample, low=mcs)
        return int(ms)

    def fit(self, X, y=None):
        points = as_points(X, self.metric)
        n = len(points)
        min_samples = self._check(n)
        self.notes_: list[str] = []
        self.min_samples_ = min_samples
        if self.sample is not None and self.sample < n:
            rng = np.random.default_rng(self.random_state)
            fit_rows = np.sort(rng.choice(n, size=self.sample, replace=False))
            self._fit_points(points.take(fit_rows))
            rest = np.setdiff1d(np.arange(n), fit_rows)
            labels, probs = np.empty(n, dtype=np.int64), np.empty(n)
            labels[rest], probs[rest] = self.predict(points.take(rest), return_probabilities=True)
            labels[fit_rows], probs[fit_rows] = self._fit_labels, self._fit_probs
            self.route_ += "+assign"
            self.exact_ = False
            self.sample_indices_ = fit_rows
            self._say(
                f"fitted on a sample of {self.sample} of {n} points (seed {self.random_state}); "
                f"the other {n - self.sample} got HDBSCAN's prediction rule"
            )
        else:
            self._fit_points(points)
            labels, probs = self._fit_labels, self._fit_probs
            self.sample_indices_ = None
        self.labels_, self.probabilities_ = labels, probs
        self.n_clusters_ = int(labels.max() + 1) if len(labels) else 0
        return self

    # -- the fit on one set of points -----------------------------------------------------

    def _fit_points(self, points: Points) -> None:
        if self.dedup:
            uniq = unique_rows(points.data)
        else:  # every point its own row (the reference the collapsed route must agree with)
            ident = np.arange(len(points))
            uniq = Unique(points.data, np.ones(len(points), np.int64), ident, ident)
        pts = points.with_data(uniq.rows)
        counts = uniq.counts
        self.n_unique_ = nu = len(uniq.rows)
        if nu == 1:
            mst = np.zeros((0, 3))
            core = np.zeros(1)
            self.route_, self.exact_, self.knn_recall_ = "dense", True, None
        elif nu <= self.max_dense and dense_fits(nu):
            dist = pts.pairwise(progress=self.progress)
            core = core_distances(*dense_sorted_neighbours(dist, min(self.min_samples_, nu)), counts, self.min_samples_)
            mst = prim_mst(dist, core)
            del dist
            self.route_, self.exact_, self.knn_recall_ = "dense", True, None
        else:
            if nu <= self.max_dense:
                self._say(f"a dense {nu}x{nu} distance matrix would not fit in memory; using a k-NN graph")
            method = self.knn if self.knn != "auto" else ("exact" if nu <= 100_000 else "hnsw")
            k = min(nu - 1, self.knn_k or max(2 * self.min_samples_, 16))
            nbrs = pts.knn(k, method=method, seed=self.random_state, progress=self.progress)
            self.knn_recall_ = None
            if method == "hnsw" and pts.metric == "hamming":
                from polylens.clustering.hamming import knn_recall

                self.knn_recall_ = knn_recall(pts.data, nbrs, n_queries=min(300, nu), seed=self.random_state)
                self._say(
                    f"HNSW k-NN graph (k={k}): recall {self.knn_recall_:.3f} "
                    f"against exact k-NN on {min(300, nu)} points"
                )
            # self at distance 0 first, then the others, for the weighted core distance
            d_all = np.concatenate([np.zeros((nu, 1), nbrs.distances.dtype), nbrs.distances], axis=1)
            i_all = np.concatenate([np.arange(nu)[:, None], nbrs.indices], axis=1)
            core = core_distances(d_all, i_all, counts, self.min_samples_)
            mst = knn_graph_mst(nbrs, core)
            self.route_, self.exact_ = f"knn-{method}", False
        # Every copy of a distinct point joins it at that point's core distance (mutual
        # reachability between identical points), below any edge to another point: so the
        # distinct points' tree plus these edges is the spanning tree of all n points, exactly.
        n, rep = len(uniq.inverse), uniq.first
        copies = np.flatnonzero(rep[uniq.inverse] != np.arange(n))
        edges = np.vstack(
            [
                np.column_stack([rep[mst[:, 0].astype(np.int64)], rep[mst[:, 1].astype(np.int64)], mst[:, 2]]),
                np.column_stack([rep[uniq.inverse[copies]], copies, core[uniq.inverse[copies]]]),
            ]
        ).astype(np.float64)
        options = dict(
            min_cluster_size=int(self.min_cluster_size),
            cluster_selection_method=self.cluster_selection_method,
            allow_single_cluster=self.allow_single_cluster,
        )
        if 1 < n <= hierarchy.SMALL_POINTS:
            labels, strengths, tree = hierarchy.clusters_from_spanning_tree(edges, **options)
        elif n > 1:
            from fast_hdbscan.hdbscan import clusters_from_spanning_tree

            labels, strengths, _, tree, _ = clusters_from_spanning_tree(edges, **options)
        else:
            labels, strengths, tree = np.full(1, -1), np.zeros(1), None
        self.condensed_tree_ = tree
        self._fitted, self._core, self._counts, self._rep = pts, core, counts, rep
        self._fit_labels = np.asarray(labels, dtype=np.int64)
        self._fit_probs = np.asarray(strengths, dtype=np.float64)
        self._maps = None

    def _prediction_maps(self) -> None:
        """cluster id → label (sub-clusters included) and → max λ, as hdbscan's PredictionData."""
        tree, labels = self.condensed_tree_, self._fit_labels
        self._cluster_map, self._max_lambda, self._parent_of, self._point_row = {}, {}, {}, {}
        self._maps = True
        if tree is None or len(tree.parent) == 0:
            return
        parent, child, lam = (
            np.asarray(tree.parent),
            np.asarray(tree.child),
            np.asarray(tree.lambda_val, dtype=np.float64),
        )
        n = len(labels)
        is_point = child < n
        point_parent = np.full(n, -1, dtype=np.int64)
        point_lambda = np.zeros(n)
        point_parent[child[is_point]], point_lambda[child[is_point]] = parent[is_point], lam[is_point]
        self._point_row = (point_parent, point_lambda)
        self._parent_of = {
            int(c): (int(p), float(v)) for p, c, v in zip(parent[~is_point], child[~is_point], lam[~is_point])
        }
        max_lambda: dict[int, float] = {}
        for p, v in zip(parent.tolist(), lam.tolist()):
            max_lambda[p] = max(max_lambda.get(p, 0.0), v)
        children: dict[int, list[int]] = {}
        for c, (p, _) in self._parent_of.items():
            children.setdefault(p, []).append(c)
        # the selected cluster of each label: the lowest common ancestor of its points' clusters
        for lab in range(int(labels.max()) + 1 if len(labels) else 0):
            nodes = set(np.unique(point_parent[labels == lab]).tolist())
            chains = [self._ancestors(v) for v in nodes]
            common = set(chains[0]).intersection(*chains[1:])
            selected = next(v for v in chains[0] if v in common)
            stack = [selected]
            while stack:
                c = stack.pop()
                self._cluster_map[c] = lab
                self._max_lambda[c] = max_lambda.get(selected, 0.0)
                stack.extend(children.get(c, []))

    def _ancestors(self, node: int) -> list[int]:
        chain = [node]
        while chain[-1] in self._parent_of:
            chain.append(self._parent_of[chain[-1]][0])
        return chain

    def predict(self, X, *, return_probabilities: bool = False, k: int | None = None):
        """Labels of new points by HDBSCAN's prediction rule (hdbscan's ``approximate_predict``).

        For each point: its nearest fitted points (2·min_samples distinct ones); its core distance
        (where, counting itself, min_samples points are reached); the fitted neighbour with the
        smallest mutual-reachability distance; λ = 1 / that distance; from the neighbour's place
        in the condensed tree, up while the cluster's λ ≥ the point's λ; the label of the cluster
        reached (−1 if none), probability min(λ, λ_max) / λ_max.
        """
        self._check_fitted("_fitted")
        points = as_points(X, metric_of(self._fitted))
        if points.metric != self._fitted.metric or points.data.shape[1] != self._fitted.data.shape[1]:
            raise ValueError(
                f"points to predict ({points.metric}, width {points.data.shape[1]}) differ from the fitted ones "
                f"({self._fitted.metric}, width {self._fitted.data.shape[1]})"
            )
        ms = self.min_samples_
        kk = min(len(self._fitted), k or 2 * ms)
        method = "hnsw" if self.route_.startswith("knn-hnsw") or self.knn == "hnsw" else "exact"
        nbrs = points.knn_to(self._fitted, kk, method=method, progress=self.progress)
        labels = np.full(len(points), -1, dtype=np.int64)
        probs = np.zeros(len(points))
        if self._maps is None:
            self._prediction_maps()
        if not self._cluster_map:
            return (labels, probs) if return_probabilities else labels
        d = nbrs.distances.astype(np.float64)
        idx = np.maximum(nbrs.indices, 0)
        # the new point's core distance as the fitted points' (scikit-learn's convention, the
        # point itself counted once): where 1 + the count of fitted points within it reaches
        # min_samples. (hdbscan's own code counts min_samples without the point in the fit and
        # takes neighbour number min_samples, 0-based, here: the same rule shifted by one.)
        cum = 1 + np.cumsum(self._counts[idx], axis=1)
        reach = np.argmax(cum >= ms, axis=1)
        core_pt = np.where(cum[:, -1] >= ms, d[np.arange(len(d)), reach], d[:, -1])
        core_pt[:] = 0.0 if ms <= 1 else core_pt
        mr = np.maximum(np.maximum(d, self._core[idx]), core_pt[:, None])
        mr[nbrs.indices < 0] = np.inf
        best = np.argmin(mr, axis=1)
        best_mr = mr[np.arange(len(mr)), best]
        for i in range(len(points)):
            nbr = int(self._rep[idx[i, best[i]]])  # the fitted point standing for that distinct code
            lam = math.inf if best_mr[i] == 0 else 1.0 / best_mr[i]
            cluster, row_lambda = int(self._point_row[0][nbr]), float(self._point_row[1][nbr])
            if cluster < 0:
                continue
            if row_lambda > lam:
                while cluster in self._parent_of and self._parent_of[cluster][1] >= lam:
                    cluster = self._parent_of[cluster][0]
            lab = self._cluster_map.get(cluster, -1)
            labels[i] = lab
            if lab >= 0:
                mx = self._max_lambda[cluster]
                probs[i] = min(mx, lam) / mx if mx > 0 and math.isfinite(mx) else 1.0
        return (labels, probs) if return_probabilities else labels
