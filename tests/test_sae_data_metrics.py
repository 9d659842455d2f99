"""Synthetic generators and recovery metrics, against closed forms and planted answers."""

import math

import numpy as np
import pytest
import torch

from sae import metrics
from sae.synthetic import SharkeyConfig, SharkeyData, solve_scale


@pytest.mark.parametrize("correlated", [True, False])
def test_sharkey_expected_active_count_is_m_in_both_modes(correlated):
    data = SharkeyData(SharkeyConfig(n_features=128, d=32, m=5.0, correlated=correlated, seed=1))
    assert data.expected_active() == pytest.approx(5.0, abs=1e-6)
    codes = data.sample_codes(40_000, torch.Generator().manual_seed(0))
    l0 = (codes != 0).float().sum(1)
    # Standard error of the mean count is sd/√N ≈ 0.02; 0.1 is five of them.
    assert float(l0.mean()) == pytest.approx(5.0, abs=0.1)
    # Per-feature firing rates follow the geometric decay (closed form, not the sample).
    rates = (codes != 0).float().mean(0)
    p = data.firing_probabilities()
    assert torch.allclose(rates[:16], p[:16], atol=0.012)
    assert float(p[0] / p[50]) > 1.5  # decay is visible
    # Coefficients of active features are U[0, 1): mean 1/2, all in [0, 1).
    active = codes[codes != 0]
    assert float(active.max()) < 1 and float(active.mean()) == pytest.approx(0.5, abs=0.01)


def test_solve_scale_closed_form_when_no_probability_saturates():
    decay = 0.99 ** torch.arange(512, dtype=torch.float64)
    s = solve_scale(decay, 5.0)
    # E[min(1, s·λ^i·u)] = s·λ^i/2 while s·λ^i <= 1, so s = 2m / Σλ^i.
    assert s == pytest.approx(2 * 5.0 / float(decay.sum()), rel=1e-9)


def test_sharkey_copula_is_per_sample_and_fixed_per_dataset():
    cfg = SharkeyConfig(n_features=64, d=16, m=8.0, seed=3)
    data, same = SharkeyData(cfg), SharkeyData(cfg)
    assert torch.equal(data.chol, same.chol) and torch.equal(data.features, same.features)
    S = data.chol.double() @ data.chol.double().T
    off = S - torch.diag(S.diagonal())
    c = data.fire_scale.double()
    assert float(c.max()) <= 1  # then P(fire_i) = c_i·u_i exactly and the joint rate has a closed form
    N = 400_000
    fire = (data.sample_codes(N, torch.Generator().manual_seed(1)) != 0).double()
    for pair in (divmod(int(off.argmax()), 64), divmod(int(off.argmin()), 64)):
        i, j = pair
        rho = float(S[i, j])
        # u = Φ(z) with corr(z_i, z_j) = ρ per sample: E[u_i u_j] = 1/4 + asin(ρ/2)/(2π).
        expected = float(c[i] * c[j]) * (0.25 + math.asin(rho / 2) / (2 * math.pi))
        independent = float(c[i] * c[j]) * 0.25
        observed = float((fire[:, i] * fire[:, j]).mean())
        se = math.sqrt(expected / N)
        assert abs(rho) > 0.3
        assert abs(observed - expected) < 4 * se
        assert abs(observed - independent) > 4 * se  # the copula acts within a batch, per sample
    ind = SharkeyData(SharkeyConfig(n_features=64, d=16, m=8.0, seed=3, correlated=False))
    fire_ind = (ind.sample_codes(N, torch.Generator().manual_seed(1)) != 0).double()
    i, j = divmod(int(off.argmax()), 64)
    c = ind.fire_scale.double()
    assert abs(float((fire_ind[:, i] * fire_ind[:, j]).mean()) - float(c[i] * c[j]) / 4) < 4 * math.sqrt(
        float(c[i] * c[j]) / 4 / N
    )


def test_sharkey_features_unit_norm_and_sample_is_codes_times_features():
    data = SharkeyData(SharkeyConfig(n_features=32, d=8, m=3.0))
    assert torch.allclose(data.features.norm(dim=1), torch.ones(32))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.allclose(data.sample(50, g1), data.sample_codes(50, g2) @ data.features)


def test_bad_config():
    with pytest.raises(ValueError, match="m="):
        SharkeyConfig(n_features=10, m=10)


def _orthonormal(n, d, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, n)))
    return torch.tensor(q.T, dtype=torch.float32)


def test_metrics_on_a_permuted_sign_flipped_copy():
    T = _orthonormal(6, 12)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    signs = torch.tensor([1, -1, 1, -1, 1, 1.0]).unsqueeze(1)
    L = 2.5 * T[perm] * signs
    _, _, h = metrics.hungarian(T, L)
    assert h == pytest.approx(1.0, abs=1e-6)
    assert metrics.frac_recovered(T, L) == 1.0
    # Signed MMCS: the two flipped features' best cosine with the orthonormal rest is 0.
    assert metrics.mmcs_signed(T, L) == pytest.approx(4 / 6, abs=1e-6)
    assert metrics.mmcs_signed_learned(T, L, alive=torch.tensor([1, 0, 1, 0, 1, 1]).bool()) == pytest.approx(
        1.0, abs=1e-6
    )
    assert metrics.mean_l2_ratio(T, L) == pytest.approx(2.5, rel=1e-5)


