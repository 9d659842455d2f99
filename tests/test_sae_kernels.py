"""The hand-derived loss + gradient kernel equals autograd, for one SAE and for stacked ensembles."""

import pytest
import torch

from sae.kernels import fused_backward_, kernel_supports, sae_loss_and_grads
from sae.model import SAEConfig, SparseAutoencoder
from sae.train import TrainConfig, Trainer
from tests.sae_streams import sparse_stream

D, N, B = 8, 16, 32
SETTINGS = {  # name: SAEConfig overrides
    "relu-unit": dict(arch="relu", l1=0.7),
    "relu-weighted_l1": dict(arch="relu", l1=0.7, decoder_norm="weighted_l1"),
    "topk": dict(arch="topk", k=4),
    "batchtopk": dict(arch="batchtopk", k=4),
}
PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


def _sae(seed: int = 0, **overrides) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(d_in=D, dict_size=N, **overrides), torch.Generator().manual_seed(seed))
    sae = sae.double().train()
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():  # biases away from zero, so every term of the gradient is exercised
        sae.b_enc.copy_(torch.randn(N, generator=g, dtype=torch.float64))
        sae.b_dec.copy_(torch.randn(D, generator=g, dtype=torch.float64))
    return sae


def _x(seed: int = 1, shape=(B, D)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _dead(seed: int = 2) -> torch.Tensor:
    return torch.rand(N, generator=torch.Generator().manual_seed(seed)) < 0.4


def _autograd(sae: SparseAutoencoder, x, dead):
    sae.zero_grad(set_to_none=True)
    out = sae(x, dead=dead)
    out.loss.backward()
    return out, {name: getattr(sae, name).grad.clone() for name in PARAMS}


@pytest.mark.parametrize("sparse", [False, True, None])
@pytest.mark.parametrize("with_dead", [False, True])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_single_sae_loss_and_every_gradient_equal_autograd(setting, with_dead, sparse):
    sae, x = _sae(**SETTINGS[setting]), _x()
    dead = _dead() if with_dead else None
    ref, grads = _autograd(sae, x, dead)
    ref_threshold = sae.threshold.clone()
    sae.threshold.zero_()
    for p in sae.parameters():
        p.grad = torch.full_like(p, 7.0)  # replaced, not accumulated into
    out = fused_backward_(sae, x, dead=dead, sparse=sparse)
    for name in ("loss", "mse", "sparsity", "aux", "acts"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name).detach(), msg=name)
    if setting.startswith("topk") and with_dead:
        assert float(out.aux) > 0  # AuxK was exercised
    assert torch.equal(out.fired, (ref.acts != 0).any(0))
    for name in PARAMS:
        torch.testing.assert_close(getattr(sae, name).grad, grads[name], msg=name)
    torch.testing.assert_close(sae.threshold, ref_threshold)  # BatchTopK's θ EMA, 0 otherwise


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("per_member_x", [False, True])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_ensemble_of_three_equals_each_member_alone(setting, per_member_x, sparse):
    E = 3
    l1s = [0.1, 0.7, 2.0]
    overrides = {k: v for k, v in SETTINGS[setting].items() if k != "l1"}
    saes = [_sae(seed=e, l1=l1s[e], **overrides) for e in range(E)]
    xs = [_x(seed=10 + e) for e in range(E)] if per_member_x else [_x()] * E
    x = torch.stack(xs) if per_member_x else xs[0]
    dead = torch.stack([_dead(3), _dead(4), torch.zeros(N, dtype=torch.bool)]) if setting.endswith("topk") else None
    stacked = [torch.stack([getattr(s, name).detach() for s in saes]) for name in PARAMS]
    before = [t.clone() for t in (x, *stacked)]
    out = sae_loss_and_grads(
        x,
        *stacked,
        arch=overrides["arch"],
        l1=torch.tensor(l1s, dtype=torch.float64),
        k=overrides.get("k", 0),
        decoder_norm=overrides.get("decoder_norm", "unit"),
        aux_coef=saes[0].config.aux_coef,
        dead=dead,
        sparse=sparse,
    )
    for t, b in zip((x, *stacked), before):
        assert torch.equal(t, b)  # no argument changed
    for e, sae in enumerate(saes):
        ref, grads = _autograd(sae, xs[e], None if dead is None else dead[e])
        torch.testing.assert_close(out.loss[e], ref.loss.detach())
        torch.testing.assert_close(out.acts[e], ref.acts.detach())
        for i, name in enumerate(PARAMS):
            torch.testing.assert_close(out.grads[i][e], grads[name], msg=f"member {e} {name}")
        if setting == "batchtopk":
            kept = ref.acts[ref.acts > 0]
            torch.testing.assert_close(out.kept_min[e], kept.min().detach())


