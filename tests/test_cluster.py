import warnings

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score as ari

from polylens.clustering.agglomerative import Agglomerative
from polylens.clustering.hdbscan import HDBSCAN
from polylens.clustering.medoids import KMedoids
from polylens.directions.toys import planted_codes
from polylens.lens.codes import pack_bits


def near_prototypes(n, n_clusters, n_units, *, differ, flip, seed):
    """Prototypes that share one random code but each flip their own ``differ`` bits of it (so any
    two are 2·differ bits apart, spread over every word), members their prototype with each bit
    flipped with probability ``flip``: clusters overlap in distance, unlike random prototypes."""
    rng = np.random.default_rng(seed)
    base = rng.random(n_units) < 0.5
    own = rng.permutation(n_units)[: n_clusters * differ].reshape(n_clusters, differ)
    protos = np.repeat(base[None], n_clusters, axis=0)
    for c in range(n_clusters):
        protos[c, own[c]] ^= True
    truth = rng.integers(0, n_clusters, n)
    return protos[truth] ^ (rng.random((n, n_units)) < flip), truth


def _hamming(bits):
    return (bits[:, None, :] != bits[None, :, :]).sum(axis=2)


@pytest.fixture(scope="module")
def planted():
    # prototypes 24 bits apart, members about 6 from theirs: the farthest pair within a cluster is
    # farther apart than the nearest pair across two
    bits, truth = near_prototypes(1500, 6, 300, differ=12, flip=0.02, seed=0)
    dist, same = _hamming(bits), truth[:, None] == truth[None, :]
    assert dist[~same].min() < dist[same].max()
    return bits, truth


@pytest.mark.parametrize(
    "make",
    [
        lambda: HDBSCAN(min_cluster_size=20),
        lambda: HDBSCAN(min_cluster_size=20, max_dense=100, knn="exact"),
        lambda: HDBSCAN(min_cluster_size=20, max_dense=100, knn="hnsw"),
        lambda: HDBSCAN(min_cluster_size=20, sample=400),
        lambda: Agglomerative(6),
    ],
    ids=["hdbscan-dense", "hdbscan-knn", "hdbscan-hnsw", "hdbscan-sample", "agglomerative"],
)
def test_planted_clusters_are_recovered(planted, make):
    bits, truth = planted
    model = make()
    assert model.fit(bits) is model
    assert ari(truth, model.labels_) >= 0.95
    again = make().fit_predict(bits)
    assert np.array_equal(again, model.labels_)  # deterministic given random_state


def test_kmedoids_lowest_cost_over_seeds_is_the_planted_partition(planted):
    # the alternation promises a local optimum only (a seed may put two medoids in one cluster);
    # the lowest cost found over seeds must be the planted clusters
    bits, truth = planted
    fits = [KMedoids(6, random_state=seed).fit(bits) for seed in range(8)]
    best = min(fits, key=lambda m: m.inertia_)
    assert ari(truth, best.labels_) >= 0.95
    dist = _hamming(bits)
    assert best.inertia_ == dist[best.medoid_indices_].min(axis=0).sum()


def _medoid_cost(dist, medoids):
    return dist[list(medoids)].min(axis=0).sum()


