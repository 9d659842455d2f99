"""JumpReLU, gated and Matryoshka BatchTopK SAEs: forward passes against hand-written closed forms,
the JumpReLU straight-through gradients against the paper's formulas, the gated auxiliary loss,
Matryoshka's prefix losses, the kernel against autograd, recovery of planted features, resume,
sweeps, the SAELens export and the CLI."""

import json
import math

import pytest
import torch
from cli_run import run

from sae.ensemble import Ensemble
from sae.export import CONFIG_FILE, WEIGHTS_FILE, export_saelens, import_saelens
from sae.files import load_tensors
from sae.kernels import SPARSE_MAX_DENSITY, fused_backward_
from sae.metrics import evaluate, mmcs_signed
from sae.model import SAEConfig, SparseAutoencoder
from sae.sweep import sweep
from sae.synthetic import SharkeyConfig, SharkeyData
from sae.train import TrainConfig, Trainer, load_sae, train

ARCHS = ("jumprelu", "gated", "matryoshka")


def planted(arch: str, **kw) -> SparseAutoencoder:
    """d = 2, n = 3: W_enc = [[1, 0, 1], [0, 1, 1]], decoder rows e1, e2, (e1 + e2)/√2, b_dec = 0."""
    sae = SparseAutoencoder(SAEConfig(d_in=2, dict_size=3, arch=arch, **kw)).double()
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [2**-0.5, 2**-0.5]]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_jumprelu_forward_is_z_times_step_of_z_minus_theta():
    sae = planted("jumprelu", l0=0.5)
    with torch.no_grad():
        sae.log_threshold.copy_(torch.tensor([0.3, 0.3, 1.0]).log())
    x = torch.tensor([[0.5, 0.2], [0.1, 0.4]], dtype=torch.float64)
    # pre = [x1, x2, x1 + x2] = [[0.5, 0.2, 0.7], [0.1, 0.4, 0.5]]; θ = [0.3, 0.3, 1.0]
    want = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.4, 0.0]], dtype=torch.float64)
    out = sae(x)
    assert torch.equal(out.acts, want)
    assert torch.allclose(out.recon, torch.tensor([[0.5, 0.0], [0.0, 0.4]], dtype=torch.float64))
    assert float(out.mse) == pytest.approx((0.2**2 + 0.1**2) / 2)
    assert float(out.sparsity) == pytest.approx(0.5 * 1.0)  # one active latent per sample


def test_jumprelu_threshold_gradient_is_the_straight_through_formula():
    """∂loss/∂log θ_i = θ_i · Σ_b [−(θ_i/ε) K ∂a_bi − (l0/B)(1/ε) K], K = 1{|pre − θ| < ε/2}, and
    the L0 term sends nothing to the encoder."""
    eps, l0 = 0.25, 0.7
    sae = planted("jumprelu", l0=l0, bandwidth=eps)
    theta = torch.tensor([0.3, 0.3, 1.0], dtype=torch.float64)
    with torch.no_grad():
        sae.log_threshold.copy_(theta.log())
    # pre: sample 0 [0.32, 0.2, 0.52], sample 1 [0.28, 0.62, 0.9]: (0,0), (0,1), (1,0) and (1,2) sit
    # within ε/2 of θ, active or not
    x = torch.tensor([[0.32, 0.2], [0.28, 0.62]], dtype=torch.float64)
    out = sae(x)
    out.loss.backward()
    pre = x @ sae.W_enc.detach()
    acts = pre * (pre > theta)
    err = acts @ sae.W_dec.detach() - x
    g_acts = 2 * err @ sae.W_dec.detach().T / 2  # ∂(‖err‖²/B)/∂a
    K = ((pre - theta).abs() < eps / 2).double()
    assert K.sum() == 4
    want = theta * ((-(theta / eps) * K * g_acts) - (l0 / 2) / eps * K).sum(0)
    assert torch.allclose(sae.log_threshold.grad, want, atol=1e-12)
    # The encoder's gradient is the MSE's through the active entries only (no L0 term in it).
    sae.zero_grad()
    sae(x).mse.backward()
    g_enc = sae.W_enc.grad.clone()
    sae.zero_grad()
    sae(x).loss.backward()
    assert torch.allclose(sae.W_enc.grad, g_enc, atol=1e-14)


