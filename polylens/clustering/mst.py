"""Minimum spanning trees of mutual reachability, the skeleton of HDBSCAN's hierarchy.

Mutual reachability between points i and j is ``max(d_ij, core_i, core_j)``, where a point's core
distance is the distance at which ``min_samples`` points (its own copies and itself included) are
within reach. ``prim_mst`` builds the exact tree from a full distance matrix (Prim's algorithm,
O(n²), no matrix of mutual reachabilities held); ``knn_graph_mst`` builds it over a k-NN graph
(scipy's ``minimum_spanning_tree``), exact when the graph holds every tree edge.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def dense_sorted_neighbours(dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
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


def core_distances(dist: np.ndarray, idx: np.ndarray, counts: np.ndarray, min_samples: int) -> np.ndarray:
    """Core distance of each distinct point: the distance at which the count of points within it
    (its own copies included) reaches min_samples. ``dist``/``idx``: ascending neighbours, self first."""
    cum = np.cumsum(counts[np.maximum(idx, 0)] * (idx >= 0), axis=1)
    reached = cum >= min_samples
    pos = np.argmax(reached, axis=1)
    pos[~reached.any(axis=1)] = dist.shape[1] - 1  # fewer points than min_samples: the farthest seen
    return dist[np.arange(len(dist)), pos].astype(np.float64)


_PRIM: list[Callable] = []
PRIM_NUMPY_MAX = 3000  # up to this many points Prim's loop runs in numpy: compiling (or loading) it costs more


def prim_mst(dist: np.ndarray, core: np.ndarray) -> np.ndarray:
    """Exact minimum spanning tree of mutual reachability max(d_ij, core_i, core_j): [n-1, 3] edges.

    Both loops (numpy up to ``PRIM_NUMPY_MAX`` points, numba beyond) take the same edges: the
    next point is the first of the least reach, a point's best link changes only when strictly
    shorter."""
    if len(dist) <= PRIM_NUMPY_MAX:
        return _prim_numpy(dist, core.astype(np.float64))
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


def _prim_numpy(dist: np.ndarray, core: np.ndarray) -> np.ndarray:
    """``prim_mst``'s loop with each step over all points in numpy (see there)."""
    n = dist.shape[0]
    in_tree = np.zeros(n, dtype=bool)
    best = np.full(n, np.inf)
    src = np.zeros(n, dtype=np.int64)
    edges = np.empty((max(n - 1, 0), 3))
    cur = 0
    in_tree[0] = True
    for e in range(n - 1):
        reach = np.maximum(np.maximum(dist[cur].astype(np.float64), core[cur]), core)
        closer = (reach < best) & ~in_tree
        best[closer] = reach[closer]
        src[closer] = cur
        nxt = int(np.argmin(np.where(in_tree, np.inf, best)))
        edges[e] = src[nxt], nxt, best[nxt]
        in_tree[nxt] = True
        cur = nxt
    return edges


def knn_graph_mst(nbrs, core: np.ndarray) -> np.ndarray:
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
