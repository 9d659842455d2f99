"""Sweeps: each ensemble member is the single run it stands for; the grid's files; refusals."""

import json

import pytest
import torch

from sae.config import SAEConfig, TrainConfig
from sae.ensemble import Ensemble
from sae.files import CHECKPOINT, STATE, load_tensors
from sae.sweep import SWEEP_JSON, SWEEP_PNG, SWEEP_WEIGHTS, sweep, sweep_run
from sae.train import Trainer, train
from tests.sae_streams import sparse_stream

PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")


@pytest.mark.parametrize(
    "arch, extra",
    [("relu", {}), ("relu", dict(decoder_norm="weighted_l1")), ("topk", dict(k=3)), ("batchtopk", dict(k=3))],
)
def test_every_member_ends_where_its_single_run_ends(arch, extra):
    data = sparse_stream(20, 8, 0.8)
    # dead_window of two batches: AuxK joins the topk / batchtopk runs midway.
    tc = TrainConfig(n_samples=64 * 30, batch_size=64, warmup_steps=5, dead_window=128, seed=4)
    # Three L1s: on CPU the kernel takes two members a call (sae.ensemble.CPU_MEMBERS_PER_CALL), so a
    # chunk of two and a chunk of one.
    res = sweep(data, [0.05, 0.3, 1.0], [16, 24], dict(arch=arch, **extra), tc)
    assert len(res.saes) == 3 and [len(row) for row in res.saes] == [2, 2, 2]
    for i, l1 in enumerate(res.l1s):
        for j, n in enumerate(res.dict_sizes):
            single = train(SAEConfig(d_in=8, dict_size=n, l1=l1, arch=arch, **extra), tc, data).sae_
            member = res.saes[i][j]
            assert member.config == single.config
            for name in PARAMS:
                torch.testing.assert_close(
                    getattr(member, name), getattr(single, name), rtol=1e-5, atol=1e-6, msg=f"l1={l1} n={n} {name}"
                )
    if arch == "relu" and not extra:  # the L1 coefficient matters: the two rows differ
        assert not torch.allclose(res.saes[0][0].W_dec, res.saes[1][0].W_dec)


@pytest.mark.slow
def test_sweep_run_writes_grid_weights_and_plot_and_reads_the_size_heuristic(tmp_path):
    from sae.synthetic import SharkeyConfig, SharkeyData

    data = SharkeyData(SharkeyConfig(n_features=48, d=24, m=3.0, seed=1))  # the run's data: seeded by the run's seed
    out = tmp_path / "sweep"
    tc = TrainConfig(n_samples=512 * 1500, batch_size=512, lr=3e-3, seed=1)
    rec = sweep_run(
        out, "sharkey", [0.3, 3.0], [0.5, 1.0, 2.0], {}, tc, dict(n_features=48, d=24, m=3.0), eval_samples=4000
    )
    assert {p.name for p in out.iterdir()} == {SWEEP_JSON, SWEEP_PNG, SWEEP_WEIGHTS, CHECKPOINT, STATE}
    assert (out / SWEEP_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / SWEEP_JSON).read_text())
    assert saved["dict_sizes"] == [24, 48, 96] and len(saved["cells"]) == 6
    cell = {(c["l1"], c["dict_size"]): c for c in saved["cells"]}
    # At a suitable L1 the features are recovered once the dictionary has as many latents as
    # there are features; half as many latents cannot cover them; a far too large L1 kills latents.
    assert cell[(0.3, 48)]["mmcs_signed"] > 0.97 and cell[(0.3, 96)]["mmcs_signed"] > 0.97
    assert cell[(0.3, 24)]["mmcs_signed"] < 0.85
    assert cell[(3.0, 48)]["dead_fraction"] > cell[(0.3, 48)]["dead_fraction"]
    assert all(c["final_loss"] > 0 for c in saved["cells"])
    assert "0.3" in rec["table"] and "96" in rec["table"]
    # The weights file holds every cell: the reloaded (l1=0.3, n=48) SAE scores what the JSON says.
    from sae.metrics import mmcs_signed
    from sae.model import SparseAutoencoder

    tensors, _ = load_tensors(out / SWEEP_WEIGHTS)
    sae = SparseAutoencoder(SAEConfig(d_in=24, dict_size=48, l1=0.3))
    sae.load_state_dict({k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith("l1_0.n_1.")})
    assert mmcs_signed(data.features, sae.decoder.detach()) == pytest.approx(cell[(0.3, 48)]["mmcs_signed"], abs=1e-6)