def gated_planted(**kw) -> SparseAutoencoder:
    sae = planted("gated", **kw)
    with torch.no_grad():
        sae.b_enc.copy_(torch.tensor([-0.2, -0.2, -0.6]))  # b_gate
        sae.r_mag.copy_(torch.tensor([math.log(2.0), 0.0, 0.0]))
        sae.b_mag.copy_(torch.tensor([0.1, -0.1, 0.0]))
    return sae


def test_gated_forward_gate_times_magnitude_with_shared_directions():
    sae = gated_planted(l1=0.5)
    x = torch.tensor([[0.5, 0.1], [0.1, 0.7]], dtype=torch.float64)
    out = sae(x)
    # π_gate = xW + b_gate = [[0.3, -0.1, 0.0], [-0.1, 0.5, 0.2]]
    # π_mag = xW ⊙ exp(r_mag) + b_mag = [[1.1, 0.0, 0.6], [0.3, 0.6, 0.8]]
    want = torch.tensor([[1.1, 0.0, 0.0], [0.0, 0.6, 0.8]], dtype=torch.float64)
    assert torch.allclose(out.acts, want, atol=1e-12)
    assert torch.allclose(out.recon, want @ sae.W_dec.detach(), atol=1e-12)
    # L1 on ReLU(π_gate), unit decoder rows: 0.5 · (0.3 + 0.5 + 0.2) / 2
    assert float(out.sparsity) == pytest.approx(0.5 * 1.0 / 2)


def test_gated_aux_loss_reconstructs_from_the_gate_through_a_frozen_decoder():
    sae = gated_planted(l1=0.0)
    with torch.no_grad():
        sae.b_dec.copy_(torch.tensor([0.05, -0.02]))
    x = torch.tensor([[0.5, 0.1], [0.1, 0.7], [0.3, 0.3]], dtype=torch.float64)
    out = sae(x)
    xc = x - sae.b_dec.detach()
    gate = torch.relu(xc @ sae.W_enc.detach() + sae.b_enc.detach())
    want = (gate @ sae.W_dec.detach() + sae.b_dec.detach() - x).pow(2).sum(-1).mean()
    assert float(out.aux) == pytest.approx(float(want), abs=1e-14)
    assert float(out.loss) == pytest.approx(float(out.mse + out.aux), abs=1e-14)
    out.aux.backward()
    # Frozen decoder: the aux loss trains the gate (W_enc, b_gate, and b_dec only through x − b_dec).
    assert sae.W_dec.grad is None and sae.r_mag.grad is None and sae.b_mag.grad is None
    assert float(sae.W_enc.grad.abs().max()) > 0 and float(sae.b_enc.grad.abs().max()) > 0
    assert torch.allclose(sae.b_dec.grad, -sae.W_enc.detach() @ sae.b_enc.grad, atol=1e-14)


def test_matryoshka_prefix_losses_are_separate_reconstructions():
    g = torch.Generator().manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=6, dict_size=12, arch="matryoshka", k=3, prefixes=(2, 5)), g).double()
    assert sae.config.prefixes == (2, 5, 12)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(6, generator=g, dtype=torch.float64) * 0.1)
    x = torch.randn(16, 6, generator=g, dtype=torch.float64)
    out = sae.train()(x)
    assert (out.acts != 0).sum() == 3 * 16  # BatchTopK: k per sample on average
    for i, p in enumerate((2, 5, 12)):
        only = out.acts.clone()
        only[:, p:] = 0  # the latents past the prefix switched off
        want = (sae.decode(only) - x).pow(2).sum(-1).mean()
        assert float(out.prefix_mse[i]) == pytest.approx(float(want), abs=1e-13)
    assert float(out.mse) == float(out.prefix_mse[-1])
    assert float(out.loss) == pytest.approx(float(out.prefix_mse.sum()), abs=1e-13)
    # At inference the learned θ replaces the batch rule, as BatchTopK.
    sae.eval()
    post = torch.relu(sae.encode_pre(x))
    assert torch.equal(sae.encode(x), post * (post > sae.threshold))