def test_hungarian_is_one_to_one_where_mmcs_is_not():
    T = _orthonormal(4, 8)
    L = T[[0, 0, 0, 0]]  # four copies of one feature
    assert metrics.mmcs_signed_learned(T, L) == pytest.approx(1.0, abs=1e-6)
    assert metrics.mmcs_signed(T, L) == pytest.approx(0.25, abs=1e-6)
    assert metrics.hungarian(T, L)[2] == pytest.approx(0.25, abs=1e-6)


def test_mean_l2_ratio_from_activations_measures_shrinkage():
    T = _orthonormal(3, 5)
    codes = torch.rand(100, 3) * (torch.rand(100, 3) < 0.5)
    acts = 0.8 * codes[:, [2, 0, 1]]  # latents j = perm of features, 20% shrunk
    L = T[[2, 0, 1]]
    assert metrics.mean_l2_ratio(T, L, codes, acts) == pytest.approx(0.8, rel=1e-6)


def test_hungarian_counts_unmatched_features_as_zero():
    T = _orthonormal(6, 12)
    # Three exact latents for six features: three matched at 1, three left over at 0.
    assert metrics.hungarian(T, T[:3])[2] == pytest.approx(0.5, abs=1e-6)


def test_mean_l2_ratio_leaves_out_badly_matched_pairs():
    T = _orthonormal(3, 6)
    codes = torch.rand(400, 3) * (torch.rand(400, 3) < 0.5)
    junk = _orthonormal(4, 6, seed=1)[3]  # the third latent matches nothing (|cos| < 0.9)
    L = torch.stack([T[0], T[1], junk])
    acts = torch.stack([0.8 * codes[:, 0], 0.8 * codes[:, 1], 50.0 * torch.ones(400)], 1)  # fires always
    assert metrics.cosines(T, L).abs()[2, 2] < 0.9
    assert metrics.mean_l2_ratio(T, L, codes, acts) == pytest.approx(0.8, rel=1e-6)
    assert math.isnan(metrics.mean_l2_ratio(T, _orthonormal(3, 6, seed=2), codes, acts))


def test_reconstruction_metrics_closed_forms():
    x = torch.randn(500, 4) + 3.0
    assert metrics.explained_variance(x, x) == 1.0
    # Predicting the mean explains nothing (about the mean, not about zero).
    assert metrics.explained_variance(x, x.mean(0).expand_as(x)) == pytest.approx(0.0, abs=1e-12)
    assert metrics.shrinkage(x, 0.5 * x) == pytest.approx(0.5)
    acts = torch.tensor([[0.0, 1.0, 0.0], [2.0, 3.0, 0.0]])
    assert metrics.l0(acts) == 1.5
    assert metrics.dead_fraction(acts) == pytest.approx(1 / 3)
    assert math.isnan(
        metrics.mmcs_signed_learned(_orthonormal(2, 4), _orthonormal(2, 4), alive=torch.zeros(2, dtype=torch.bool))
    )


def test_sharkey_feature_scales_are_log_normal_per_feature_and_off_by_default():
    import math

    from sae.synthetic import SharkeyConfig, SharkeyData

    base = SharkeyData(SharkeyConfig(n_features=64, d=16, m=8.0, correlated=False))
    spread = SharkeyData(SharkeyConfig(n_features=64, d=16, m=8.0, correlated=False, scale_sigma=1.0))
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    a, b = base.sample_codes(40_000, g()), spread.sample_codes(40_000, g())
    assert torch.equal(base.features, spread.features)  # the same features; only the scales differ
    assert torch.equal(b, a * spread.feature_scales)  # the same draws, scaled per feature
    assert torch.equal(base.feature_scales, torch.ones(64))
    logs = spread.feature_scales.log()
    assert abs(float(logs.std()) - 1.0) < 0.3 and abs(float(logs.mean()) + 0.5) < 0.3  # log-normal(−σ²/2, σ)
    active = (b > 0).float()
    mean_active = b.sum(0) / active.sum(0).clamp_min(1)
    frequent = active.sum(0) > 500
    assert torch.allclose(
        mean_active[frequent], 0.5 * spread.feature_scales[frequent], rtol=0.1
    )  # U[0,1) mean 1/2, scaled
    with pytest.raises(ValueError, match="scale_sigma=-1"):
        SharkeyConfig(scale_sigma=-1.0)
    assert not math.isnan(spread.expected_active())


def test_evaluate_reads_what_the_trainer_reads(tmp_path):
    """A tensor, a numpy array and a .npy file of the same rows give the same evaluation."""
    import numpy as np

    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder

    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=6, dict_size=12))
    x = torch.rand(300, 6)
    truth = torch.randn(4, 6)
    np.save(tmp_path / "x.npy", x.numpy())
    ref = metrics.evaluate(sae, x, truth)
    np.testing.assert_equal(tuple(metrics.evaluate(sae, x.numpy(), truth.numpy())), tuple(ref))  # NaN == NaN here
    np.testing.assert_equal(tuple(metrics.evaluate(sae, tmp_path / "x.npy", truth)), tuple(ref))
    with pytest.raises(TypeError, match="x must be a tensor"):
        metrics.evaluate(sae, [[0.0] * 6])
