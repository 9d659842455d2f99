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
        "import sys, polylens, polylens.models, polylens.models.torchvision, polylens.models.gpt2, polylens.models.inception;"
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
