"""Trainer: recovery of planted features, exact resume, NaN stop, dead latents, data sources."""

import numpy as np
import pytest
import torch

from sae.engine import Engine
from sae.files import CHECKPOINT, STATE
from sae.metrics import evaluate, mmcs_signed
from sae.model import SAEConfig
from sae.sources import SEED_STRIDE
from sae.synthetic import SharkeyConfig, SharkeyData
from sae.train import TrainConfig, Trainer, load_sae, train
from tests.sae_streams import sparse_stream


@pytest.mark.slow
def test_small_sharkey_features_are_recovered():
    data = SharkeyData(SharkeyConfig(n_features=48, d=24, m=3.0, seed=4))
    # l1 0.3: the soft threshold is l1/2 = 0.15 against coefficients U[0, 1) (0.1 leaves L0 ≈ 16 for m = 3).
    res = train(
        SAEConfig(d_in=24, dict_size=64, l1=0.3),
        TrainConfig(n_samples=512 * 1500, batch_size=512, lr=3e-3, seed=1),
        data,
    )
    x = data.sample(4000, torch.Generator().manual_seed(99))
    ev = evaluate(res.sae_, x, data.features)
    assert ev.mmcs_signed > 0.97, ev
    assert ev.frac_recovered_0_9 > 0.9, ev
    # An untrained SAE scores far lower: the number measures training, not the metric.
    untrained = (
        Trainer(SAEConfig(d_in=24, dict_size=64, l1=0.1), TrainConfig(n_samples=512, batch_size=512))
        .build(data)
        .groups[0]
    )
    assert mmcs_signed(data.features, untrained.decoders()[0].detach()) < 0.6


def _weights(sae):
    return {k: v.clone() for k, v in sae.state_dict().items()}


@pytest.mark.parametrize("arch", ["relu", "batchtopk"])
def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path, arch):
    data = sparse_stream(20, 8, 0.8)
    sc = SAEConfig(d_in=8, dict_size=24, arch=arch, k=3, l1=0.05)
    full = train(
        sc,
        TrainConfig(n_samples=64 * 40, batch_size=64, warmup_steps=10, dead_window=640, resample_every=15, seed=3),
        data,
    ).sae_
    tc = TrainConfig(n_samples=64 * 17, batch_size=64, warmup_steps=10, dead_window=640, resample_every=15, seed=3)
    Trainer(sc, tc, tmp_path).fit(data)
    resumed = Trainer.resume(tmp_path, n_samples=64 * 40).fit(data).sae_
    for k, v in _weights(full).items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    loaded = load_sae(tmp_path)
    assert torch.equal(loaded.W_enc, full.W_enc)


def test_nan_batch_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    batches = [torch.randn(64, 6) for _ in range(10)]
    batches[7][3, 2] = float("nan")
    tc = TrainConfig(n_samples=64 * 10, batch_size=64, checkpoint_every=5, seed=0)
    tr = Trainer(SAEConfig(d_in=6, dict_size=8), tc, tmp_path)
    with pytest.raises(ValueError, match=r"step 7 contains NaN.*last good checkpoint \(step 5\)"):
        tr.fit(batches)
    assert '"step": 5' in (tmp_path / STATE).read_text()
    assert load_sae(tmp_path).W_enc.shape == (6, 8)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    x = torch.randn(640, 6)
    x[100, 1] = float("inf")
    with pytest.raises(ValueError, match="contain NaN or inf; clean the data first"):
        Trainer(SAEConfig(d_in=6, dict_size=8), tc).fit(x)


def test_resume_rejects_other_dimension_and_corrupt_checkpoint(tmp_path):
    data = torch.randn(256, 6)
    Trainer(SAEConfig(d_in=6, dict_size=8), TrainConfig(n_samples=128, batch_size=64), tmp_path).fit(data)
    with pytest.raises(ValueError, match="data dimension 5 does not match the SAE's d_in=6"):
        Trainer.resume(tmp_path).fit(torch.randn(256, 5))
    (tmp_path / CHECKPOINT).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_sae(tmp_path)