def test_sparse_path_is_chosen_at_low_density_and_agrees():
    sae, x = _sae(arch="relu", l1=0.7), _x()
    with torch.no_grad():
        sae.b_enc.sub_(3.0)  # few active latents
    ref, grads = _autograd(sae, x, None)
    assert 0 < float((ref.acts != 0).float().mean()) < 0.1
    fused_backward_(sae, x)
    for name in PARAMS:
        torch.testing.assert_close(getattr(sae, name).grad, grads[name], msg=name)


@pytest.mark.parametrize("sparse_members", [(1, 3), (2, 3)])  # apart (copied) and consecutive (a view)
def test_ensemble_runs_each_member_on_its_own_path_and_agrees(monkeypatch, sparse_members):
    """A sweep's low-L1 members are dense, its high-L1 members sparse: each subset takes its own path."""
    import sae.kernels as kernels

    E = 4
    saes = [_sae(seed=e, arch="relu", l1=0.5 + e) for e in range(E)]
    with torch.no_grad():
        for e in sparse_members:
            saes[e].b_enc.sub_(3.0)  # few active latents
    x = _x()
    stacked = [torch.stack([getattr(s, name).detach() for s in saes]) for name in PARAMS]
    paths, rest = [], kernels._rest
    monkeypatch.setattr(kernels, "_rest", lambda *a: paths.append((a[1].shape[0], a[7])) or rest(*a))
    out = sae_loss_and_grads(x, *stacked, l1=torch.tensor([s.config.l1 for s in saes], dtype=torch.float64))
    assert sorted(paths) == [(2, False), (2, True)]
    for e, sae in enumerate(saes):
        ref, grads = _autograd(sae, x, None)
        assert (float((ref.acts != 0).float().mean()) < 0.1) == (e in sparse_members)
        torch.testing.assert_close(out.loss[e], ref.loss.detach())
        assert torch.equal(out.fired[e], (ref.acts != 0).any(0))
        for i, name in enumerate(PARAMS):
            torch.testing.assert_close(out.grads[i][e], grads[name], msg=f"member {e} {name}")


