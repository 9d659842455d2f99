import json

import numpy as np
import pytest
import torch
from cli_run import run

from polylens.lens.codes import SplineCodes
from polylens.models import load_model

MODEL_FILE = """
import torch
from torch import nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.fc1 = nn.Linear(5, 12)
        self.fc2 = nn.Linear(12, 12)
        self.block = nn.Sequential(nn.Linear(12, 8), nn.ReLU())
        self.out = nn.Linear(8, 3)
        self.act = act

    def forward(self, x):
        h = self.act(self.fc1(x))
        h = F.relu(self.fc2(h))
        return self.out(self.block(h))


def relu_net():
    torch.manual_seed(0)
    return Net(nn.ReLU())


def gelu_net():
    torch.manual_seed(0)
    return Net(nn.GELU())


def example_inputs(n):
    return torch.randn(n, 5, generator=torch.Generator().manual_seed(1))
"""


@pytest.fixture(scope="module", autouse=True)
def trained(digits):
    """The commands load the default model from the run's shared cache (conftest trains it once)."""


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(MODEL_FILE)
    return str(path)


def test_codes_writes_packed_file_with_provenance(capsys, tmp_path):
    out = tmp_path / "c.npz"
    code, stdout, _ = run(capsys, "codes", "--layer", "conv2,fc1", "--n", 20, "--out", out)
    assert code == 0 and "20 inputs" in stdout
    codes = SplineCodes.load(str(out))
    assert len(codes) == 20 and codes.layer_names == ["conv2", "fc1"] and codes.n_units == 512 + 64
    assert codes.provenance["model"] == "digits-cnn" and codes.provenance["input_ids"][0] == "default:0"
    code, _, err = run(capsys, "codes", "--n", 2, "--out", out)
    assert code == 2 and "--force" in err and SplineCodes.load(str(out)).n_units == 576
    code, _, _ = run(capsys, "codes", "--layer", "conv*", "--position", "2,3", "--n", 4, "--out", tmp_path / "p.npz")
    at = SplineCodes.load(str(tmp_path / "p.npz"))
    full = SplineCodes.load(str(out)).layer("conv2").unpack()[:4].reshape(4, 32, 4, 4)
    assert code == 0 and [s.size for s in at.layers] == [16, 32]
    assert np.array_equal(at.layer("conv2").unpack(), full[:, :, 2, 3])