def test_default_prefixes_double_up_to_the_dictionary_and_bad_ones_are_refused():
    assert SAEConfig(d_in=4, dict_size=256, arch="matryoshka").prefixes == (16, 32, 64, 128, 256)
    assert SAEConfig(d_in=4, dict_size=40, arch="matryoshka").prefixes == (20, 40)
    assert SAEConfig(d_in=4, dict_size=10, arch="matryoshka").prefixes == (10,)
    for bad, match in (((8, 4), "strictly increasing"), ((4, 80), "exceed the dictionary"), ((0, 4), "positive")):
        with pytest.raises(ValueError, match=match):
            SAEConfig(d_in=4, dict_size=40, arch="matryoshka", prefixes=bad)


def _random_sae(arch: str, seed: int = 0, **kw) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(seed)
    defaults = {"jumprelu": dict(bandwidth=0.3, threshold_init=0.2, l0=0.05), "matryoshka": dict(k=4, prefixes=(5, 11))}
    sae = SparseAutoencoder(SAEConfig(d_in=8, dict_size=24, arch=arch, **(defaults.get(arch, {}) | kw)), g).double()
    with torch.no_grad():
        for p in sae.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return sae.train()


@pytest.mark.parametrize(
    "arch, kw, sparse",
    [
        ("jumprelu", {}, False),
        ("jumprelu", {}, True),  # the active entries and the inactive ones near θ, sampled
        ("jumprelu", {}, None),  # two members below, one dense and one sparse
        ("gated", dict(l1=0.2), None),
        ("gated", dict(l1=0.2, decoder_norm="weighted_l1"), None),
        ("matryoshka", {}, None),
        ("matryoshka", dict(aux_coef=0.5), None),
    ],
)
def test_kernel_equals_autograd(arch, kw, sparse):
    sae = _random_sae(arch, **kw)
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    dead = torch.arange(24) % 3 == 0
    out = sae(x, dead)
    out.loss.backward()
    want = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)
    sae.threshold.zero_()
    k = fused_backward_(sae, x, dead, sparse=sparse)
    assert float(k.loss) == pytest.approx(float(out.loss), rel=1e-12)
    assert float(k.mse) == pytest.approx(float(out.mse), rel=1e-12)
    if arch in ("jumprelu", "matryoshka"):
        assert float(k.aux) > 0  # AuxK on the dead latents, in both routes
    assert torch.equal(k.acts != 0, out.acts != 0) and torch.allclose(k.acts, out.acts.detach(), atol=1e-12)
    for n, p in sae.named_parameters():
        assert torch.allclose(p.grad, want[n], atol=1e-12), n
        assert float(want[n].abs().max()) > 0, n  # every parameter is trained
    # A stack of two members whose sparsity coefficients differ: the batched kernel, member by member.
    coef = "l0" if arch == "jumprelu" else "l1"
    saes = [_random_sae(arch, seed=s, **kw | {coef: c}) for s, c in ((1, 0.0), (2, 0.3))]
    if arch == "jumprelu" and sparse is None:  # the second member's high thresholds put it on the sparse path
        with torch.no_grad():
            saes[1].log_threshold.fill_(math.log(1.0))
        density = [float((s.encode(x) != 0).double().mean()) for s in saes]
        assert density[0] > SPARSE_MAX_DENSITY > density[1] > 0, density
    ens = Ensemble(saes)
    ens.step_grads_(x, 10**9, fused=True)
    fused = [p.grad.clone() for p in ens.parameters()]
    ens.step_grads_(x, 10**9, fused=False)
    for a, b in zip(fused, [p.grad for p in ens.parameters()]):
        assert torch.allclose(a, b, atol=1e-12)


