"""HDBSCAN's hierarchy from a spanning tree, in plain Python and numpy: the route for small fits.

``clusters_from_spanning_tree(edges, ...)`` gives what fast_hdbscan's function of that name gives
for the options used here (no sample weights, no epsilon or persistence, ``max_cluster_size``
unbounded): the single-linkage tree of the edges sorted by (weight, first, second); the condensed
tree (a split counts when both sides hold ``min_cluster_size`` points; λ = 1 / distance, stored as
float32 as fast_hdbscan stores it); the selection (``eom``: excess of mass, ``leaf``: the leaves of
the cluster tree); each point's label (its nearest selected ancestor, noise where there is none)
and membership strength (min(λ, the cluster's largest λ of a point leaving it) / that λ).

It is a line-by-line port of fast_hdbscan's ``cluster_trees`` (BSD-2-Clause, Leland McInnes), with
its float32 arithmetic, so both give identical results (tests/test_cluster.py compares them). Why a
second one: importing fast_hdbscan imports scikit-learn and numba (about 1.5 s on an idle 2-core
machine before any work, more under load), which dominates a command on a few thousand points. Past
``SMALL_POINTS`` points the compiled one is faster and ``polylens.clustering.hdbscan`` uses it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

SMALL_POINTS = 50_000  # up to this many points (copies included) the hierarchy is built here


class CondensedTree(NamedTuple):
    """fast_hdbscan's condensed tree: one row a point or cluster leaving its parent cluster."""

    parent: np.ndarray  # int64
    child: np.ndarray  # int64
    lambda_val: np.ndarray  # float32
    child_size: np.ndarray  # float32


def clusters_from_spanning_tree(
    edges: np.ndarray,
    *,
    min_cluster_size: int = 10,
    cluster_selection_method: str = "eom",
    allow_single_cluster: bool = False,
) -> tuple[np.ndarray, np.ndarray, CondensedTree]:
    """``(labels int64 [n], strengths float32 [n], condensed tree)`` from ``edges`` ``[n − 1, 3]``
    (first, second, weight) of a spanning tree of n points."""
    n = len(edges) + 1
    order = np.lexsort((edges[:, 1], edges[:, 0], edges[:, 2]))
    linkage = _linkage(edges[order].tolist(), n)
    tree = _condense(linkage, n, min_cluster_size)
    clusters = tree.child_size > 1
    if cluster_selection_method == "eom":
        selected = _eom(tree, clusters, allow_single_cluster)
    elif cluster_selection_method == "leaf":
        parents = set(tree.parent[clusters].tolist())
        selected = sorted(c for c in tree.child[clusters].tolist() if c not in parents)
    else:
        raise ValueError(f"cluster_selection_method={cluster_selection_method!r} must be 'eom' or 'leaf'")
    labels = _labels(tree, selected, n)
    return labels, _strengths(tree, selected, labels), tree


def _linkage(sorted_edges: list, n: int) -> list[list[float]]:
    """Single linkage: row i merges components (larger id first), at the edge's weight, with the
    merged size; the merged component is node n + i."""
    parent = [-1] * (2 * n - 1)
    size = [1] * n + [0] * (n - 1)

    def find(node: int) -> int:
        relabel = node
        while parent[node] != -1 and parent[node] != node:
            node = parent[node]
        parent[node] = node
        while parent[relabel] != node:
            parent[relabel], relabel = node, parent[relabel]
        return node

    out = []
    for i, (left, right, delta) in enumerate(sorted_edges):
        a, b = find(int(left)), find(int(right))
        out.append([max(a, b), min(a, b), delta, size[a] + size[b]])
        size[n + i] = size[a] + size[b]
        parent[a] = parent[b] = n + i
    return out


def _bfs(linkage: list, root: int, n: int) -> list[int]:
    """The nodes under ``root``, level by level (left child before right)."""
    result, level = [], [root]
    while level:
        result.extend(level)
        level = [int(c) for node in level if node >= n for c in linkage[node - n][:2]]
    return result


