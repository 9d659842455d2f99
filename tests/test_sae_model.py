"""The SparseAutoencoder module: activation rules, decoder constraint, inits, orthogonality penalty."""

import pytest
import torch

from sae.inits import initialize
from sae.model import (
    SAEConfig,
    SAEOutput,
    SparseAutoencoder,
    max_pairwise_cos,
    orthogonality_active,
    orthogonality_full,
)


def _sae(**kw):
    cfg = dict(d_in=8, dict_size=16)
    cfg.update(kw)
    return SparseAutoencoder(SAEConfig(**cfg), generator=torch.Generator().manual_seed(0))


def test_forward_is_a_named_result_and_relu_loss_is_mse_plus_l1():
    sae = _sae(l1=0.3)
    x = torch.randn(10, 8)
    out = sae(x)
    assert isinstance(out, SAEOutput)
    acts = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    recon = acts @ sae.W_dec + sae.b_dec
    assert torch.allclose(out.recon, recon, atol=1e-6)
    mse = (recon - x).pow(2).sum(1).mean()
    assert torch.allclose(out.loss, mse + 0.3 * acts.sum(1).mean(), atol=1e-5)


def test_topk_keeps_k_largest_per_sample_batchtopk_k_times_batch():
    x = torch.randn(32, 8)
    topk = _sae(arch="topk", k=3)
    acts = topk(x).acts
    assert ((acts != 0).sum(1) <= 3).all()
    post = torch.relu(topk.encode_pre(x))
    kth = post.topk(3, dim=1).values[:, -1:]
    assert torch.equal(acts != 0, (post >= kth) & (post > 0))
    bt = _sae(arch="batchtopk", k=3).train()
    acts = bt(x).acts
    assert int((acts != 0).sum()) == 3 * 32
    theta = float(bt.threshold)
    acts = acts.detach()
    assert theta == pytest.approx(float(acts[acts != 0].min()))
    bt.eval()  # inference: one threshold instead of the batch rule
    ev = bt(x).acts
    assert torch.equal(ev != 0, torch.relu(bt.encode_pre(x)) > theta)


def test_unit_decoder_grad_projection_and_weighted_l1():
    sae = _sae(l1=0.1)
    sae(torch.randn(20, 8)).loss.backward()
    sae.remove_parallel_grad_()
    # The gradient left has no component along its (unit) row.
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(16), atol=1e-6)
    w = _sae(l1=0.1, decoder_norm="weighted_l1")
    assert torch.allclose(w.W_dec.norm(dim=1), torch.full((16,), 0.1), atol=1e-6)  # SAELens-style 0.1 norm
    x = torch.randn(20, 8)
    out = w(x)
    assert torch.allclose(out.sparsity, 0.1 * (out.acts * w.W_dec.norm(dim=1)).sum(1).mean())


def test_inits():
    data = torch.randn(500, 8) @ torch.diag(torch.tensor([6.0, 4, 3, 2, 1, 0.5, 0.3, 0.2])) + 2.0
    g = torch.Generator().manual_seed(1)
    orth = _sae(dict_size=6, init="orthogonal")
    D = orth.W_dec
    assert torch.allclose(D @ D.T, torch.eye(6), atol=1e-5)
    edt = _sae(init="enc_dec_transpose")
    assert torch.equal(edt.W_enc, edt.W_dec.T)
    pca = SparseAutoencoder(SAEConfig(d_in=8, dict_size=16, init="pca", init_noise=0.05))
    initialize(pca, data, g)
    # Rows 0 and 8 are (noised) copies of the top principal direction e_0 (cycling when n > d).
    W = pca.W_dec.detach()
    assert float(W[0, 0].abs()) > 0.98 and float(W[8, 0].abs()) > 0.98
    assert torch.allclose(pca.b_dec, data.mean(0), atol=1e-5)
    unit = _sae(init="unit", init_noise=0.05)
    assert (unit.W_dec.abs().argmax(1) == torch.arange(16) % 8).all()
    dat = SparseAutoencoder(SAEConfig(d_in=8, dict_size=16, init="data", init_blend=1.0))
    initialize(dat, data, g)
    centred = data - data.mean(0)
    cos = (dat.W_dec @ (centred / centred.norm(dim=1, keepdim=True)).T).max(1).values
    assert (cos > 0.9999).all()  # p = 1: every row is a centred data point
    with pytest.raises(ValueError, match="needs a data sample"):
        initialize(SparseAutoencoder(SAEConfig(d_in=8, dict_size=4, init="pca")), None, g)
    with pytest.raises(ValueError, match="init='nope' is unknown"):
        SAEConfig(d_in=8, dict_size=4, init="nope")
    with pytest.raises(ValueError, match="l1=-1"):
        SAEConfig(d_in=8, dict_size=4, l1=-1)


