import numpy as np
import pytest
import torch
from torch import nn

from polylens.lens.codes import SplineCodes, extract_codes, hard_code, pack_bits, soft_code, unpack_bits
from polylens.models.base import ModelAdapter


def _random_codes(n=7, sizes=(5, 70, 64), seed=0, soft=False):
    g = torch.Generator().manual_seed(seed)
    pre = {f"l{i}": torch.randn(n, s, generator=g) for i, s in enumerate(sizes)}
    return pre, SplineCodes.from_preactivations(
        pre, {k: "gelu" for k in pre}, soft=soft, provenance={"model": "toy", "input_ids": [str(i) for i in range(n)]}
    )


@pytest.mark.parametrize("units", [1, 63, 64, 65, 200])
def test_pack_unpack_round_trip(units):
    bits = np.random.default_rng(units).random((9, units)) > 0.5
    words = pack_bits(bits)
    assert words.dtype == np.uint64 and words.shape == (9, -(-units // 64))
    assert np.array_equal(unpack_bits(words, units), bits)


def test_layer_map_offsets_and_slicing():
    pre, codes = _random_codes()
    bits = codes.unpack()
    assert codes.n_units == 139 and [s.offset for s in codes.layers] == [0, 5, 75]
    for name, z in pre.items():
        assert np.array_equal(codes.layer(name).unpack(), (z > 0).numpy())
    both = codes.layer(["l2", "l0"])
    assert np.array_equal(both.unpack(), np.concatenate([bits[:, 75:], bits[:, :5]], axis=1))
    with pytest.raises(ValueError, match="l0, l1, l2"):
        codes.layer("nope")


def test_hamming_matches_brute_force():
    _, a = _random_codes(seed=1)
    _, b = _random_codes(seed=2)
    ua, ub = a.unpack(), b.unpack()
    assert np.array_equal(a.hamming(b), (ua != ub).sum(axis=1))
    brute = (ua[:, None, :] != ub[None, :, :]).sum(axis=2)
    assert np.array_equal(a.hamming_matrix(b), brute)
    assert np.array_equal(a.consecutive_hamming(), (ua[1:] != ua[:-1]).sum(axis=1))
    assert np.all(np.diag(a.hamming_matrix()) == 0)


def test_popcount_fallback_for_numpy_1(monkeypatch):
    from polylens.clustering.hamming import popcount_rows

    words = pack_bits(np.random.default_rng(3).random((5, 150)) > 0.3)
    fast = popcount_rows(words)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert np.array_equal(popcount_rows(words), unpack_bits(words, 150).sum(axis=1))
    assert np.array_equal(fast, unpack_bits(words, 150).sum(axis=1))


def test_save_load_round_trip(tmp_path):
    _, codes = _random_codes(soft=True)
    path = tmp_path / "c.npz"
    codes.save(str(path))
    back = SplineCodes.load(str(path))
    assert np.array_equal(back.words, codes.words) and back.n_units == codes.n_units
    assert back.layers == codes.layers and back.provenance == codes.provenance
    assert np.array_equal(back.soft, codes.soft)
    assert np.array_equal(back.unpack(), codes.unpack())
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a polylens spline-code file"):
        SplineCodes.load(str(tmp_path / "bad.npz"))


@pytest.mark.parametrize(
    "kind, act", [("gelu", nn.GELU()), ("gelu_tanh", nn.GELU(approximate="tanh")), ("silu", nn.SiLU())]
)
def test_hard_code_of_smooth_preacts_equals_post_activation_positive(kind, act):
    z = torch.randn(1000) * 3
    z[:5] = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-3])
    assert torch.equal(hard_code(z), act(z) > 0)
    p = soft_code(z, kind)
    away = z.abs() > 1e-3
    assert torch.equal((p > 0.5)[away], (z > 0)[away])
    # The soft code is the factor in act(z) = z * p(z).
    assert torch.allclose(act(z), z * p, atol=1e-5)


def test_soft_code_tanh_form_differs_from_erf_form():
    z = torch.linspace(-3, 3, 101)
    assert not torch.allclose(soft_code(z, "gelu"), soft_code(z, "gelu_tanh"), atol=1e-6)
    assert torch.allclose(soft_code(z, "gelu"), soft_code(z, "gelu_tanh"), atol=1e-3)
    with pytest.raises(ValueError, match="unknown activation kind"):
        soft_code(z, "tanh")


def test_extract_codes_equals_capture_and_expected_hamming():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 30), nn.GELU(), nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 2))
    adapter = ModelAdapter("mlp", net.eval(), {"0": "gelu", "2": "relu"}, ["0", "1", "2", "3"], prepare=torch.as_tensor)
    x = torch.randn(11, 4)
    codes = extract_codes(adapter, x, soft=True, batch_size=4)
    with torch.no_grad():
        h0 = net[0](x)
        h2 = net[2](net[1](h0))
    assert np.array_equal(codes.unpack(), torch.cat([net[1](h0) > 0, h2 > 0], 1).numpy())
    assert codes.provenance["layers"] == ["0", "2"] and len(codes.provenance["input_ids"]) == 11
    one = codes.rows(slice(0, 1))
    d = codes.expected_hamming(one)
    assert d.shape == (11,) and d[0] < codes.n_units / 4
    with pytest.raises(ValueError, match="available layers: 0, 2"):
        extract_codes(adapter, x, "9")


def test_codes_packed_batch_by_batch_equal_one_batch(digits):
    x = digits.default_inputs(10)
    whole = extract_codes(digits, x, ["conv2", "fc1"], soft=True, batch_size=64)
    parts = extract_codes(digits, x, ["conv2", "fc1"], soft=True, batch_size=3)
    assert np.array_equal(whole.words, parts.words) and np.array_equal(whole.soft, parts.soft)
    assert whole.provenance == parts.provenance and len(parts) == 10


def test_summary_counts_distinct_codes_and_bits_on():
    pre, codes = _random_codes(n=9)
    repeated = codes.rows([0, 1, 0, 2, 1, 0, 3])
    info = repeated.summary()
    bits = repeated.unpack()
    assert info["n_inputs"] == 7 and info["n_units"] == 139 and info["model"] == "toy"
    assert info["distinct_codes"] == repeated.n_distinct() == len({tuple(row) for row in bits.tolist()}) == 4
    assert [layer["name"] for layer in info["layers"]] == ["l0", "l1", "l2"]
    assert info["layers"][1]["units"] == 70
    assert info["layers"][1]["fraction_on"] == pytest.approx(bits[:, 5:75].mean())
