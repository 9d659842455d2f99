"""``polylens sae train|eval|sweep`` end to end: files, JSON, resume, and one-line errors."""

import json

import numpy as np
import pytest
import torch
from cli_run import run

from sae.export import import_saelens
from sae.train import load_sae

TMS = [
    "--data",
    "tms",
    "--features",
    "12",
    "--dim",
    "6",
    "--batch-size",
    "64",
    "--warmup",
    "5",
    "--eval-samples",
    "2000",
]


def test_train_writes_checkpoint_export_and_eval_reproduces_its_numbers(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run(
        capsys, "sae", "train", *TMS, "--samples", 64 * 60, "--l1", 0.1, "--dict-size", 24, "--out", out, "--json", "-"
    )
    assert code == 0, err
    rec = json.loads(stdout)
    assert rec["steps"] == 60 and rec["sae"]["dict_size"] == 24 and rec["data"]["options"] == {"n_features": 12, "d": 6}
    ev = rec["evaluation"]
    assert (
        0 <= ev["mmcs_signed"] <= 1 and ev["n_samples"] == 2000 and "mmcs_signed" in err
    )  # the summary goes to stderr with --json -
    assert "mmcs" not in ev  # "mmcs" is compare's sign-invariant score; the SAE's signed one has its own name
    sae = load_sae(out)
    exported = import_saelens(out / "saelens")
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(sae, name), getattr(exported, name))
    # eval re-creates the run's data (same seed, same held-out stream): the same numbers.
    code, stdout, _ = run(capsys, "sae", "eval", out, "--json", "-")
    assert code == 0
    assert json.loads(stdout)["evaluation"] == pytest.approx(ev)
    # ... and on a SAELens folder alone, given the data.
    code, stdout, _ = run(capsys, "sae", "eval", out / "saelens", *TMS[:6], "--eval-samples", 2000, "--json", "-")
    assert code == 0 and json.loads(stdout)["evaluation"]["mmcs_signed"] == pytest.approx(ev["mmcs_signed"])


def test_resume_from_the_command_line_equals_one_uninterrupted_run(capsys, tmp_path):
    args = [*TMS, "--arch", "topk", "--k", "2", "--seed", "3", "--no-progress"]
    assert run(capsys, "sae", "train", *args, "--samples", 64 * 40, "--out", tmp_path / "full")[0] == 0
    assert run(capsys, "sae", "train", *args, "--samples", 64 * 15, "--out", tmp_path / "part")[0] == 0
    code, _, err = run(capsys, "sae", "train", "--resume", "--samples", 64 * 40, "--out", tmp_path / "part")
    assert code == 0, err
    full, resumed = load_sae(tmp_path / "full"), load_sae(tmp_path / "part")
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_array_file_without_ground_truth(capsys, tmp_path):
    x = np.random.default_rng(0).standard_normal((512, 5)).astype(np.float32)
    np.save(tmp_path / "acts.npy", x)
    code, stdout, err = run(
        capsys,
        "sae",
        "train",
        "--data",
        tmp_path / "acts.npy",
        "--samples",
        64 * 10,
        "--batch-size",
        64,
        "--eval-samples",
        256,
        "--out",
        tmp_path / "run",
        "--json",
        "-",
    )
    assert code == 0, err
    ev = json.loads(stdout)["evaluation"]
    assert ev["mmcs_signed"] is None and ev["explained_variance"] is not None  # no ground truth: null, not NaN
    assert json.loads((tmp_path / "run" / "run.json").read_text())["evaluation"]["mmcs_signed"] is None


