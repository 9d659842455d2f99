import numpy as np
import pytest

from polylens.clustering import hamming
from polylens.directions.toys import planted_codes
from polylens.lens.codes import SplineCodes, pack_bits

ROUTES = [r for r in ("popcount", "int8", "fp32", "faiss", "numpy") if r in hamming._available_routes()]


def _brute(a_bits, b_bits):
    return (a_bits[:, None, :] != b_bits[None, :, :]).sum(axis=2)


def _brute_knn(dist, k, exclude_self=False):
    key = dist.astype(np.int64) * dist.shape[1] + np.arange(dist.shape[1])
    if exclude_self:
        np.fill_diagonal(key, np.iinfo(np.int64).max)
    best = np.sort(key, axis=1)[:, :k]
    return best // dist.shape[1], best % dist.shape[1]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("units", [1, 7, 63, 64, 65, 131, 3072])
def test_pairwise_and_knn_equal_brute_force(route, units):
    rng = np.random.default_rng(units)
    a_bits, b_bits = rng.random((29, units)) < 0.5, rng.random((41, units)) < 0.3
    a, b = pack_bits(a_bits), pack_bits(b_bits)
    brute = _brute(a_bits, b_bits)
    assert np.array_equal(hamming.pairwise(a, b, route=route), brute)
    d, i = _brute_knn(brute, 5)
    got = hamming.knn(a, b, 5, route=route)
    assert np.array_equal(got.distances, d) and np.array_equal(got.indices, i)  # ties: lower index first
    d, i = _brute_knn(_brute(b_bits, b_bits), 4, exclude_self=True)
    got = hamming.knn(b, None, 4, exclude_self=True, route=route)
    assert np.array_equal(got.distances, d) and np.array_equal(got.indices, i)


def test_knn_in_blocks_equals_one_block(monkeypatch):
    bits, _ = planted_codes(600, 4, 200, seed=1)
    words = pack_bits(bits)
    whole = hamming.knn(words, None, 7, exclude_self=True, route="numpy")
    monkeypatch.setattr(hamming, "_block_rows", lambda n_cols, budget=0: 64)
    for route in ROUTES:
        part = hamming.knn(words, None, 7, exclude_self=True, route=route)
        assert np.array_equal(part.indices, whole.indices), route


@pytest.mark.parametrize("n_words", [1, 3, 48])
def test_the_chosen_route_exists_and_auto_gives_brute_force(n_words):
    route = hamming.choose_route(n_words)
    assert route in hamming._available_routes()
    rng = np.random.default_rng(n_words)
    a_bits, b_bits = rng.random((37, 64 * n_words)) < 0.5, rng.random((23, 64 * n_words)) < 0.5
    brute = _brute(a_bits, b_bits)
    assert np.array_equal(hamming.pairwise(pack_bits(a_bits), pack_bits(b_bits), route="auto"), brute)
    assert np.array_equal(hamming.pairwise(pack_bits(a_bits), pack_bits(b_bits), route=route), brute)
    with pytest.raises(ValueError, match="route='nope' is not available here"):
        hamming.pairwise(pack_bits(a_bits), route="nope")


def test_different_widths_and_bad_k_are_refused():
    a, b = pack_bits(np.ones((3, 70), bool)), pack_bits(np.ones((3, 200), bool))
    with pytest.raises(ValueError, match="different widths"):
        hamming.pairwise(a, b)
    with pytest.raises(ValueError, match="k=3 must be between 1 and the 2"):
        hamming.knn(a, None, 3, exclude_self=True)
    with pytest.raises(ValueError, match="packed uint64"):
        hamming.pairwise(np.ones((3, 2), np.int64))


def test_hnsw_recall_is_measured_against_exact():
    bits, _ = planted_codes(3000, 10, 3072, flip=0.05, seed=2)
    words = pack_bits(bits)
    approx = hamming.hnsw_knn(words, 10)
    recall = hamming.knn_recall(words, approx, n_queries=200)
    assert recall >= 0.9
    # the recall measure itself: an exact result scores 1, a scrambled one far less
    exact = hamming.knn(words, None, 10, exclude_self=True)
    assert hamming.knn_recall(words, exact, n_queries=200) == 1.0
    wrong = hamming.Neighbors(np.full_like(exact.distances, 3072), (exact.indices + 1500) % 3000)
    assert hamming.knn_recall(words, wrong, n_queries=200) < 0.2


def test_soft_distances_equal_brute_force():
    rng = np.random.default_rng(0)
    p, q = rng.random((6, 33)), rng.random((4, 33))
    brute_e = np.array([[np.sum(x * (1 - y) + y * (1 - x)) for y in q] for x in p])
    brute_l1 = np.array([[np.abs(x - y).sum() for y in q] for x in p])
    assert np.allclose(hamming.expected_hamming(p, q), brute_e)
    assert np.allclose(hamming.l1(p, q), brute_l1)
    hard = (p > 0.5).astype(float)  # on 0/1 codes both equal the Hamming distance
    assert np.allclose(hamming.expected_hamming(hard), _brute(hard > 0.5, hard > 0.5))


def test_unique_rows_round_trip():
    rng = np.random.default_rng(3)
    base = pack_bits(rng.random((5, 90)) < 0.5)
    rows = base[rng.integers(0, 5, 40)]
    u = hamming.unique_rows(rows)
    assert np.array_equal(u.rows[u.inverse], rows)
    assert u.counts.sum() == 40 and len(u.rows) == len({r.tobytes() for r in rows})
    assert np.array_equal(rows[u.first], u.rows) and np.all(np.diff(u.first) > 0)


def test_spline_codes_hamming_matrix_uses_the_kernel():
    import torch

    bits = np.random.default_rng(4).random((12, 150)) < 0.5
    codes = SplineCodes.from_preactivations({"l": torch.from_numpy(bits.astype(np.float32) - 0.5)})
    assert np.array_equal(codes.hamming_matrix(), _brute(bits, bits))
