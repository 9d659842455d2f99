"""Commands run end to end as a user types them, on each adapter, with and without labels.

Each of these once crashed with a traceback while every finer test passed: a positional options
object that let ``None`` into the SAE steps, ``.name`` on a ``str`` path, and a summary line that
formatted a purity of ``None`` (every point noise, nothing to score).
"""

import json

import numpy as np

from tests.cli_run import run

TINY_MODEL = """
import torch


def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
"""


def test_compare_model_without_sae_steps_uses_the_default(digits, tmp_path, capsys, monkeypatch):
    import cli.experiments.sae_methods as sae_methods

    seen = []
    real = sae_methods.train_sae

    def spy(rows, steps, seed, **fields):
        seen.append(steps)
        return real(rows, 5, seed, **fields)  # the default's value is checked; the run itself stays short

    monkeypatch.setattr(sae_methods, "train_sae", spy)
    code, out, err = run(
        capsys, "compare", "--model", "digits", "--layer", "relu2", "--n", "40", "--json", tmp_path / "r.json"
    )
    assert code == 0, err
    assert seen == [sae_methods.LayerSAEOptions().steps] * 3
    result = json.loads((tmp_path / "r.json").read_text())
    assert set(result["methods"]) == {"activation_pca", "gradient_pca", "lib", "sae", "gradient_sae", "gsae", "random"}


def test_cluster_a_file_model_on_an_npy_input(tmp_path, capsys):
    (tmp_path / "tiny.py").write_text(TINY_MODEL)
    x = np.random.default_rng(0).standard_normal((120, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "run"
    code, stdout, err = run(
        capsys,
        "cluster",
        "--model",
        f"{tmp_path / 'tiny.py'}:build",
        "--input",
        tmp_path / "x.npy",
        "--layer",
        "0",
        "--out",
        out,
        "--no-progress",
    )
    assert code == 0, err
    labels = np.load(out / "labels.npy")
    assert labels.shape == (120,)
    report = json.loads((out / "clusters.json").read_text())
    assert report["n_points"] == 120 and report["on"]["codes"]["purity"] is None  # no labels: nothing to score
    # the points' codes are the signs of the first layer's outputs, computed here by hand
    import torch

    from polylens.models import load_model

    net = load_model(f"{tmp_path / 'tiny.py'}:build").module
    bits = (net[0](torch.from_numpy(x)) > 0).numpy()
    assert report["n_unique_codes"] == len({row.tobytes() for row in bits})


def test_summary_line_when_every_point_is_noise(tmp_path, capsys):
    # 30 distinct random codes, min cluster size 25: HDBSCAN finds no cluster, so purity is undefined
    bits = np.random.default_rng(1).integers(0, 2, (30, 64)).astype(np.uint8)
    np.save(tmp_path / "codes.npy", bits)
    labels_path = tmp_path / "run"
    code, stdout, err = run(
        capsys, "cluster", "--codes", tmp_path / "codes.npy", "--min-cluster-size", "25", "--out", labels_path
    )
    assert code == 0, err
    assert (np.load(labels_path / "labels.npy") == -1).all()
    assert "clusters" in stdout and "Traceback" not in err