def _sharkey():
    return SharkeyData(SharkeyConfig(n_features=32, d=32, m=2.0, seed=4))


RECOVERY = {
    # A short run: JumpReLU's log-threshold moves by about lr a step, so it starts near its end.
    "jumprelu": dict(threshold_init=0.15),
    "gated": dict(l1=0.3),
    "matryoshka": dict(k=2, prefixes=(16,)),
}


@pytest.mark.parametrize("arch", ARCHS)
def test_planted_features_are_recovered_well_above_a_random_dictionary(arch):
    data = _sharkey()
    res = train(
        SAEConfig(d_in=32, dict_size=48, arch=arch, **RECOVERY[arch]),
        TrainConfig(n_samples=256 * 250, batch_size=256, lr=3e-3, warmup_steps=20, seed=1),
        data,
    )
    x = data.sample(4000, torch.Generator().manual_seed(99))
    ev = evaluate(res.sae_, x, data.features)
    g = torch.Generator().manual_seed(0)
    random = max(mmcs_signed(data.features, torch.randn(48, 32, generator=g)) for _ in range(5))
    print(f"{arch}: mmcs_signed {ev.mmcs_signed:.3f} (random dictionary {random:.3f}), l0 {ev.l0:.2f}")
    assert random < 0.4
    assert ev.mmcs_signed > random + 0.25, (ev, random)


@pytest.mark.parametrize("arch", ARCHS)
def test_resume_ends_with_the_same_weights(tmp_path, arch):
    data = _sharkey()
    sc = SAEConfig(d_in=32, dict_size=24, arch=arch, k=3, prefixes=(8,) if arch == "matryoshka" else ())
    tc = dict(batch_size=64, warmup_steps=5, dead_window=640, resample_every=7, resample_duplicates=0.5, seed=3)
    full = train(sc, TrainConfig(n_samples=64 * 20, **tc), data).sae_
    Trainer(sc, TrainConfig(n_samples=64 * 9, **tc), tmp_path).fit(data)
    resumed = Trainer.resume(tmp_path, n_samples=64 * 20).fit(data).sae_
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert load_sae(tmp_path).config == full.config and full.config.scale_free


@pytest.mark.parametrize("arch", ["jumprelu", "gated", "relu"])
def test_coefficients_left_unset_follow_the_datas_scale(arch):
    """None coefficients are set from σ, the data's RMS per dimension, when training starts: scaling the
    data by c scales JumpReLU's l0 by c², its bandwidth and threshold by c, the ReLU and gated L1 by c; the
    resolved values are what the trained SAE's config records."""
    from sae.config import AUTO
    from sae.engine import data_scale

    data = _sharkey()
    x = data.sample(8192, torch.Generator().manual_seed(5))
    sigma = float(((x - x.mean(0)).pow(2).sum(1).mean() / x.shape[1]).sqrt())
    assert data_scale(SAEConfig(d_in=32, dict_size=8), x) == pytest.approx(sigma)
    got = {}
    for c in (1.0, 10.0):
        tc = TrainConfig(n_samples=64 * 3, batch_size=64, warmup_steps=1, seed=0, init_samples=8192)
        got[c] = train(SAEConfig(d_in=32, dict_size=16, arch=arch), tc, x * c).sae_.config
    if arch == "jumprelu":
        assert got[1.0].l0 == pytest.approx(AUTO["l0"] * sigma**2, rel=1e-5)
        assert got[1.0].bandwidth == pytest.approx(AUTO["bandwidth"] * sigma, rel=1e-5)
        assert got[10.0].l0 == pytest.approx(100 * got[1.0].l0, rel=1e-5)
        assert got[10.0].threshold_init == pytest.approx(10 * got[1.0].threshold_init, rel=1e-5)
    else:
        assert got[1.0].l1 == pytest.approx(AUTO["l1"] * sigma, rel=1e-5)
        assert got[10.0].l1 == pytest.approx(10 * got[1.0].l1, rel=1e-5)
    assert SAEConfig(d_in=4, dict_size=8, arch="relu").l1 is None  # ReLU's L1 follows the data too
    fixed = SAEConfig(d_in=4, dict_size=8, arch=arch, l0=0.5, bandwidth=0.1, threshold_init=0.2, l1=0.7)
    assert fixed.resolve_scale(3.0) == fixed  # given coefficients stay as given