def test_orthogonality_active_form_matches_full_and_reaches_the_neighbour():
    D = torch.randn(12, 5, requires_grad=True)
    acts_all = torch.ones(3, 12)
    assert torch.allclose(orthogonality_active(D, acts_all), orthogonality_full(D))
    acts = torch.zeros(3, 12)
    acts[0, 4] = 1.0  # only latent 4 active
    pen = orthogonality_active(D, acts)
    U = D.detach() / D.detach().norm(dim=1, keepdim=True)
    cos = (U @ U.T).abs()
    cos.fill_diagonal_(0)
    nb = int(cos[4].argmax())
    assert float(pen) == pytest.approx(float(cos[4, nb]), abs=1e-6)
    pen.backward()
    touched = (D.grad.abs().sum(1) > 0).nonzero().flatten().tolist()
    assert sorted(touched) == sorted([4, nb])


def test_orthogonality_penalty_lowers_max_pairwise_cos():
    from sae.train import TrainConfig, train
    from tests.sae_streams import sparse_stream

    data = sparse_stream(24, 12, 0.9, seed=2)
    res = {}
    for orth in (0.0, 1.0):
        cfg = SAEConfig(d_in=12, dict_size=24, l1=0.05, orth=orth)
        res[orth] = max_pairwise_cos(
            train(cfg, TrainConfig(n_samples=256 * 300, batch_size=256, lr=3e-3), data).sae_.decoder
        )
    assert res[1.0] < res[0.0] - 0.05, res


def test_gsae_keeps_the_k_latents_with_the_largest_activation_times_gradient_reach():
    """Olmo et al.'s g-SAE: top-k of ReLU(pre)_i · ‖J d_i‖, brute force over latents and samples."""
    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder

    c = SAEConfig(d_in=6, dict_size=12, arch="gsae", k=3, grad_columns=2)
    sae = SparseAutoencoder(c, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    x, J = torch.randn(7, 6, generator=g), torch.randn(7, 2, 6, generator=g)
    acts = sae.encode(torch.cat([x, J.reshape(7, -1)], dim=1))
    post = torch.relu(sae.encode_pre(x))
    for b in range(7):
        score = [float(post[b, i]) * float(torch.linalg.norm(J[b] @ sae.decoder[i])) for i in range(12)]
        keep = sorted(range(12), key=lambda i: -score[i])[:3]
        want = torch.zeros(12)
        want[keep] = post[b, keep]
        assert torch.equal(acts[b], want)
    # without the gradient it is plain TopK; and the selection differs from it on these rows
    plain = sae.encode(x)
    assert torch.equal((plain != 0).sum(1), torch.full((7,), 3))
    assert not torch.equal(plain != 0, acts != 0)


def test_gsae_trains_through_the_one_engine_and_checks_its_rows():
    from sae.config import SAEConfig, TrainConfig
    from sae.train import train

    c = SAEConfig(d_in=4, dict_size=8, arch="gsae", k=2)
    rows = torch.randn(512, 8, generator=torch.Generator().manual_seed(0))
    fitted = train(c, TrainConfig(n_samples=64 * 20, batch_size=64, log_every=20), rows)
    assert fitted.steps_ == 20 and torch.allclose(fitted.sae_.decoder.norm(dim=1), torch.ones(8), atol=1e-5)
    from sae.engine import initial_sae

    start = initial_sae(c, TrainConfig(), rows)  # b_dec starts at the activations' mean (the first d_in columns)
    assert torch.allclose(start.b_dec, rows[:, :4].mean(0))
    with pytest.raises(ValueError, match=r"d_in=4 \(a g-SAE's rows are \[x, J rows\], 8 wide\)"):
        train(c, TrainConfig(n_samples=64, batch_size=64), rows[:, :4])
