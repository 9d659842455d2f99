import json
import shutil
import subprocess

import numpy as np
import pytest

from polylens.directions.toys import planted_codes
from tests.cli_run import run


def test_digits_default_writes_labels_json_and_report(digits, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "cluster", "--out", out, "--json", tmp_path / "s.json", "--min-cluster-size", "15")
    assert code == 0, err
    labels = np.load(out / "labels.npy")
    assert labels.shape == (1797,) and labels.min() >= -1
    full = json.loads((out / "clusters.json").read_text())
    summary = json.loads((tmp_path / "s.json").read_text())
    for key in ("model", "layer", "n_points", "n_unique_codes", "method", "on", "agreement_ari", "seconds"):
        assert key in summary
    assert summary["n_points"] == 1797 and summary["model"] == "digits-cnn" and summary["layer"] == "fc1"
    for space in ("codes", "activations"):
        for key in ("n_clusters", "noise_frac", "purity", "nmi", "ari"):
            assert summary["on"][space][key] is not None
    assert summary["on"]["codes"]["n_clusters"] == labels.max() + 1 == len(full["clusters"])
    assert np.isclose(summary["on"]["codes"]["noise_frac"], (labels == -1).mean())
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained
    # an existing folder is not replaced without --force, and is with it
    code, _, err = run(capsys, "cluster", "--out", out)
    assert code == 2 and "--force" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(
        capsys, "cluster", "--out", out, "--force", "--method", "kmedoids", "--n-clusters", "10", "--on", "codes"
    )
    assert code == 0 and not (out / "labels_activations.npy").exists()


def test_codes_from_a_plain_npy(tmp_path, capsys):
    bits, truth = planted_codes(600, 5, 130, seed=4)
    np.save(tmp_path / "codes.npy", bits.astype(np.uint8))
    code, stdout, err = run(
        capsys,
        "cluster",
        "--codes",
        tmp_path / "codes.npy",
        "--out",
        tmp_path / "o",
        "--json",
        "-",
        "--min-cluster-size",
        "20",
    )
    assert code == 0, err
    res = json.loads(stdout)
    assert res["on"]["activations"] is None and res["on"]["codes"]["n_clusters"] == 5
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth, np.load(tmp_path / "o" / "labels.npy")) >= 0.95


def _bad_inputs(tmp_path):
    np.save(tmp_path / "few.npy", np.ones((4, 10), np.uint8))
    np.save(tmp_path / "notbinary.npy", np.full((50, 10), 3.0))
    np.save(tmp_path / "onedim.npy", np.ones(10, np.uint8))
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "noimages").mkdir()
    (tmp_path / "badimages").mkdir()
    (tmp_path / "badimages" / "x.png").write_bytes(b"not a png at all")
    (tmp_path / "exists").mkdir()
    return [
        (["--codes", tmp_path / "few.npy", "--min-cluster-size", "10"], "fewer than --min-cluster-size=10"),
        (["--codes", tmp_path / "notbinary.npy"], "0/1"),
        (["--codes", tmp_path / "onedim.npy"], "n_points, n_units"),
        (["--codes", tmp_path / "missing.npy"], "no such file"),
        (["--model", "gpt2", "--random-weights", "--input", tmp_path / "empty.txt"], "no text"),
        (["--model", "inceptionv1", "--random-weights", "--input", tmp_path / "noimages"], "holds no images"),
        (["--model", "inceptionv1", "--random-weights", "--input", tmp_path / "badimages"], "not an image"),
        (["--layer", "nope"], "unknown layer"),
        (["--codes", tmp_path / "few.npy", "--min-cluster-size", "0"], "positive"),
    ]


def test_bad_input_is_one_line_exit_2_nothing_written(digits, tmp_path, capsys):
    for argv, message in _bad_inputs(tmp_path):
        out = tmp_path / "never"
        code, stdout, err = run(capsys, "cluster", *argv, "--out", out)
        assert code == 2, (argv, err)
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
        assert not out.exists(), argv
    before = sorted(p.name for p in (tmp_path / "exists").iterdir())
    code, _, err = run(capsys, "cluster", "--codes", tmp_path / "few.npy", "--out", tmp_path / "exists")
    assert code == 2 and "already exists" in err and sorted(p.name for p in (tmp_path / "exists").iterdir()) == before


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (apt-get install -y chromium); the report screenshot needs it",
)
def test_report_renders_in_headless_chromium(digits, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "run"
    assert run(capsys, "cluster", "--out", out, "--on", "codes", "--min-cluster-size", "20")[0] == 0
    shot = tmp_path / "shot.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1000,1400",
    ]
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", (out / "report.html").as_uri()], capture_output=True, timeout=120
    )
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert img.shape[0] >= 1000 and img.std() > 10  # not blank: text, figures and thumbnails drawn
    assert (img < 128).mean() > 0.01  # dark pixels (text, plot lines, digit thumbnails) are present
