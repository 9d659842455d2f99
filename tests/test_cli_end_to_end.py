"""Commands run end to end as a user types them, on each adapter, with and without labels.

Each of these once crashed with a traceback while every finer test passed: a positional options
object that let ``None`` into the SAE steps, ``.name`` on a ``str`` path, and a summary line that
formatted a purity of ``None`` (every point noise, nothing to score).
"""

import json

import numpy as np
import pytest

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


# ---- every command on every adapter -----------------------------------------------------------------

TEXT = " ".join(
    "Polytopes tile the input space of a ReLU network, and each input lies in exactly one of them." for _ in range(40)
)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """The files each adapter's commands read: a FILE.py model and its .npy inputs, a tiny
    HuggingFace GPT-2 folder and a text, and a folder of 12 photos."""
    import torch
    from PIL import Image
    from transformers import GPT2Config, GPT2LMHeadModel

    from polylens.models.images import sample_images

    d = tmp_path_factory.mktemp("adapters")
    (d / "tiny.py").write_text(TINY_MODEL)
    x = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    np.save(d / "x.npy", x)
    np.save(d / "x0.npy", x[0])
    np.save(d / "x1.npy", x[1])
    (d / "text.txt").write_text(TEXT)
    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128, vocab_size=50257)
    ).eval().save_pretrained(d / "gpt2")
    (d / "photos").mkdir()
    crops = sample_images(6)
    for i, img in enumerate([*crops, *crops.flip(-1)]):
        pixels = (img.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(pixels).save(d / "photos" / f"p{i:02d}.png")
    return d


MODEL = {
    "digits": [],
    "file": ["--model", "{d}/tiny.py:build"],
    "gpt2": ["--model", "gpt2", "--weights", "{d}/gpt2"],
    "inceptionv1": ["--model", "inceptionv1", "--random-weights"],
    # the two trained networks that install offline, each beside its seeded random-weights twin
    "lite0": ["--model", "efficientnet-lite0"],
    "lite0-twin": ["--model", "efficientnet-lite0", "--random-weights"],
    "minilm": ["--model", "minilm-l6"],
    "minilm-twin": ["--model", "minilm-l6", "--random-weights"],
}
TRAINED_RUNS = {
    # the last block's output space: the head's ReLU6 is its only layer downstream, so a path crosses
    # ~10^4 boundaries; the affine change at each (a backward and a forward pass a batch) is left out
    "density": (
        ["--layer", "_blocks.15", "--from", "0", "--to", "1", "--profile-steps", "10", "--no-affine-change"],
        {"exact": True, "layers": ["_bn1"]},
    ),
    "codes": (["--layer", "_blocks.15._bn1", "--n", "2"], {"n_inputs": 2}),
    "shell": (["--path", "shell", "--layer", "_blocks.15", "--n", "1", "--bins", "4"], {"n_paths": 1, "exact": True}),
    "cluster": (["--layer", "_blocks.10._bn0", "--n", "12"], {"n_points": 12}),
    "compare": (["--layer", "_blocks.15._bn0", "--n", "4", "--k", "2"], {"n_inputs": 4, "k": 2, "width": 1152}),
    "cache": (["--layer", "_blocks.15._bn0", "--n", "2"], {"width": 1152, "rows": 2 * 49}),
}
TEXT_RUNS = {
    "codes": (["--input", "one short text", "--layer", "blocks.0.mlp.hook_pre"], {"n_inputs": 1}),
    # GELU: sampled, and each sign change refined by bisection; in the last block, on texts of a
    # few tokens, a path still crosses a few thousand boundaries (about a minute here): the trained
    # model only (its twin runs the same code)
    "density": (
        ["--layer", "blocks.5.hook_resid_pre", "--from", "The cat sat.", "--to", "The dog ran.", "--samples", "50"],
        {"exact": False, "layers": ["blocks.5.mlp.hook_pre"]},
    ),
    "shell": (
        ["--path", "shell", "--layer", "blocks.5.hook_resid_pre", "--input", "Hi.", "--bins", "2", "--samples", "8"],
        {"n_paths": 1, "exact": False},
    ),
    "cluster": (["--input", "{d}/text.txt", "--layer", "blocks.1.mlp.hook_pre"], {"layer": "blocks.1.mlp.hook_pre"}),
    "compare": (
        ["--layer", "blocks.1.mlp.hook_post", "--input", "{d}/text.txt", "--n", "2", "--context", "16"],
        {"n_inputs": 2, "n_rows": 30},  # [CLS] left out: 15 rows a context
    ),
    "cache": (["--layer", "blocks.3.mlp.hook_pre", "--input", "{d}/text.txt", "--tokens", "200"], {"width": 1536}),
}
# (adapter, command) -> (arguments after the model's, the JSON keys and values the run must report)
RUNS = {
    ("digits", "codes"): (["--layer", "fc1", "--n", "20"], {"n_inputs": 20, "n_units": 64}),
    ("file", "codes"): (["--input", "{d}/x.npy"], {"n_inputs": 40, "n_units": 16}),
    ("gpt2", "codes"): (["--input", "one short text", "--layer", "blocks.0.mlp.hook_pre"], {"n_inputs": 1}),
    ("inceptionv1", "codes"): (["--layer", "mixed3a_1x1_pre_relu_conv", "--n", "2"], {"n_inputs": 2}),
    ("digits", "density"): (["--layer", "relu1", "--from", "0", "--to", "1"], {"exact": True}),
    ("file", "density"): (["--layer", "0", "--from", "{d}/x0.npy", "--to", "{d}/x1.npy"], {"exact": True}),
    ("gpt2", "density"): (
        ["--layer", "blocks.0.hook_resid_post", "--from", "The cat sat.", "--to", "The dog ran."],
        {"exact": False},  # GELU: sampled
    ),
    # InceptionV1: the space of mixed5b's 3x3 bottleneck, whose one ReLU layer downstream is the
    # 3x3 branch (the other branches are shown not to move; max-pool lies upstream of the path)
    ("inceptionv1", "density"): (
        ["--layer", "mixed5b_3x3_bottleneck", "--from", "0", "--to", "1", "--profile-steps", "10"],
        {"exact": True},
    ),
    ("digits", "shell"): (["--path", "shell", "--layer", "relu1", "--n", "4", "--bins", "4"], {"n_paths": 4}),
    ("file", "shell"): (["--path", "shell", "--layer", "0", "--input", "{d}/x.npy", "--bins", "4"], {"n_paths": 40}),
    ("gpt2", "shell"): (
        ["--path", "shell", "--layer", "blocks.0.hook_resid_post", "--n", "1", "--bins", "2", "--samples", "8"],
        {"n_paths": 1},
    ),
    ("inceptionv1", "shell"): (
        ["--path", "shell", "--layer", "mixed5b_3x3_bottleneck", "--n", "1", "--bins", "4"],
        {"n_paths": 1, "exact": True},
    ),
    ("digits", "cluster"): (["--layer", "fc1"], {"n_points": 1797}),
    ("file", "cluster"): (["--input", "{d}/x.npy", "--layer", "0"], {"n_points": 40}),
    ("gpt2", "cluster"): (
        ["--input", "{d}/text.txt", "--layer", "blocks.1.mlp.hook_pre", "--skip", "4", "--per-seq", "4"],
        {"layer": "blocks.1.mlp.hook_pre"},
    ),
    ("inceptionv1", "cluster"): (["--input", "{d}/photos", "--layer", "mixed3a"], {"n_points": 12}),
    ("digits", "compare"): (["--layer", "relu2", "--n", "30"], {"n_inputs": 30, "width": 32}),
    ("file", "compare"): (["--layer", "0", "--input", "{d}/x.npy"], {"n_inputs": 40, "width": 16}),
    ("gpt2", "compare"): (
        ["--layer", "blocks.1.mlp.hook_post", "--input", "{d}/text.txt", "--n", "2", "--context", "16"],
        {"n_inputs": 2, "n_rows": 30},  # BOS left out: 15 rows a context
    ),
    ("inceptionv1", "compare"): (["--layer", "mixed3a", "--n", "2", "--k", "2"], {"n_inputs": 2, "k": 2}),
    ("digits", "cache"): (["--layer", "conv2", "--n", "20"], {"rows": 20 * 16}),
    ("file", "cache"): (["--layer", "0", "--input", "{d}/x.npy"], {"rows": 40, "width": 16}),
    ("gpt2", "cache"): (
        ["--layer", "blocks.0.mlp.hook_pre", "--input", "{d}/text.txt", "--context", "32"],
        {"width": 128},
    ),
    ("inceptionv1", "cache"): (["--layer", "conv2d2", "--n", "2"], {"width": 192}),
    **{(m, c): run for m in ("lite0", "lite0-twin") for c, run in TRAINED_RUNS.items()},
    **{(m, c): run for m in ("minilm", "minilm-twin") for c, run in TEXT_RUNS.items()},
    ("minilm-twin", "density"): None,
    ("minilm-twin", "shell"): None,
}


def _out_args(command: str, d) -> list:
    if command == "codes":
        return ["--out", d / "c.npz"]
    if command in ("cluster", "cache"):
        return ["--out", d / "out"]
    return []


RUNS = {key: run for key, run in RUNS.items() if run is not None}


@pytest.mark.parametrize("adapter, command", sorted(RUNS), ids=lambda v: v if isinstance(v, str) else None)
def test_every_command_on_every_adapter(adapter, command, adapters, digits, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POLYLENS_SAMPLE_SCALE", "0.003")  # a few SAE steps: the run, not the result, is tested
    extra, expected = RUNS[adapter, command]
    argv = [
        "density" if command == "shell" else command,
        *(["--model", "digits"] if (adapter, command) == ("digits", "compare") else []),
        *[a.format(d=adapters) for a in MODEL[adapter]],
        *[a.format(d=adapters) for a in extra],
        *_out_args(command, tmp_path),
        "--json",
        tmp_path / "r.json",
        "--no-progress",
    ]
    code, out, err = run(capsys, *argv)
    assert code == 0, err[-2000:]
    assert "Traceback" not in err and out.strip()
    result = json.loads((tmp_path / "r.json").read_text())
    for key, value in expected.items():
        assert result[key] == value, (key, result[key])
    # digits carry their classes; cluster labels GPT-2's tokens and InceptionV1's images by predicted class
    labelled = adapter == "digits" or (adapter != "file" and command == "cluster")
    if command == "cluster":
        assert (result["on"]["codes"]["nmi"] is not None) == labelled


def test_torchvision_adapter_end_to_end(tmp_path, capsys):
    pytest.importorskip("torchvision", reason="torchvision is optional and not installed here")
    code, out, err = run(
        capsys, "codes", "--model", "torchvision:resnet18", "--random-weights", "--n", "2", "--out", tmp_path / "c.npz"
    )
    assert code == 0, err


def test_gpt2_cluster_where_every_point_is_noise_prints_its_summary(adapters, tmp_path, capsys):
    # the case: labelled points (tokens) of a random model, all noise, so purity is undefined
    code, out, err = run(
        capsys,
        "cluster",
        *[a.format(d=adapters) for a in MODEL["gpt2"]],
        "--input",
        adapters / "text.txt",
        "--skip",
        "4",
        "--per-seq",
        "4",
        "--min-cluster-size",
        "32",  # all 32 points: HDBSCAN does not select the root, so every point is noise
        "--out",
        tmp_path / "o",
        "--no-progress",
    )
    assert code == 0 and "Traceback" not in err, err
    assert (np.load(tmp_path / "o" / "labels.npy") == -1).all()
    assert "purity n/a" in out


def test_progress_bar_shows_unless_no_progress(digits, tmp_path, capsys):
    code, _, err = run(capsys, "codes", "--n", "20", "--out", tmp_path / "a.npz")
    assert code == 0 and "/20" in err and "input/s" in err  # done of total, and the rate
    code, _, err = run(capsys, "codes", "--n", "20", "--out", tmp_path / "b.npz", "--no-progress")
    assert code == 0 and err == ""


def test_library_messages_name_the_flag_the_user_typed(digits, capsys):
    # polylens.lens.shell checks n_bins (its parameter); the line names --bins, what was typed
    code, out, err = run(capsys, "density", "--path", "shell", "--layer", "relu1", "--bins", "0")
    assert code == 2 and err.strip() == "polylens: error: --bins=0 must be a positive integer"


@pytest.mark.parametrize(
    "model, cache_args, width",
    [
        (["--model", "efficientnet-lite0"], ["--layer", "_blocks.15._bn0", "--n", "2"], 1152),
        (
            ["--model", "minilm-l6"],
            ["--layer", "blocks.3.mlp.hook_pre", "--input", "{d}/text.txt", "--tokens", "300"],
            1536,
        ),
    ],
    ids=["lite0", "minilm"],
)
def test_sae_trains_on_a_store_written_from_a_trained_model(model, cache_args, width, adapters, tmp_path, capsys):
    """The path to real activations: cache writes a store from the trained network, sae train reads it."""
    store, run_dir = tmp_path / "store", tmp_path / "sae"
    argv = [*model, *[a.format(d=adapters) for a in cache_args], "--out", store, "--no-progress"]
    code, _, err = run(capsys, "cache", *argv)
    assert code == 0, err[-2000:]
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["model"] == model[1] and manifest["width"] == width and manifest["complete"]
    sae_args = ["--data", store, "--dict-size", "64", "--samples", "512", "--batch-size", "64", "--eval-samples", "64"]
    code, _, err = run(capsys, "sae", "train", *sae_args, "--out", run_dir, "--no-progress")
    assert code == 0, err[-2000:]
    cfg = json.loads((run_dir / "saelens" / "cfg.json").read_text())
    assert (cfg["d_in"], cfg["d_sae"]) == (width, 64)
