"""Nothing lost, whatever happens to a run: kills between checkpoint files, two runs into one
folder, --force over a finished run that then fails, Ctrl-C, and --resume flags that disagree."""

import json

import pytest
import torch

from sae.config import SAEConfig, TrainConfig
from sae.runs import run_lock, train_run
from sae.train import Trainer, load_sae
from tests.cli_run import run
from tests.sae_streams import sparse_stream

TMS = [
    "--data",
    "tms",
    "--features",
    "12",
    "--dim",
    "6",
    "--eval-samples",
    "500",
    "--batch-size",
    "64",
    "--no-progress",
]


def _config(n):
    return SAEConfig(d_in=6, dict_size=12), TrainConfig(n_samples=64 * n, batch_size=64, seed=1)


def _same(a, b):
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_a_kill_between_the_checkpoint_files_keeps_the_run_resumable(tmp_path):
    data = sparse_stream(12, 6)
    sc, tc = _config(30)
    full = Trainer(sc, tc).fit(data).sae_
    part = Trainer(sc, TrainConfig(n_samples=64 * 10, batch_size=64, seed=1), tmp_path)
    part.fit(data)
    stale = json.loads((tmp_path / "checkpoint.json").read_text())
    part.config = TrainConfig(n_samples=64 * 12, batch_size=64, seed=1)
    part.fit(data)  # checkpoint at step 12 ...
    (tmp_path / "checkpoint.json").write_text(json.dumps(stale))  # ... killed before its JSON was replaced
    resumed = Trainer.resume(tmp_path, n_samples=64 * 30)
    assert resumed.build(data).step == 12
    assert _same(full, resumed.fit(data).sae_)


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with run_lock(out):
        code, _, err = run(capsys, "sae", "train", *TMS, "--samples", 640, "--out", out, "--force")
    assert code == 2 and "another run is writing" in err and len(err.strip().splitlines()) == 1
    assert list(out.iterdir()) == []


def test_force_over_a_finished_run_that_then_fails_leaves_no_old_files(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert run(capsys, "sae", "train", *TMS, "--samples", 640, "--l1", "0.05", "--out", out)[0] == 0
    assert (out / "saelens").is_dir() and "evaluation" in json.loads((out / "run.json").read_text())
    import sae.runs

    monkeypatch.setattr(sae.runs, "make_data", lambda spec, seed=0, **kw: Interrupting(4))  # the new run stops mid-way
    with pytest.raises(KeyboardInterrupt):
        train_run(out, "sharkey", {"l1": 0.2}, TrainConfig(n_samples=640, batch_size=64), force=True)
    left = {p.name for p in out.iterdir()}
    assert "saelens" not in left  # the old export is gone, not left beside the new record
    record = json.loads((out / "run.json").read_text())
    assert record["sae"]["l1"] == 0.2 and "evaluation" not in record
    assert load_sae(out).config.l1 == 0.2  # the checkpoint is the new run's (saved on the interrupt)


class Interrupting:
    """A sparse stream that raises KeyboardInterrupt on its n-th batch (a Ctrl-C mid-run)."""

    def __init__(self, n):
        self.inner, self.n, self.calls = sparse_stream(12, 6), n, 0
        self.d, self.features = self.inner.d, self.inner.features

    def sample(self, m, generator=None):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.inner.sample(m, generator)


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tmp_path):
    sc, tc = _config(30)
    full = Trainer(sc, tc).fit(sparse_stream(12, 6)).sae_
    with pytest.raises(KeyboardInterrupt):
        Trainer(sc, tc, tmp_path).fit(Interrupting(15))
    resumed = Trainer.resume(tmp_path)
    assert 0 < resumed.build(sparse_stream(12, 6)).step < 30
    assert _same(full, resumed.fit(sparse_stream(12, 6)).sae_)


def test_resume_refuses_flags_that_disagree_with_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, "sae", "train", *TMS, "--samples", 640, "--l1", "0.05", "--out", out)[0] == 0
    before = (out / "checkpoint.safetensors").read_bytes()
    for extra, message in [
        (["--l1", "0.1"], "--l1 0.1 disagrees with the run"),
        (["--dict-size", "7"], "dict_size=24"),
        (["--seed", "5"], "seed=0"),
        (["--lr", "0.01"], "lr=0.001"),
        (["--arch", "topk"], "arch=relu"),
        (["--samples", "64"], "below the 640 samples"),
        (["--features", "20", "--data", "tms"], "features=20"),
    ]:
        code, _, err = run(capsys, "sae", "train", "--resume", "--out", out, "--no-progress", *extra)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert (out / "checkpoint.safetensors").read_bytes() == before
    # the run's own values are accepted
    code, _, err = run(
        capsys, "sae", "train", "--resume", "--out", out, "--no-progress", "--l1", "0.05", "--samples", "1280"
    )
    assert code == 0, err