def test_sparse_path_ignores_whatever_its_scratch_buffers_hold(monkeypatch):
    """The sampled product g W_decᵀ once took its value buffer from ``empty_like``: garbage NaNs there
    leaked through ``beta=0`` into the gradients (an intermittent NaN loss). Fill fresh buffers
    with NaN and the gradients must still equal autograd's."""
    sae, x = _sae(arch="relu", l1=0.7), _x()
    with torch.no_grad():
        sae.b_enc.sub_(3.0)
    ref, grads = _autograd(sae, x, None)
    empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda t, **kw: empty_like(t, **kw).fill_(float("nan")))
    fused_backward_(sae, x, sparse=True)
    for name in PARAMS:
        torch.testing.assert_close(getattr(sae, name).grad, grads[name], msg=name)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(arch="relu", l1=0.05),
        dict(arch="relu", l1=0.05, decoder_norm="weighted_l1"),
        dict(arch="topk", k=3),
        dict(arch="batchtopk", k=3),
    ],
)
def test_trainer_with_kernel_ends_close_to_autograd(overrides):
    data = sparse_stream(20, 8, 0.8)
    sc = SAEConfig(d_in=8, dict_size=24, **overrides)
    # dead_window of two batches: AuxK starts during the run for topk / batchtopk.
    runs = {
        fused: Trainer(
            sc, TrainConfig(n_samples=64 * 8, batch_size=64, warmup_steps=2, dead_window=128, log_every=1, fused=fused)
        ).fit(data)
        for fused in (False, True)
    }
    for name, v in runs[False].sae_.state_dict().items():
        torch.testing.assert_close(runs[True].sae_.state_dict()[name], v, rtol=1e-4, atol=1e-5, msg=name)
    for a, b in zip(runs[False].history_, runs[True].history_):
        assert a["l0"] == b["l0"] and a["dead_fraction"] == b["dead_fraction"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_unsupported_configs_raise_and_the_trainer_falls_back_to_autograd():
    assert not kernel_supports(SAEConfig(d_in=D, dict_size=N, tied=True))
    assert not kernel_supports(SAEConfig(d_in=D, dict_size=N, orth=0.1))
    for overrides in (dict(tied=True), dict(orth=0.1)):
        with pytest.raises(ValueError, match="untied SAE without orthogonality penalty"):
            fused_backward_(_sae(**overrides), _x())
    with pytest.raises(ValueError, match="arch=.gsae. is not supported"):
        sae = _sae()
        sae_loss_and_grads(_x(), *(getattr(sae, n).detach()[None] for n in PARAMS), arch="gsae")
    sae = _sae()
    W_enc, b_enc, W_dec, b_dec = (getattr(sae, n).detach()[None] for n in PARAMS)
    with pytest.raises(ValueError, match=r"W_dec has shape \(1, 8, 16\); .* must be \(1, 16, 8\)"):
        sae_loss_and_grads(_x(), W_enc, b_enc, W_dec.transpose(1, 2), b_dec)
    with pytest.raises(ValueError, match=r"x has shape \(32, 5\); it must be \[batch, d=8\]"):
        sae_loss_and_grads(_x(shape=(B, 5)), W_enc, b_enc, W_dec, b_dec)
    with pytest.raises(ValueError, match="k=0 must be between 1 and the number of latents n=16"):
        sae_loss_and_grads(_x(), W_enc, b_enc, W_dec, b_dec, arch="topk")
    with pytest.raises(ValueError, match="BatchTopK's training rule"):
        fused_backward_(_sae(arch="batchtopk", k=4).eval(), _x())
    x = torch.randn(128, D)
    for sc, tc in ((SAEConfig(d_in=D, dict_size=N, tied=True), {}), (SAEConfig(d_in=D, dict_size=N), dict(bf16=True))):
        res = Trainer(sc, TrainConfig(n_samples=128, batch_size=64, **tc)).fit(x)
        assert res.steps_ == 2 and all(torch.isfinite(p).all() for p in res.sae_.parameters())


@pytest.mark.parametrize("with_dead", [False, True])
def test_gsae_kernel_equals_autograd(with_dead):
    """The g-SAE through the kernel (TopK chosen by activation × ‖J d‖) gives autograd's loss and gradients."""
    sae = _sae(arch="gsae", k=4, grad_columns=2)
    x = _x(shape=(B, 3 * D))  # [x, two Jacobian rows]
    dead = _dead() if with_dead else None
    ref, grads = _autograd(sae, x, dead)
    assert kernel_supports(sae.config)
    out = fused_backward_(sae, x, dead=dead)
    for name in ("loss", "mse", "aux", "acts"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name).detach(), msg=name)
    for name in PARAMS:
        torch.testing.assert_close(getattr(sae, name).grad, grads[name], msg=name)
    plain = _sae(arch="topk", k=4)
    assert not torch.equal((out.acts != 0), (plain.encode(x[:, :D]) != 0))  # the selection is not TopK's