def test_resampling_revives_dead_latents():
    data = sparse_stream(16, 8, 0.8, seed=1)

    def run(resample_every):
        tc = TrainConfig(
            n_samples=128 * 200, batch_size=128, dead_window=128 * 20, resample_every=resample_every, seed=0
        )
        engine = Trainer(SAEConfig(d_in=8, dict_size=32, l1=0.05), tc).build(data)
        with torch.no_grad():
            engine.groups[0].b_enc[0, :16] = -20.0  # seeded to be dead: never fire on this data
        engine.fit()
        x = data.sample(4000, torch.Generator().manual_seed(5))
        return evaluate(engine.groups[0].members()[0], x).dead_fraction

    dead_without, dead_with = run(0), run(50)
    assert dead_without >= 0.5
    assert dead_with < dead_without - 0.25, (dead_without, dead_with)


def test_auxk_trains_the_latents_topk_starves():
    """Half the latents start far below the rest, so TopK never selects them: without AuxK nothing
    reaches their encoder (no gradient, so Adam leaves them exactly as they were); AuxK's loss on the
    residual is the only thing that moves them."""
    data = sparse_stream(16, 8, 0.8, seed=1)

    def moved(aux):
        tc = TrainConfig(n_samples=128 * 300, batch_size=128, dead_window=128 * 20, seed=0)
        engine = Trainer(SAEConfig(d_in=8, dict_size=32, arch="topk", k=2, aux_coef=aux), tc).build(data)
        g = engine.groups[0]
        with torch.no_grad():
            g.b_enc[0, :16] = -1.0
        before = g.W_enc[0][:, :16].detach().clone()
        engine.fit()
        return float((g.W_enc[0][:, :16].detach() - before).abs().max())

    assert moved(0.0) == 0.0
    assert moved(1 / 32) > 1e-3


def test_data_sources_tensor_numpy_path_and_iterator_agree(tmp_path):
    x = torch.randn(256, 5)
    np.save(tmp_path / "x.npy", x.numpy())
    # l1 given: an iterator's scale-following default would come from its first batch, the array's from all its rows
    sc, tc = SAEConfig(d_in=5, dict_size=6, l1=0.1), TrainConfig(n_samples=64 * 6, batch_size=64, seed=2)
    a = train(sc, tc, x).sae_
    b = train(sc, tc, x.numpy()).sae_
    c = train(sc, tc, tmp_path / "x.npy").sae_
    assert torch.equal(a.W_enc, b.W_enc) and torch.equal(a.W_enc, c.W_enc)
    # An iterator of the very batches the array source draws (its seeded per-epoch permutation)
    # trains the same SAE. The iterator's b_dec starts at its first batch's mean, the array's at
    # the mean of all rows: make both zero.
    perm0 = torch.randperm(256, generator=torch.Generator().manual_seed(2 * SEED_STRIDE))
    y = x.clone()
    y[perm0[:64]] -= y[perm0[:64]].mean(0)
    y[perm0[64:]] -= y[perm0[64:]].mean(0)
    long = TrainConfig(n_samples=64 * 40, batch_size=64, seed=2, lr=1e-2)
    batches = []
    for epoch in range(10):
        perm = torch.randperm(256, generator=torch.Generator().manual_seed(2 * SEED_STRIDE + epoch))
        batches += [y[perm[i * 64 : (i + 1) * 64]] for i in range(4)]
    ref = train(sc, long, y).sae_
    it = train(sc, long, batches).sae_
    assert torch.allclose(it.W_dec, ref.W_dec, atol=1e-5) and torch.allclose(it.W_enc, ref.W_enc, atol=1e-5)
    other = train(sc, long, batches[::-1]).sae_  # other batch order, another SAE: the batches are used
    assert (other.W_dec - ref.W_dec).abs().max() > 1e-3
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="must end in .npy or .safetensors"):
        train(sc, tc, tmp_path / "x.csv")