@pytest.mark.parametrize("space", ["codes", "euclidean"])
def test_kmedoids_against_brute_force_on_a_dozen_points(space):
    from itertools import combinations

    rng = np.random.default_rng(7)
    if space == "codes":
        x = rng.random((12, 40)) < 0.5
        dist = _hamming(x).astype(np.float64)
    else:
        x = rng.normal(size=(12, 3)).astype(np.float32)
        dist = np.linalg.norm(x[:, None].astype(np.float64) - x[None], axis=2)
    # one medoid: the alternation is exact, it is the point of least total distance
    one = KMedoids(1).fit(x)
    assert one.inertia_ == pytest.approx(dist.sum(axis=0).min(), rel=1e-5)
    # three: a local optimum, checked by brute force, never below the enumerated optimum
    best = min(_medoid_cost(dist, m) for m in combinations(range(12), 3))
    model = KMedoids(3).fit(x)
    med = model.medoid_indices_
    assert model.inertia_ == pytest.approx(_medoid_cost(dist, med), rel=1e-5) and model.inertia_ >= best - 1e-4
    assert np.array_equal(model.labels_, np.argmin(dist[:, med], axis=1))  # every point with its nearest medoid
    for c, m in enumerate(med):
        members = np.flatnonzero(model.labels_ == c)
        cost = dist[np.ix_(members, members)].sum(axis=1)
        assert cost[list(members).index(m)] == pytest.approx(cost.min(), rel=1e-5)  # the cluster's own 1-medoid
    # three groups far apart: the optimum is the groups' own medoids, and it is what is found
    groups = (np.arange(12) // 4)[:, None] * 50.0 + rng.normal(size=(12, 2))
    gdist = np.linalg.norm(groups[:, None] - groups[None], axis=2)
    found = KMedoids(3, metric="euclidean").fit(groups.astype(np.float32))
    optimum = min(_medoid_cost(gdist, m) for m in combinations(range(12), 3))
    assert found.inertia_ == pytest.approx(optimum, rel=1e-5)


def test_prim_tree_weighs_what_scipy_minimum_spanning_tree_weighs():
    from scipy.sparse.csgraph import minimum_spanning_tree

    from polylens.clustering.mst import prim_mst

    rng = np.random.default_rng(0)
    for n in (2, 3, 17, 60):
        a = rng.random((n, n)) + 0.01
        dist = np.triu(a, 1) + np.triu(a, 1).T
        for core in (np.zeros(n), rng.random(n)):
            mutual = np.maximum(np.maximum(dist, core[:, None]), core[None, :])
            np.fill_diagonal(mutual, 0)
            edges = prim_mst(dist, core)
            assert edges.shape == (n - 1, 3)
            assert edges[:, 2].sum() == pytest.approx(minimum_spanning_tree(mutual).sum(), rel=1e-12)
            # the edges are mutual-reachability edges and span every point
            assert np.allclose(edges[:, 2], mutual[edges[:, 0].astype(int), edges[:, 1].astype(int)])
            assert set(edges[:, :2].astype(int).ravel()) == set(range(n)) or n == 1


def test_knn_graph_route_equals_the_dense_route_when_k_covers_every_point():
    rng = np.random.default_rng(2)
    x = np.vstack([rng.normal(loc=6 * c, size=(70, 5)) for c in range(4)]).astype(np.float32)
    dense = HDBSCAN(10, metric="euclidean").fit(x)
    graph = HDBSCAN(10, metric="euclidean", max_dense=1, knn="exact", knn_k=len(x) - 1).fit(x)
    assert dense.route_ == "dense" and graph.route_ == "knn-exact"
    assert np.array_equal(dense.labels_, graph.labels_)
    assert np.allclose(dense.probabilities_, graph.probabilities_)
    bits, _ = near_prototypes(300, 4, 200, differ=10, flip=0.03, seed=4)
    codes_dense = HDBSCAN(10).fit(bits)
    codes_graph = HDBSCAN(10, max_dense=1, knn="exact", knn_k=len(bits) - 1).fit(bits)
    assert ari(codes_dense.labels_, codes_graph.labels_) == 1.0


def test_routes_say_what_they_are(planted):
    bits, _ = planted
    assert HDBSCAN(20).fit(bits).exact_ is True
    knn = HDBSCAN(20, max_dense=100, knn="hnsw").fit(bits)
    assert knn.exact_ is False and knn.route_ == "knn-hnsw" and 0.9 <= knn.knn_recall_ <= 1
    assert HDBSCAN(20, sample=400).fit(bits).route_ == "dense+assign"


def test_equals_scikit_learn_hdbscan_on_the_precomputed_matrix(planted):
    from sklearn.cluster import HDBSCAN as SkHDBSCAN

    bits, _ = planted
    dist = _hamming(bits).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ref = SkHDBSCAN(min_cluster_size=20, metric="precomputed").fit(dist).labels_
    assert ari(ref, HDBSCAN(20).fit(bits).labels_) == 1.0


def test_collapsed_duplicates_give_the_labels_of_the_expanded_set():
    rng = np.random.default_rng(1)
    base, _ = planted_codes(120, 4, 200, flip=0.08, seed=5)
    bits = base[rng.integers(0, 120, 1500)]  # about 12 copies of each code
    collapsed = HDBSCAN(15).fit(bits)
    assert collapsed.n_unique_ <= 120
    expanded = HDBSCAN(15, dedup=False).fit(bits)
    assert expanded.n_unique_ == 1500
    assert ari(collapsed.labels_, expanded.labels_) == 1.0
    # heavy duplicates: every code seen more than min_cluster_size times is a cluster of its own
    heavy = base[rng.integers(0, 8, 400)]
    labels = HDBSCAN(15).fit(heavy).labels_
    assert ari(HDBSCAN(15, dedup=False).fit(heavy).labels_, labels) == 1.0
    assert len(set(labels)) == len({r.tobytes() for r in heavy})


def test_sample_and_assign_agrees_with_the_whole_fit():
    bits, truth = planted_codes(4000, 8, 400, flip=0.06, seed=3)
    whole = HDBSCAN(25).fit(bits)
    part = HDBSCAN(25, sample=800, random_state=1).fit(bits)
    score = ari(whole.labels_, part.labels_)
    assert score >= 0.9, score
    assert len(part.sample_indices_) == 800


def test_prediction_rule_equals_hdbscan_approximate_predict():
    hdbscan = pytest.importorskip("hdbscan", reason="the hdbscan package (dev extra) is the reference for the rule")
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=8, size=(5, 4))
    truth = rng.integers(0, 5, 800)
    x = np.vstack([centres[truth] + rng.normal(size=(800, 4)), rng.uniform(-20, 20, size=(80, 4))])
    new = np.vstack(
        [centres[rng.integers(0, 5, 150)] + 1.5 * rng.normal(size=(150, 4)), rng.uniform(-25, 25, size=(150, 4))]
    )
    # hdbscan's min_samples leaves the point itself out; scikit-learn's (ours) counts it
    ref = hdbscan.HDBSCAN(min_cluster_size=15, min_samples=15, prediction_data=True).fit(x)
    ours = HDBSCAN(15, min_samples=16, metric="euclidean").fit(x.astype(np.float32))
    assert ari(ref.labels_, ours.labels_) == 1.0
    ref_labels, ref_prob = hdbscan.approximate_predict(ref, new)
    got, prob = ours.predict(new.astype(np.float32), return_probabilities=True)
    remap = {r: o for r, o in zip(ref.labels_, ours.labels_)}
    assert np.mean([remap.get(r, -1) == g for r, g in zip(ref_labels, got)]) >= 0.99
    assert (got == -1).sum() >= 50  # the scattered points stay noise
    assert np.corrcoef(prob, ref_prob)[0, 1] > 0.95
    # the fitted points get their own labels back
    assert np.array_equal(ours.predict(x[:200].astype(np.float32)), ours.labels_[:200])