def _condense(linkage: list, n: int, min_cluster_size: int) -> CondensedTree:
    root = 2 * (n - 1)
    relabel = [0] * (root + 1)
    relabel[root] = n
    next_label = n + 1
    ignore = bytearray(root + 1)
    parents, children, lambdas, sizes = [], [], [], []

    def add(parent: int, child: int, lam: float, size: float = 1.0) -> None:
        parents.append(parent)
        children.append(child)
        lambdas.append(lam)
        sizes.append(size)

    def eliminate(branch: int, parent: int, lam: float) -> None:
        if branch < n:
            add(parent, branch, lam)
            return
        for sub in _bfs(linkage, branch, n):
            if sub < n:
                add(parent, sub, lam)
            else:
                ignore[sub] = 1

    for node in _bfs(linkage, root, n):
        if node < n or ignore[node]:
            continue
        parent = relabel[node]
        left, right, d, _ = linkage[node - n]
        left, right = int(left), int(right)
        lam = 1.0 / d if d > 0.0 else np.inf
        left_count = float(np.float32(linkage[left - n][3])) if left >= n else 1.0
        right_count = float(np.float32(linkage[right - n][3])) if right >= n else 1.0
        if left < n and right_count >= min_cluster_size:
            relabel[right] = parent
            add(parent, left, lam)
        elif left_count < min_cluster_size and right_count >= min_cluster_size:
            relabel[right] = parent
            eliminate(left, parent, lam)
        elif left_count >= min_cluster_size and right_count < min_cluster_size:
            relabel[left] = parent
            eliminate(right, parent, lam)
        elif left_count < min_cluster_size and right_count < min_cluster_size:
            eliminate(left, parent, lam)
            eliminate(right, parent, lam)
        else:
            relabel[left] = next_label
            add(parent, next_label, lam, left_count)
            relabel[right] = next_label + 1
            add(parent, next_label + 1, lam, right_count)
            next_label += 2
    return CondensedTree(
        np.array(parents, dtype=np.int64),
        np.array(children, dtype=np.int64),
        np.array(lambdas, dtype=np.float32),
        np.array(sizes, dtype=np.float32),
    )


def _eom(tree: CondensedTree, clusters: np.ndarray, allow_single_cluster: bool) -> list[int]:
    """Excess of mass: bottom-up, a cluster is kept when its own stability is at least the sum its
    descendants' selection gives; a kept cluster drops every selection below it."""
    if not clusters.any():
        return []
    root = int(tree.parent[0])
    f32 = np.float32
    score = {root: f32(0.0)}  # fast_hdbscan sums in float32
    with np.errstate(all="ignore"):  # λ = inf (points at distance 0) gives inf − inf, as there
        for p, c, lam, size in zip(tree.parent.tolist(), tree.child.tolist(), tree.lambda_val, tree.child_size):
            if size > 1:
                score[c] = -lam * size
            score[p] = score[p] + lam * size
    c_parent, c_child = tree.parent[clusters].tolist(), tree.child[clusters].tolist()
    below: dict[int, list[int]] = {}
    for p, c in zip(c_parent, c_child):
        below.setdefault(p, []).append(c)
    if allow_single_cluster:
        tops = [root]
    elif len(score) > 1:
        tops = below.get(root, [])
    else:
        return []
    # post-order from the tops (children before parents): what each subtree's selection is worth
    order, stack = [], list(tops)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(below.get(node, []))
    worth, keeps = {}, {}
    for node in reversed(order):
        own = max(float(score[node]), 0.0)  # rounding can make a stability negative
        total = 0.0
        for c in below.get(node, []):
            total += worth[c]
        keeps[node] = not total > own
        worth[node] = own if keeps[node] else total
    selected, stack = [], list(tops)
    while stack:  # top-down: a kept node ends the search below it
        node = stack.pop()
        if keeps[node]:
            selected.append(node)
        else:
            stack.extend(below.get(node, []))
    return sorted(selected)


def _labels(tree: CondensedTree, selected: list[int], n: int) -> np.ndarray:
    """Each point's nearest selected ancestor, as a label 0..k−1 in cluster-id order; −1 for noise."""
    labels = np.full(n, -1, dtype=np.int64)
    if len(tree.parent) == 0 or not selected:
        return labels
    root = int(tree.parent.min())
    index = {c: i for i, c in enumerate(selected)}
    chosen = set(selected)
    top = {root: root}
    for p, c, lam in zip(tree.parent.tolist(), tree.child.tolist(), tree.lambda_val.tolist()):
        if c in chosen:
            top[c] = c
        elif not (c < n and lam == 0.0):  # a point at λ = 0 came over a bridge between components
            top[c] = top[p]
    for point in range(n):
        cluster = top.get(point, point)
        if cluster == point:
            continue
        if cluster == root:
            if len(selected) == 1 and root in index:  # allow_single_cluster chose the root
                max_lambda = tree.lambda_val[tree.parent == root].max()
                if tree.lambda_val[tree.child == point][0] >= max_lambda:
                    labels[point] = index[root]
        else:
            labels[point] = index[cluster]
    return labels


def _strengths(tree: CondensedTree, selected: list[int], labels: np.ndarray) -> np.ndarray:
    """min(λ, λ_max) / λ_max, λ_max the largest λ of a point leaving the point's cluster directly."""
    out = np.zeros(len(labels), dtype=np.float32)
    if len(tree.parent) == 0:
        return out
    deaths = dict.fromkeys(selected, 0.0)
    for p, lam, size in zip(tree.parent.tolist(), tree.lambda_val.tolist(), tree.child_size.tolist()):
        if p in deaths and size == 1:
            deaths[p] = max(deaths[p], lam)
    root = int(tree.parent.min())
    for point, lam in zip(tree.child.tolist(), tree.lambda_val.tolist()):
        if point >= root or labels[point] < 0:
            continue
        max_lambda = deaths[selected[labels[point]]]
        out[point] = 1.0 if max_lambda == 0.0 or not np.isfinite(lam) else min(lam, max_lambda) / max_lambda
    return out