def test_sweep_command_writes_its_folder(capsys, tmp_path):
    code, stdout, err = run(
        capsys,
        "sae",
        "sweep",
        *TMS,
        "--samples",
        64 * 20,
        "--l1s",
        "0.05,0.5",
        "--ratios",
        "1,2",
        "--out",
        tmp_path / "sw",
        "--json",
        "-",
    )
    assert code == 0, err
    rec = json.loads(stdout)
    assert rec["dict_sizes"] == [12, 24] and len(rec["cells"]) == 4
    assert {p.name for p in (tmp_path / "sw").iterdir()} == {
        "sweep.json",
        "sweep.png",
        "sweep.safetensors",
        "checkpoint.safetensors",
        "checkpoint.json",
    }


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sae", "train", "--arch", "transcoder", "--out", "{tmp}/r"], "invalid choice: 'transcoder'"),
        (["sae", "train", "--init", "magic", "--out", "{tmp}/r"], "invalid choice: 'magic'"),
        (["sae", "train", "--l1", "-1", "--out", "{tmp}/r"], "--l1=-1.0 must be >= 0"),
        (["sae", "train", "--samples", "0", "--out", "{tmp}/r"], "--samples=0 must be positive"),
        (["sae", "train", "--data", "{tmp}/none.npy", "--out", "{tmp}/r"], "data file {tmp}/none.npy does not exist"),
        (
            ["sae", "train", "--data", "{tmp}/acts.npy", "--features", "5", "--out", "{tmp}/r"],
            "--features applies to --data sharkey or tms",
        ),
        (
            ["sae", "train", "--data", "{tmp}/nan.npy", "--batch-size", "64", "--out", "{tmp}/r"],
            "contain NaN or inf; clean the data first",
        ),
        (["sae", "train", "--resume", "--out", "{tmp}/r"], "nothing to resume"),
        (["sae", "train", "--out", "{tmp}/full"], "is not empty; pass --force"),
        (["sae", "eval", "{tmp}/none"], "does not exist"),
        (["sae", "eval", "{tmp}/full"], "holds neither a polylens checkpoint"),
        (["sae", "sweep", "--l1s", "0.1,x", "--out", "{tmp}/s"], "--l1s takes comma-separated numbers"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(capsys, tmp_path, argv, message):
    np.save(tmp_path / "acts.npy", np.ones((300, 4), np.float32))
    bad = np.ones((300, 4), np.float32)
    bad[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("keep")
    code, _, err = run(capsys, *(a.format(tmp=tmp_path) for a in argv))
    assert code == 2, err
    assert message.format(tmp=tmp_path) in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


def test_eval_rejects_other_dimension_and_corrupt_checkpoint(capsys, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, "sae", "train", *TMS, "--samples", 64 * 5, "--out", out)[0] == 0
    np.save(tmp_path / "x.npy", np.ones((100, 7), np.float32))
    code, _, err = run(capsys, "sae", "eval", out, "--data", tmp_path / "x.npy")
    assert code == 2 and "data dimension 7 does not match the SAE's d_in=6" in err
    (out / "checkpoint.safetensors").write_bytes(b"junk")
    code, _, err = run(capsys, "sae", "eval", out)
    assert code == 2 and "not a readable safetensors file" in err and err.count("\n") == 1


def test_outputs_get_the_usual_file_mode(capsys, tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the final files must get 0666 minus the umask."""
    import os

    mask = os.umask(0o022)
    try:
        assert (
            run(
                capsys,
                "sae",
                "train",
                *TMS,
                "--samples",
                64 * 2,
                "--out",
                tmp_path / "r",
                "--json",
                tmp_path / "r.json",
            )[0]
            == 0
        )
    finally:
        os.umask(mask)
    for p in (tmp_path / "r.json", tmp_path / "r" / "run.json", tmp_path / "r" / "checkpoint.safetensors"):
        assert p.stat().st_mode & 0o777 == 0o644, p


def test_eval_gives_the_per_feature_best_cosines_and_their_histogram(capsys, tmp_path):
    code, _, err = run(capsys, "sae", "train", *TMS, "--samples", 64 * 20, "--out", tmp_path / "r", "--no-progress")
    assert code == 0, err
    code, stdout, err = run(capsys, "sae", "eval", tmp_path / "r", "--json", "-", "--plot", tmp_path / "h.png")
    assert code == 0, err
    rec = json.loads(stdout)
    assert len(rec["best_signed_cos"]) == 12 and sum(rec["best_signed_cos"]) / 12 == pytest.approx(
        rec["evaluation"]["mmcs_signed"], abs=1e-6
    )
    assert json.loads((tmp_path / "r" / "run.json").read_text())["best_signed_cos"] == pytest.approx(
        rec["best_signed_cos"], abs=1e-6
    )
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    np.save(tmp_path / "a.npy", np.random.default_rng(0).normal(size=(300, 6)).astype(np.float32))
    code, _, err = run(
        capsys, "sae", "eval", tmp_path / "r", "--data", tmp_path / "a.npy", "--plot", tmp_path / "h2.png"
    )
    assert code == 2 and "need ground truth" in err and not (tmp_path / "h2.png").exists()