def test_a_jumprelu_sweep_sets_each_members_l0_and_matches_its_single_run():
    data = _sharkey()
    fields = dict(arch="jumprelu", d_in=32)
    tc = TrainConfig(n_samples=64 * 10, batch_size=64, warmup_steps=5, seed=2)
    res = sweep(data, [0.01, 0.2], [24], fields, tc)
    assert [row[0].config.l0 for row in res.saes] == [0.01, 0.2]
    single = train(SAEConfig(dict_size=24, l0=0.2, **fields), tc, data).sae_
    assert torch.allclose(res.saes[1][0].log_threshold, single.log_threshold, atol=1e-5)
    assert torch.allclose(res.saes[1][0].W_dec, single.W_dec, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_export_round_trip(tmp_path, arch):
    sae = _random_sae(arch).float().eval()
    if arch == "matryoshka":
        sae.threshold.fill_(0.1)
    export_saelens(sae, tmp_path)
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())
    tensors, _ = load_tensors(tmp_path / WEIGHTS_FILE)
    assert cfg["architecture"] == {"jumprelu": "jumprelu", "gated": "gated", "matryoshka": "jumprelu"}[arch]
    if arch == "jumprelu":
        assert torch.allclose(tensors["threshold"], sae.log_threshold.exp()) and tensors["threshold"].std() > 0
    if arch == "gated":
        assert set(tensors) == {"W_enc", "W_dec", "b_gate", "r_mag", "b_mag", "b_dec"}
    if arch == "matryoshka":
        assert cfg["metadata"]["training_architecture"] == "matryoshka_batchtopk"
        assert cfg["metadata"]["training_architecture_details"] == {"k": 4, "matryoshka_widths": [5, 11, 24]}
    back = import_saelens(tmp_path)
    assert back.config == sae.config
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        acts = sae.encode(x)
        assert (acts != 0).any()
        assert torch.equal(back.encode(x), acts)
        assert torch.allclose(back(x).recon, sae(x).recon, atol=1e-6)
    # Without our metadata (as SAELens saved it) the same SAE comes back from SAELens's own fields.
    del cfg["metadata"]["polylens"]
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    foreign = import_saelens(tmp_path)
    assert foreign.config.arch == arch
    with torch.no_grad():
        assert torch.equal(foreign.encode(x), acts)
    try:
        import sae_lens
    except ImportError:
        return
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path))  # pragma: no cover (sae_lens is not a test dependency)
    with torch.no_grad():
        assert torch.allclose(theirs.encode(x), acts, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_cli_trains_each_architecture_with_its_defaults(capsys, tmp_path, arch):
    out = tmp_path / arch
    code, stdout, err = run(
        capsys, "sae", "train", "--arch", arch, "--out", out, "--samples", 256 * 4, "--eval-samples", 500, "--json", "-"
    )
    assert code == 0, err
    rec = json.loads(stdout)
    assert rec["sae"]["arch"] == arch and rec["steps"] == 4
    assert import_saelens(out / "saelens").config.arch == arch


def test_cli_refuses_bad_prefixes_in_one_line(capsys, tmp_path):
    for prefixes, match in (
        ("64,32", "strictly increasing"),
        ("16,5000", "exceed the dictionary"),
        ("a,b", "integers"),
    ):
        code, _, err = run(
            capsys,
            "sae",
            "train",
            "--arch",
            "matryoshka",
            "--prefixes",
            prefixes,
            "--out",
            tmp_path / "r",
            "--samples",
            256,
        )
        assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "r").exists()