def test_refusals_leave_nothing_behind(tmp_path):
    data = sparse_stream(8, 4)
    tc = TrainConfig(n_samples=64 * 2, batch_size=64)
    with pytest.raises(ValueError, match="repeated dictionary sizes"):
        sweep_run(tmp_path / "a", "sharkey", [0.1], [1.0, 1.01], {}, tc, dict(n_features=8, d=4, m=0.4))
    with pytest.raises(ValueError, match="share every setting but l1"):
        Ensemble(
            [
                Trainer(SAEConfig(d_in=4, dict_size=8, k=k, arch="topk"), tc).build(data).groups[0].members()[0]
                for k in (2, 3)
            ]
        )
    x = torch.randn(256, 4)
    x[200, 1] = float("nan")
    with pytest.raises(
        ValueError, match=r"batch at step \d contains NaN or inf; training stopped, no checkpoint was written"
    ):
        sweep(x, [0.1], [8], {}, TrainConfig(n_samples=64 * 4, batch_size=64, init_samples=64))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="--force"):
        sweep_run(tmp_path / "full", "sharkey", [0.1], [1.0], {}, tc)
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "extra, train_extra",
    [
        (dict(tied=True), {}),  # autograd through each member's forward
        (dict(orth=0.1), {}),
        ({}, dict(resample_every=6, resample_duplicates=0.5, dead_window=64)),  # the kernel, with resampling
        ({}, dict(bf16=True)),
    ],
)
def test_sweeps_have_what_single_runs_have_and_each_member_ends_where_its_single_run_ends(extra, train_extra):
    """Tied decoders, the orthogonality penalty, resampling and bf16 (refused by sweeps when they
    had a loop of their own) come from the one engine: every member equals its single run."""
    data = sparse_stream(20, 8, 0.8)
    tc = TrainConfig(n_samples=64 * 24, batch_size=64, warmup_steps=5, seed=4, **train_extra)
    res = sweep(data, [0.05, 0.3, 1.0], [16], extra, tc)
    for i, l1 in enumerate(res.l1s):
        single = train(SAEConfig(d_in=8, dict_size=16, l1=l1, **extra), tc, data).sae_
        for name, v in single.state_dict().items():
            tol = dict(rtol=2e-2, atol=2e-3) if tc.bf16 else dict(rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(res.saes[i][0].state_dict()[name], v, **tol, msg=f"l1={l1} {name}")
    if train_extra.get("resample_every"):  # resampling did happen: a run without it ends elsewhere
        plain = train(
            SAEConfig(d_in=8, dict_size=16, l1=0.05),
            TrainConfig(n_samples=64 * 24, batch_size=64, warmup_steps=5, seed=4),
            data,
        ).sae_
        assert not torch.allclose(plain.W_dec, res.saes[0][0].W_dec, atol=1e-3)


def test_a_stopped_sweep_resumes_to_the_same_weights(tmp_path):
    data = sparse_stream(20, 8, 0.8)
    full = sweep(
        data,
        [0.05, 0.3],
        [12, 16],
        dict(arch="batchtopk", k=3),
        TrainConfig(n_samples=64 * 30, batch_size=64, seed=2, resample_every=7),
    )
    sweep(
        data,
        [0.05, 0.3],
        [12, 16],
        dict(arch="batchtopk", k=3),
        TrainConfig(n_samples=64 * 11, batch_size=64, seed=2, resample_every=7),
        tmp_path,
    )
    with pytest.raises(ValueError, match=r"sweep l1s is \[0.05, 0.5\] here but \[0.05, 0.3\] in the run"):
        sweep(
            data,
            [0.05, 0.5],
            [12, 16],
            dict(arch="batchtopk", k=3),
            TrainConfig(n_samples=64 * 30, batch_size=64, seed=2, resample_every=7),
            tmp_path,
            resume=True,
        )
    with pytest.raises(ValueError, match="seed is 3 here but 2 in the run"):
        sweep(
            data,
            [0.05, 0.3],
            [12, 16],
            dict(arch="batchtopk", k=3),
            TrainConfig(n_samples=64 * 30, batch_size=64, seed=3, resample_every=7),
            tmp_path,
            resume=True,
        )
    resumed = sweep(
        data,
        [0.05, 0.3],
        [12, 16],
        dict(arch="batchtopk", k=3),
        TrainConfig(n_samples=64 * 30, batch_size=64, seed=2, resample_every=7),
        tmp_path,
        resume=True,
    )
    assert resumed.final_loss == full.final_loss
    for i in range(2):
        for j in range(2):
            for name, v in full.saes[i][j].state_dict().items():
                assert torch.equal(resumed.saes[i][j].state_dict()[name], v), (i, j, name)
