"""torchvision adapter: a clear one-line error where torchvision cannot be used; never breaks import polylens."""

import subprocess
import sys

import pytest
import torch

from polylens.models import load_model
from polylens.models.torchvision import import_torchvision, torchvision_available


def test_missing_torchvision_is_one_line_value_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if not installed
    with pytest.raises(ValueError, match="torchvision is not usable here") as err:
        load_model("torchvision:googlenet")
    assert "\n" not in str(err.value)
    assert torchvision_available()[0] is False


def test_cuda_wheel_operator_error_is_one_line_value_error(monkeypatch, tmp_path):
    # PyPI's torchvision is a CUDA build; against a CPU torch its import dies registering operators.
    pkg = tmp_path / "torchvision"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ValueError, match=r"not usable here.*operator torchvision::nms does not exist") as err:
        import_torchvision()
    assert "\n" not in str(err.value)


def test_import_polylens_stays_light():
    code = (
        "import sys, polylens, polylens.models, polylens.models.torchvision, polylens.models.gpt2;"
        "import polylens.models.inception;"
        "print(sorted(m for m in ('torchvision', 'transformer_lens', 'transformers', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not torchvision_available()[0], reason="torchvision does not import here")
def test_googlenet_random_weights_preactivations():
    adapter = load_model("torchvision:googlenet", random_weights=True)
    assert adapter.name == "torchvision:googlenet (random weights)"
    assert "conv1.bn" in adapter.activation_layers and adapter.piecewise_linear
    from polylens.capture import capture

    x = adapter.default_inputs(2)
    got = capture(adapter.module, x, ["conv1.bn"])
    assert (got.activations["conv1.bn"] < 0).any()  # the in-place ReLU did not overwrite it
    assert adapter.module(x).shape == (2, 1000)
    with pytest.raises(ValueError, match="unknown torchvision model"):
        load_model("torchvision:nonet", random_weights=True)


FAKE_TORCHVISION = '''
"""A stand-in torchvision exposing the API the adapter uses, with torchvision's in-place ReLUs."""
__version__ = "0.0-fake"
'''

FAKE_MODELS = """
import torch
import torch.nn.functional as F
from torch import nn


class BasicConv2d(nn.Module):  # as in torchvision's GoogLeNet: functional in-place ReLU
    def __init__(self, i, o):
        super().__init__()
        self.conv = nn.Conv2d(i, o, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(o)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = BasicConv2d(3, 4)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=4)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 1000)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv2(self.conv1(x)))).flatten(1))


def list_models(module=None):
    return ["tinynet"]


def get_model(name, weights=None, **kwargs):
    if weights is not None:
        raise RuntimeError("no network")
    return TinyNet()
"""


@pytest.fixture
def fake_torchvision(monkeypatch, tmp_path):
    pkg = tmp_path / "torchvision"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(FAKE_TORCHVISION)
    (pkg / "models.py").write_text(FAKE_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    yield
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def test_adapter_logic_on_a_stand_in_torchvision(fake_torchvision, tmp_path):
    from safetensors.torch import save_file

    from polylens.capture import capture

    adapter = load_model("torchvision:tinynet", random_weights=True, seed=1)
    assert adapter.name == "torchvision:tinynet (random weights)"
    assert adapter.activation_layers == {"conv1.bn": "relu", "conv2": "relu"}  # forward order
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    got = capture(adapter.module, x, ["conv1.bn", "conv2"], stop_early=False)
    for name in ("conv1.bn", "conv2"):
        assert (got.activations[name] < 0).any()  # not overwritten by the (formerly) in-place ReLUs
    with pytest.raises(ValueError, match="pretrained weights unavailable.*random_weights=True"):
        load_model("torchvision:tinynet")
    with pytest.raises(ValueError, match="unknown torchvision model 'resnet9'"):
        load_model("torchvision:resnet9", random_weights=True)
    state = {k: v.contiguous() for k, v in adapter.module.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    again = load_model("torchvision:tinynet", weights=str(tmp_path / "w.safetensors"))
    assert again.name == "torchvision:tinynet"
    assert torch.equal(again.module(x), adapter.module(x))
    state.pop("fc.bias")
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match=r"missing keys \['fc.bias'\]"):
        load_model("torchvision:tinynet", weights=str(tmp_path / "bad.safetensors"))