def test_density_json_plot_and_summary(capsys, tmp_path):
    plot = tmp_path / "d.png"
    code, stdout, err = run(
        capsys, "density", "--layer", "input", "--path", "interp", "--from", 0, "--to", 5, "--json", "-", "--plot", plot
    )
    assert code == 0
    res = json.loads(stdout)
    assert res["model"] == "digits-cnn" and res["exact"] is True and res["path"]["kind"] == "input"
    assert res["layers"] == ["conv1", "conv2", "fc1"] and res["n_crossings"] == len(res["crossings"]) > 0
    assert (
        set(res["crossings"][0]) == {"t", "layer", "unit", "breakpoint", "affine_change"}
        and res["crossings"][0]["affine_change"] > 0
    )
    assert res["density_per_unit_length"] == pytest.approx(res["n_crossings"] / res["path"]["length"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "crossings" in err
    args = ("density", "--layer", "input", "--path", "interp", "--from", 0, "--to", 5, "--json", "-")
    code, stdout, _ = run(capsys, *args, "--no-affine-change")
    without = json.loads(stdout)  # the same crossings, none with its affine change
    assert code == 0 and [(c["t"], c["unit"]) for c in without["crossings"]] == [
        (c["t"], c["unit"]) for c in res["crossings"]
    ]
    assert all(c["affine_change"] is None for c in without["crossings"])
    code, _, err = run(capsys, "density", "--path", "shell", "--layer", "relu1", "--no-affine-change")
    assert code == 2 and "--no-affine-change does not apply to --path shell" in err
    code, stdout, _ = run(
        capsys, "density", "--layer", "relu1", "--path", "scale", "--count-layers", "fc1", "--json", "-"
    )
    res = json.loads(stdout)
    assert code == 0 and res["layers"] == ["fc1"] and res["path"]["alpha_max"] == 2.0


def test_shell_profile_command(capsys, tmp_path):
    plot, js = tmp_path / "s.png", tmp_path / "s.json"
    code, stdout, _ = run(
        capsys, "density", "--path", "shell", "--layer", "relu2", "--n", 5, "--bins", 8, "--plot", plot, "--json", js
    )
    res = json.loads(js.read_text())
    assert code == 0 and res["n_paths"] == 5 and len(res["density"]) == 8 and plot.exists()


def test_custom_module_functional_activation(capsys, tmp_path, model_file):
    adapter = load_model(f"{model_file}:relu_net", activations={"fc2": "relu"})
    assert adapter.activation_layers == {"fc1": "relu", "fc2": "relu", "block.0": "relu"}
    code, stdout, _ = run(
        capsys,
        "density",
        "--model",
        f"{model_file}:relu_net",
        "--activation",
        "fc2=relu",
        "--layer",
        "input",
        "--from",
        0,
        "--to",
        3,
        "--json",
        "-",
    )
    res = json.loads(stdout)
    assert code == 0 and res["exact"] and res["layers"] == ["fc1", "fc2", "block.0"]
    np.save(tmp_path / "x.npy", np.ones(5, dtype=np.float32))
    code, _, _ = run(
        capsys,
        "codes",
        "--model",
        f"{model_file}:relu_net",
        "--input",
        tmp_path / "x.npy",
        "--input",
        2,
        "--out",
        tmp_path / "c.npz",
    )
    assert code == 0
    codes = SplineCodes.load(str(tmp_path / "c.npz"))
    with torch.no_grad():
        h = adapter.module.fc1(torch.ones(1, 5))
    assert np.array_equal(codes.layer("fc1").unpack()[0], (h[0] > 0).numpy())


def test_custom_module_weights_file(capsys, tmp_path, model_file):
    state = {k: v + 1 for k, v in load_model(f"{model_file}:relu_net").module.state_dict().items()}
    torch.save(state, tmp_path / "w.pt")
    loaded = load_model(f"{model_file}:relu_net", weights=str(tmp_path / "w.pt"))
    assert all(torch.equal(v, state[k]) for k, v in loaded.module.state_dict().items())
    state["extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    code, _, err = run(
        capsys,
        "codes",
        "--model",
        f"{model_file}:relu_net",
        "--weights",
        tmp_path / "bad.pt",
        "--out",
        tmp_path / "c.npz",
    )
    assert code == 2 and "0 missing keys [], 1 extra keys ['extra']" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["density", "--layer", "conv9"],
            "unknown layer 'conv9' for model digits-cnn; nearest: conv2, conv1; available layers: input, conv1",
        ),
        (["density", "--layer", "input", "--from", 3, "--to", 3], "zero-length"),
        (["density", "--layer", "relu1", "--count-layers", "conv1"], "choose from: conv2, fc1"),
        (["density", "--layer", "input", "--path", "circle"], "unknown --path"),
        (["density", "--layer", "input", "--from", 100000], "input index 100000"),
        (["codes", "--layer", "relu1", "--out", "{tmp}/c.npz"], "unknown layer 'relu1'"),
        (["codes", "--out", "{tmp}/c.txt"], "must end in .npz"),
        (["codes", "--layer", "fc1", "--position", "1,1", "--out", "{tmp}/c.npz"], "needs conv layers"),
        (["codes", "--position", "9,0", "--out", "{tmp}/c.npz"], "outside layer 'conv1'"),
        (["codes", "--model", "nosuch.py:f", "--out", "{tmp}/c.npz"], "does not exist"),
        (["codes", "--model", "{tmp}/net.py:nope", "--out", "{tmp}/c.npz"], "has no function 'nope'"),
        (["density", "--model", "{tmp}/net.py:gelu_net", "--layer", "input", "--exact"], "smooth"),
        (
            ["density", "--model", "{tmp}/net.py:relu_net", "--activation", "fc2=tanh", "--layer", "input"],
            "must be one of",
        ),
    ],
)
def test_bad_input_one_line_exit_2(capsys, tmp_path, model_file, argv, message):
    code, _, err = run(capsys, *[a.format(tmp=tmp_path) if isinstance(a, str) else a for a in argv])
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_smooth_mode_on_gelu_model(capsys, model_file):
    code, stdout, _ = run(
        capsys,
        "density",
        "--model",
        f"{model_file}:gelu_net",
        "--layer",
        "input",
        "--from",
        0,
        "--to",
        4,
        "--samples",
        300,
        "--json",
        "-",
    )
    res = json.loads(stdout)
    assert code == 0 and res["exact"] is False and res["layers"] == ["fc1", "block.0"]
