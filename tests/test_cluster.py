import warnings

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score as ari

from polylens.clustering.agglomerative import Agglomerative
from polylens.clustering.hdbscan import HDBSCAN
from polylens.clustering.medoids import KMedoids
from polylens.directions.toys import planted_codes
from polylens.lens.codes import pack_bits


@pytest.fixture(scope="module")
def planted():
    return planted_codes(1500, 6, 300, flip=0.05, seed=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: HDBSCAN(min_cluster_size=20),
        lambda: HDBSCAN(min_cluster_size=20, max_dense=100, knn="exact"),
        lambda: HDBSCAN(min_cluster_size=20, max_dense=100, knn="hnsw"),
        lambda: HDBSCAN(min_cluster_size=20, sample=400),
        lambda: KMedoids(6),
        lambda: Agglomerative(6),
    ],
    ids=["hdbscan-dense", "hdbscan-knn", "hdbscan-hnsw", "hdbscan-sample", "kmedoids", "agglomerative"],
)
def test_planted_clusters_are_recovered(planted, make):
    bits, truth = planted
    model = make()
    assert model.fit(bits) is model
    assert ari(truth, model.labels_) >= 0.95
    again = make().fit_predict(bits)
    assert np.array_equal(again, model.labels_)  # deterministic given random_state


def test_routes_say_what_they_are(planted):
    bits, _ = planted
    assert HDBSCAN(20).fit(bits).exact_ is True
    knn = HDBSCAN(20, max_dense=100, knn="hnsw").fit(bits)
    assert knn.exact_ is False and knn.route_ == "knn-hnsw" and 0.9 <= knn.knn_recall_ <= 1
    assert HDBSCAN(20, sample=400).fit(bits).route_ == "dense+assign"


def test_equals_scikit_learn_hdbscan_on_the_precomputed_matrix(planted):
    from sklearn.cluster import HDBSCAN as SkHDBSCAN

    bits, _ = planted
    dist = (bits[:, None, :] != bits[None, :, :]).sum(axis=2).astype(np.float64)
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