def test_activations_euclidean_and_cosine():
    rng = np.random.default_rng(0)
    truth = np.arange(900) % 3
    x = rng.normal(size=(900, 16)).astype(np.float32) + 6 * np.eye(16)[truth]
    for metric in ("euclidean", "cosine"):
        for model in (HDBSCAN(20, metric=metric), HDBSCAN(20, metric=metric, max_dense=50), KMedoids(3, metric=metric)):
            got = model.fit_predict(x)
            kept = got >= 0  # Gaussian tails: HDBSCAN calls some points noise
            assert kept.mean() >= 0.8 and ari(truth[kept], got[kept]) >= 0.99, (metric, model)


def test_estimator_contract_and_bad_input(planted):
    bits, _ = planted
    model = HDBSCAN(min_cluster_size=12, sample=None)
    assert model.get_params()["min_cluster_size"] == 12 and not hasattr(model, "labels_")
    with pytest.raises(ValueError, match="not fitted"):
        model.predict(bits)
    with pytest.raises(ValueError, match="fewer than min_cluster_size=12"):
        model.fit(bits[:5])
    with pytest.raises(ValueError, match="only 0 and 1"):
        HDBSCAN(5).fit(np.full((20, 4), 2))
    with pytest.raises(ValueError, match="non-empty 2-D"):
        HDBSCAN(5).fit(np.zeros((0, 4)))
    fitted = HDBSCAN(20).fit(bits)
    with pytest.raises(ValueError, match="differ from the fitted"):
        fitted.predict(pack_bits(bits[:3, :100]))


@pytest.mark.parametrize("cls", [HDBSCAN, KMedoids, Agglomerative])
def test_every_clusterer_keeps_the_scikit_learn_contract(planted, cls):
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError

    bits, _ = planted
    model = cls(random_state=3, verbose=False)
    copy = clone(model)
    assert copy is not model and copy.get_params() == model.get_params()
    assert model.set_params(random_state=4) is model and model.get_params()["random_state"] == 4
    with pytest.raises(ValueError, match="unknown parameter 'nonsense'"):
        model.set_params(nonsense=1)
    for method in ("predict", "transform"):
        if hasattr(model, method):
            with pytest.raises(NotFittedError, match="not fitted yet"):
                getattr(model, method)(bits[:3])
    fitted = cls().fit(bits[:200])
    assert not hasattr(clone(fitted), "labels_")


def test_kmedoids_predict_and_transform_measure_to_the_medoids(planted):
    bits, _ = planted
    model = KMedoids(6).fit(bits)
    dist = _hamming(bits)[:, model.medoid_indices_]
    assert np.array_equal(model.transform(bits), dist)
    assert np.array_equal(model.predict(bits), model.labels_)


def test_cluster_layer_refuses_a_parameter_no_clusterer_has(planted):
    from polylens.clustering.analysis import cluster_layer
    from polylens.clustering.points import LayerPoints
    from polylens.lens.codes import LayerSlot, SplineCodes

    bits, _ = planted
    width = bits.shape[1]
    codes = SplineCodes(pack_bits(bits[:300]), width, (LayerSlot("codes", "relu", 0, width, (width,)),))
    points = LayerPoints("planted", "codes", codes, None)
    with pytest.raises(ValueError, match="unknown key 'min_cluster_sizes'.*accepted keys: .*min_cluster_size"):
        cluster_layer(points, on="codes", params={"min_cluster_sizes": 5})
    # every method's parameters at once, as the command passes them, are accepted
    params = {"min_cluster_size": 20, "n_clusters": 6, "max_dense": 1000, "random_state": 0, "verbose": False}
    for method in ("hdbscan", "kmedoids"):
        result, _ = cluster_layer(points, method=method, on="codes", params=params)
        assert result.on["codes"]["n_clusters"] >= 2
