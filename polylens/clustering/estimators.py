"""Clustering spline codes (Hamming) and activations (Euclidean, cosine) in scikit-learn's contract.

``__init__`` stores parameters; ``fit(X)`` returns self with ``labels_`` (−1 noise); ``fit_predict``;
deterministic given ``random_state``. ``X`` is a ``SplineCodes``, packed uint64 words, a 0/1 or bool
array ``[n, n_units]`` (packed here), or float activations ``[n, d]`` (``metric`` euclidean/cosine).
Repeated points are collapsed once with counts and the labels expanded back.

- ``HDBSCAN``: the mutual-reachability minimum spanning tree is built here (exactly, from the full
  distance matrix of the distinct points, up to ``max_dense`` of them; beyond that from a k-NN
  graph, exact or faiss HNSW), and each repeated point joins its copy at its core distance, so the
  tree spans all n points as HDBSCAN on the expanded set would build it; the hierarchy, the
  condensed tree and the cluster selection are fast_hdbscan's (``clusters_from_spanning_tree``). ``sample=N`` fits a seeded sample and gives every other point the
  label HDBSCAN's own prediction rule gives (``predict``: the approximate_predict rule of the
  hdbscan package: mutual reachability to the nearest fitted neighbours, then up the condensed
  tree; noise stays noise).
- ``KMedoids``: alternating k-medoids (k-medoids++ seeding) under the points' metric.
- ``Agglomerative``: scikit-learn's ``AgglomerativeClustering`` on the precomputed matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from polylens.clustering.hamming import Unique, unique_rows
from polylens.clustering.neighbors import Points
from polylens.memory import available_memory

DENSE_MEMORY_SHARE = 0.5  # a dense distance matrix may take at most this share of available memory


def as_points(X, metric: str | None = None) -> Points:
    """``X`` as ``Points``: codes (SplineCodes, uint64 words, 0/1 or bool arrays) → Hamming;
    float arrays → ``metric`` (default euclidean)."""
    from polylens.lens.codes import SplineCodes, pack_bits

    if isinstance(X, Points):
        return X
    if isinstance(X, SplineCodes):
        return Points(X.words, "hamming")
    arr = np.asarray(X)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"points must be a non-empty 2-D array [n_points, n_units], got shape {arr.shape}")
    if np.iscomplexobj(arr):
        raise ValueError("points are complex-valued; give real activations or 0/1 codes")
    if arr.dtype == np.uint64:
        return Points(arr, "hamming")
    if arr.dtype == bool or (metric in (None, "hamming") and np.issubdtype(arr.dtype, np.integer)):
        if not np.isin(arr, (0, 1)).all():
            raise ValueError("integer codes must hold only 0 and 1 values (or pass packed uint64 words)")
        return Points(pack_bits(arr.astype(bool)), "hamming")
    if metric == "hamming":
        if not np.isin(arr, (0, 1)).all():
            raise ValueError("metric='hamming' needs 0/1 codes; these values are not all 0 or 1")
        return Points(pack_bits(arr.astype(bool)), "hamming")
    return Points(arr, metric or "euclidean")


def dense_fits(n: int, bytes_per: int = 4) -> bool:
    """Whether an ``n × n`` distance matrix (plus its working copy) fits the memory share."""
    return 2 * n * n * bytes_per <= DENSE_MEMORY_SHARE * available_memory()


class _Base:
    """What every clusterer here shares: parameters by keyword, get_params, fit_predict."""

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in self._param_names}

    def set_params(self, **params):
        for k, v in params.items():
            if k not in self._param_names:
                raise ValueError(f"unknown parameter {k!r}; parameters: {', '.join(self._param_names)}")
            setattr(self, k, v)
        return self

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_

    def _say(self, message: str) -> None:
        self.notes_.append(message)
        if self.verbose:
            import sys

            print(f"polylens: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# HDBSCAN


class HDBSCAN(_Base):
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

    _param_names = (
        "min_cluster_size",
        "min_samples",
        "metric",
        "max_dense",
        "knn",
        "knn_k",
        "sample",
        "cluster_selection_method",
        "allow_single_cluster",
        "dedup",
        "random_state",
        "progress",
        "verbose",
    )

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
        for name in ("min_cluster_size", "max_dense"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < (2 if name == "min_cluster_size" else 1):
                raise ValueError(f"{name}={v!r} must be an integer ≥ {2 if name == 'min_cluster_size' else 1}")
        ms = self.min_cluster_size if self.min_samples is None else self.min_samples
        if not isinstance(ms, (int, np.integer)) or ms < 1:
            raise ValueError(f"min_samples={self.min_samples!r} must be a positive integer")
        if self.knn not in ("auto", "exact", "hnsw"):
            raise ValueError(f"knn={self.knn!r} must be auto, exact or hnsw")
        if self.cluster_selection_method not in ("eom", "leaf"):
            raise ValueError(f"cluster_selection_method={self.cluster_selection_method!r} must be eom or leaf")
        if n < self.min_cluster_size:
            raise ValueError(
                f"{n} points is fewer than min_cluster_size={self.min_cluster_size}; give more points or a smaller --min-cluster-size"
            )
        if ms > n:
            raise ValueError(f"min_samples={ms} is more than the {n} points")
        if self.sample is not None and not (
            isinstance(self.sample, (int, np.integer)) and self.min_cluster_size <= self.sample
        ):
            raise ValueError(f"sample={self.sample!r} must be an integer ≥ min_cluster_size={self.min_cluster_size}")
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
                f"fitted on a sample of {self.sample} of {n} points (seed {self.random_state}); the other {n - self.sample} got HDBSCAN's prediction rule"
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
        from fast_hdbscan.hdbscan import clusters_from_spanning_tree

        if self.dedup:
            uniq = unique_rows(points.data)
        else:  # every point its own row (the reference the collapsed route must agree with)
            ident = np.arange(len(points))
            uniq = Unique(points.data, np.ones(len(points), np.int64), ident, ident)
        pts = _with_data(points, uniq.rows)
        counts = uniq.counts
        self.n_unique_ = nu = len(uniq.rows)
        if nu == 1:
            mst = np.zeros((0, 3))
            core = np.zeros(1)
            self.route_, self.exact_, self.knn_recall_ = "dense", True, None
        elif nu <= self.max_dense and dense_fits(nu):
            dist = pts.pairwise(progress=self.progress)
            core = _core_from_sorted(
                *_dense_sorted_neighbours(dist, min(self.min_samples_, nu)), counts, self.min_samples_
            )
            mst = _prim(dist, core)
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
                    f"HNSW k-NN graph (k={k}): recall {self.knn_recall_:.3f} against exact k-NN on {min(300, nu)} points"
                )
            # self at distance 0 first, then the others, for the weighted core distance
            d_all = np.concatenate([np.zeros((nu, 1), nbrs.distances.dtype), nbrs.distances], axis=1)
            i_all = np.concatenate([np.arange(nu)[:, None], nbrs.indices], axis=1)
            core = _core_from_sorted(d_all, i_all, counts, self.min_samples_)
            mst = _graph_mst(nbrs, core)
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
        if n > 1:
            labels, strengths, _, tree, _ = clusters_from_spanning_tree(
                edges,
                min_cluster_size=int(self.min_cluster_size),
                cluster_selection_method=self.cluster_selection_method,
                allow_single_cluster=self.allow_single_cluster,
            )
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
        if not hasattr(self, "_fitted"):
            raise ValueError("this HDBSCAN is not fitted yet; call fit first")
        points = as_points(X, self._fitted.metric if self._fitted.metric != "hamming" else None)
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


def _with_data(points: Points, data: np.ndarray) -> Points:
    out = Points.__new__(Points)
    out.data, out.metric = np.ascontiguousarray(data), points.metric
    return out


def _dense_sorted_neighbours(dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k smallest entries (self included, distance 0) in ascending order."""
    rows = []
    idx_rows = []
    step = max(1, 2**24 // max(1, dist.shape[1]))
    for s in range(0, len(dist), step):
        block = dist[s : s + step]
        part = (
            np.argpartition(block, k - 1, axis=1)[:, :k]
            if k < block.shape[1]
            else np.tile(np.arange(block.shape[1]), (len(block), 1))
        )
        vals = np.take_along_axis(block, part, axis=1)
        order = np.argsort(vals, axis=1, kind="stable")
        rows.append(np.take_along_axis(vals, order, axis=1))
        idx_rows.append(np.take_along_axis(part, order, axis=1))
    return np.concatenate(rows), np.concatenate(idx_rows)


def _core_from_sorted(dist: np.ndarray, idx: np.ndarray, counts: np.ndarray, min_samples: int) -> np.ndarray:
    """Core distance of each distinct point: the distance at which the count of points within it
    (its own copies included) reaches min_samples. ``dist``/``idx``: ascending neighbours, self first."""
    cum = np.cumsum(counts[np.maximum(idx, 0)] * (idx >= 0), axis=1)
    reached = cum >= min_samples
    pos = np.argmax(reached, axis=1)
    pos[~reached.any(axis=1)] = dist.shape[1] - 1  # fewer points than min_samples: the farthest seen
    return dist[np.arange(len(dist)), pos].astype(np.float64)


_PRIM: list[Callable] = []


def _prim(dist: np.ndarray, core: np.ndarray) -> np.ndarray:
    """Exact minimum spanning tree of mutual reachability max(d_ij, core_i, core_j): [n-1, 3] edges."""
    if not _PRIM:
        from numba import njit

        @njit(cache=True)
        def prim(d, core):
            n = d.shape[0]
            in_tree = np.zeros(n, dtype=np.bool_)
            best = np.full(n, np.inf)
            src = np.zeros(n, dtype=np.int64)
            edges = np.empty((n - 1, 3))
            cur = 0
            in_tree[0] = True
            for e in range(n - 1):
                cc = core[cur]
                nxt, nd = -1, np.inf
                for j in range(n):
                    if in_tree[j]:
                        continue
                    m = max(max(float(d[cur, j]), cc), core[j])
                    if m < best[j]:
                        best[j] = m
                        src[j] = cur
                    if best[j] < nd:
                        nd, nxt = best[j], j
                edges[e, 0], edges[e, 1], edges[e, 2] = src[nxt], nxt, nd
                in_tree[nxt] = True
                cur = nxt
            return edges

        _PRIM.append(prim)
    return _PRIM[0](dist, core.astype(np.float64))


def _graph_mst(nbrs, core: np.ndarray) -> np.ndarray:
    """MST of mutual reachability over a k-NN graph; components joined by infinite edges."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

    n, k = nbrs.indices.shape
    rows = np.repeat(np.arange(n), k)
    cols = nbrs.indices.ravel()
    ok = cols >= 0
    rows, cols = rows[ok], cols[ok]
    w = np.maximum(np.maximum(nbrs.distances.ravel()[ok].astype(np.float64), core[rows]), core[cols])
    w = np.maximum(w, 1e-300)  # a zero weight would vanish from the sparse matrix (distinct points: never)
    graph = coo_matrix((w, (rows, cols)), shape=(n, n)).tocsr()
    graph = graph.maximum(graph.T)  # mutual reachability is symmetric: the union of both directions
    tree = minimum_spanning_tree(graph).tocoo()
    edges = np.column_stack([tree.row, tree.col, tree.data]).astype(np.float64)
    n_comp, comp = connected_components(tree, directed=False)
    if n_comp > 1:
        reps = np.array([np.flatnonzero(comp == c)[0] for c in range(n_comp)])
        bridges = np.column_stack([reps[:-1], reps[1:], np.full(n_comp - 1, np.inf)])
        edges = np.vstack([edges, bridges])
    return edges


# ---------------------------------------------------------------------------------------------
# k-medoids and agglomerative


class KMedoids(_Base):
    """k-medoids: k-medoids++ seeding, then alternate (assign to the nearest medoid; move each
    medoid to the member with the least total distance to its cluster) until nothing changes.
    Members are weighted by their counts. In clusters above ``max_candidates`` members the new
    medoid is sought among a seeded sample of them plus the current one (the cost never rises)."""

    _param_names = ("n_clusters", "metric", "max_iter", "max_candidates", "random_state", "progress", "verbose")

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
        self.max_candidates, self.random_state, self.progress, self.verbose = (
            max_candidates,
            random_state,
            progress,
            verbose,
        )

    def fit(self, X, y=None):
        points = as_points(X, self.metric)
        self.notes_ = []
        uniq = unique_rows(points.data)
        pts, w = _with_data(points, uniq.rows), uniq.counts.astype(np.float64)
        k = self.n_clusters
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= len(pts):
            raise ValueError(f"n_clusters={k!r} must be between 1 and the {len(pts)} distinct points")
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

    def predict(self, X):
        points = as_points(X, self._medoids.metric if self._medoids.metric != "hamming" else None)
        return np.argmin(points.pairwise(self._medoids), axis=1).astype(np.int64)


class Agglomerative(_Base):
    """scikit-learn's ``AgglomerativeClustering`` (``linkage`` average, complete or single) on the
    precomputed distance matrix of all points (distances computed once per distinct point)."""

    _param_names = ("n_clusters", "metric", "linkage", "max_dense", "random_state", "progress", "verbose")

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
        if not isinstance(self.n_clusters, (int, np.integer)) or not 1 <= self.n_clusters <= n:
            raise ValueError(f"n_clusters={self.n_clusters!r} must be between 1 and the {n} points")
        if self.linkage not in ("average", "complete", "single"):
            raise ValueError(
                f"linkage={self.linkage!r} must be average, complete or single (ward needs Euclidean features)"
            )
        if n > self.max_dense or not dense_fits(n, 8):
            raise ValueError(
                f"agglomerative clustering needs the dense {n}x{n} matrix, above max_dense={self.max_dense} or the memory; "
                "use --method hdbscan, or --sample N"
            )
        uniq = unique_rows(points.data)
        du = _with_data(points, uniq.rows).pairwise(progress=self.progress).astype(np.float64)
        dist = du[np.ix_(uniq.inverse, uniq.inverse)]
        model = AgglomerativeClustering(n_clusters=self.n_clusters, metric="precomputed", linkage=self.linkage).fit(
            dist
        )
        self.labels_ = model.labels_.astype(np.int64)
        self.n_clusters_, self.n_unique_, self.route_, self.exact_ = self.n_clusters, len(uniq.rows), "dense", True
        return self


METHODS = {"hdbscan": HDBSCAN, "kmedoids": KMedoids, "agglomerative": Agglomerative}

__all__ = ["HDBSCAN", "KMedoids", "Agglomerative", "METHODS", "as_points"]