class _Again:
    """A re-iterable: each ``iter`` starts over (as a DataLoader does)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def test_one_shot_iterators_are_refused_and_re_iterables_resume_exactly(tmp_path):
    batches = [torch.randn(64, 5) for _ in range(12)]
    sc = SAEConfig(d_in=5, dict_size=6)
    with pytest.raises(ValueError, match="one-shot iterator.*cannot be read again"):
        train(sc, TrainConfig(n_samples=64 * 12, batch_size=64), (b for b in batches))
    with pytest.raises(ValueError, match="one-shot iterator"):
        train(sc, TrainConfig(n_samples=64 * 12, batch_size=64), iter(batches))
    full = train(sc, TrainConfig(n_samples=64 * 12, batch_size=64), _Again(batches)).sae_
    assert torch.equal(
        full.W_enc, train(sc, TrainConfig(n_samples=64 * 12, batch_size=64), batches).sae_.W_enc
    )  # list = re-iterable
    Trainer(sc, TrainConfig(n_samples=64 * 5, batch_size=64), tmp_path).fit(_Again(batches))
    resumed = Trainer.resume(tmp_path, n_samples=64 * 12).fit(_Again(batches)).sae_  # skips the 5 batches it trained on
    assert torch.equal(resumed.W_enc, full.W_enc)
    with pytest.raises(ValueError, match="holds 12 batches and step 12 needs one more"):
        train(sc, TrainConfig(n_samples=64 * 13, batch_size=64), batches)


def test_bf16_autocast_trains_as_fp32_does():
    # (the old check, "last loss < 1.5 x first", compared a one-entry history with itself)
    data = sparse_stream(12, 6, 0.8)
    runs = {
        bf: train(
            SAEConfig(d_in=6, dict_size=12, l1=0.05),
            TrainConfig(n_samples=128 * 200, batch_size=128, bf16=bf, log_every=10),
            data,
        )
        for bf in (True, False)
    }
    bf16, fp32 = runs[True], runs[False]
    assert len(bf16.history_) == 20 and bf16.history_[-1]["loss"] < 0.5 * bf16.history_[0]["loss"]  # it learned
    assert abs(bf16.history_[-1]["loss"] - fp32.history_[-1]["loss"]) < 0.02 * fp32.history_[-1]["loss"]
    assert torch.allclose(bf16.sae_.W_dec, fp32.sae_.W_dec, atol=5e-3)


def test_lr_schedule_warms_up_holds_and_decays_linearly_to_zero():
    from sae.engine import lr_at

    tc = TrainConfig(
        n_samples=100 * 8, batch_size=8, lr=0.5, warmup_steps=10, lr_decay=0.2
    )  # 100 steps, decay over the last 20
    assert [lr_at(s, tc) for s in (0, 4, 9, 50, 79)] == pytest.approx([0.05, 0.25, 0.5, 0.5, 0.5])
    assert [lr_at(s, tc) for s in (80, 90, 99)] == pytest.approx([0.5, 0.25, 0.025])
    assert lr_at(99, TrainConfig(n_samples=800, batch_size=8, lr=0.5, warmup_steps=10)) == 0.5  # no decay by default


def test_resampling_splits_a_planted_duplicate_towards_a_residual():
    data = SharkeyData(SharkeyConfig(n_features=24, d=16, m=2.0, seed=2))
    tc = TrainConfig(
        n_samples=256 * 4, batch_size=256, resample_every=1, resample_duplicates=0.9, resample_samples=2048, seed=0
    )
    tr = Trainer(SAEConfig(d_in=16, dict_size=24, l1=0.1), tc).build(data)
    x = tr.source.batch(0)
    g = tr.groups[0]  # the one member's tensors are g.W_dec[0], ...
    with torch.no_grad():  # latent 5: latent 3's row sign-flipped (|cos| = 1), a weaker encoder: the less active one
        g.W_dec[0, 5] = -g.W_dec[0, 3]
        g.W_enc[0, :, 5] = -g.W_enc[0, :, 3] * 0.5
        g.b_enc[0, 5] = g.b_enc[0, 3] * 0.5
    for p in g.parameters():  # Adam moments everywhere, so the reset shows
        tr.opts[0].state[p] = {
            "step": torch.tensor(1.0),
            "exp_avg": torch.ones_like(p),
            "exp_avg_sq": torch.ones_like(p),
        }
    pool = tr.resample_pool(x)  # a function of seed and step: the inputs resample() draws from
    with torch.no_grad():
        residual = torch.nn.functional.normalize(pool - g.member_forward(0, pool, train=False).recon, dim=-1)
    before = g.W_dec[0].detach().clone()
    assert tr.resample(x) == [[{"dead": 0, "duplicates": 1}]]
    W = g.W_dec[0].detach()
    others = torch.arange(24) != 5
    assert torch.equal(W[others], before[others])  # only latent 5 moved
    assert float((residual @ W[5]).max()) > 0.999  # onto the residual of one of the inputs
    W = W / W.norm(dim=-1, keepdim=True)
    assert float((W @ W.T).abs().fill_diagonal_(0).max()) < 0.9
    state = tr.opts[0].state[g.W_dec]
    assert float(state["exp_avg"][0, 5].abs().sum()) == 0 and float(state["exp_avg_sq"][0, 5].abs().sum()) == 0
    assert bool((state["exp_avg"][0, others] == 1).all())
    assert float(g.b_enc.detach()[0, 5]) == 0


def test_resampling_stops_where_the_lr_decay_begins(monkeypatch):
    steps = []
    monkeypatch.setattr(Engine, "resample", lambda self, x: steps.append(self.step))
    tc = TrainConfig(n_samples=64 * 40, batch_size=64, resample_every=5, lr_decay=0.25)  # decay from step 30
    Trainer(SAEConfig(d_in=6, dict_size=8), tc).fit(torch.randn(640, 6))
    assert steps == [5, 10, 15, 20, 25]
    steps.clear()
    Trainer(SAEConfig(d_in=6, dict_size=8), TrainConfig(n_samples=64 * 40, batch_size=64, resample_every=5)).fit(
        torch.randn(640, 6)
    )
    assert steps == [5, 10, 15, 20, 25, 30, 35]


@pytest.mark.parametrize("towards", ["input", "residual"])
def test_dead_latents_point_at_an_input_or_at_its_residual(towards):
    data = SharkeyData(SharkeyConfig(n_features=24, d=16, m=2.0, seed=2))
    tc = TrainConfig(
        n_samples=256 * 4,
        batch_size=256,
        resample_every=1,
        resample_dead_towards=towards,
        resample_samples=2048,
        dead_window=256,
    )
    tr = Trainer(SAEConfig(d_in=16, dict_size=24, l1=0.1), tc).build(data)
    g = tr.groups[0]
    x = tr.source.batch(0)
    g.since_fired[0, 7] = 256  # dead
    pool = tr.resample_pool(x)
    with torch.no_grad():
        inputs = torch.nn.functional.normalize(pool - g.b_dec[0], dim=-1)
        residuals = torch.nn.functional.normalize(pool - g.member_forward(0, pool, train=False).recon, dim=-1)
    assert tr.resample(x) == [[{"dead": 1, "duplicates": 0}]]
    row = g.W_dec.detach()[0, 7]
    hit, other = (inputs, residuals) if towards == "input" else (residuals, inputs)
    assert float((hit @ row).max()) > 0.999
    assert float((other @ row).max()) < 0.99
    with pytest.raises(ValueError, match="resample_dead_towards='target' is unknown"):
        TrainConfig(resample_dead_towards="target")


def test_a_fixed_zero_decoder_bias_lets_an_sae_on_constant_gradients_find_them():
    """The x² toy's gradients are all w_out: a learned b_dec absorbs it (the dictionary learns
    nothing), b_dec fixed at 0 puts it into a decoder row."""
    w = torch.nn.functional.normalize(
        torch.randn(16, generator=torch.Generator().manual_seed(0)), dim=0
    )  # seeded: not the test order's
    grads = w.repeat(2048, 1)
    tc = TrainConfig(n_samples=256 * 300, batch_size=256, lr=3e-3)
    fixed = train(SAEConfig(d_in=16, dict_size=8, l1=0.3, learn_b_dec=False), tc, grads).sae_
    learned = train(SAEConfig(d_in=16, dict_size=8, l1=0.3), tc, grads).sae_
    assert torch.equal(fixed.b_dec, torch.zeros(16))
    assert float((torch.nn.functional.normalize(fixed.W_dec.detach(), dim=-1) @ w).abs().max()) > 0.99
    assert torch.allclose(learned.b_dec, w, atol=1e-3)  # absorbed
    assert float(learned.encode(grads[:4]).abs().max()) < 1e-3  # and no latent is used
