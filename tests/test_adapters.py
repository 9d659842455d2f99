"""The one adapter interface: a new model is one ModelAdapter subclass in one file, and every built-in
adapter (digits, a FILE.py model, a tiny random GPT-2, InceptionV1 with random weights) keeps the contract
the lens, clustering and CLI code reads."""

import importlib.util
import inspect
import sys
from typing import get_args

import numpy as np
import pytest
import torch
from torch import nn

from polylens.capture import capture
from polylens.lens.codes import extract_codes
from polylens.models import ModelAdapter, adapter_class, load_model
from polylens.models.base import Activation

TOY_FILE = '''
import torch
from torch import nn

from polylens.models.base import ModelAdapter


class ToyAdapter(ModelAdapter):
    """A two-layer ReLU MLP on R^3, the whole adapter in this one file."""

    spec_pattern = r"toymlp(-\\d+)?"
    spec_help = "toymlp[-WIDTH]"

    @classmethod
    def load(cls, spec, *, weights=None, random_weights=False, device="cpu", seed=0):
        width = int(spec.partition("-")[2] or 4)
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2)).eval()
        return cls(f"{spec} (random weights)", net, {"0": "relu"}, ["0", "1", "2"], provenance={"seed": seed})

    def prepare(self, raw):
        return torch.as_tensor(raw, dtype=torch.float32).reshape(1, 3)

    def default_inputs(self, n):
        return torch.linspace(-1, 1, 3 * n).reshape(n, 3)
'''


@pytest.fixture(scope="module")
def toy_module(tmp_path_factory):
    """The adapter file imported as any user module would be: nothing else in polylens names it."""
    path = tmp_path_factory.mktemp("plugin") / "toymlp_adapter.py"
    path.write_text(TOY_FILE)
    spec = importlib.util.spec_from_file_location("toymlp_adapter", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["toymlp_adapter"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["toymlp_adapter"]


def test_a_new_adapter_is_one_subclass_in_one_file(toy_module):
    adapter = load_model("toymlp-5", seed=2)
    assert type(adapter) is toy_module.ToyAdapter and adapter_class("toymlp") is toy_module.ToyAdapter
    assert adapter.name == "toymlp-5 (random weights)" and adapter.module[0].out_features == 5
    x = adapter.default_inputs(4)
    first = adapter.module[0]
    want = (x @ first.weight.T + first.bias > 0).detach().numpy()  # the ReLU's pattern, by hand
    assert np.array_equal(extract_codes(adapter, x).unpack().astype(bool), want)
    assert torch.equal(adapter.prepare([1.0, 2.0, 3.0]), torch.tensor([[1.0, 2.0, 3.0]]))
    assert adapter.tokenize is None and adapter.default_labels is None and adapter.describe_output is None
    with pytest.raises(ValueError, match="takes no option 'widht'; its options: weights, random_weights, device, seed"):
        load_model("toymlp", widht=3)
    with pytest.raises(ValueError, match=r"unknown model 'toymlp-x'; use .*toymlp\[-WIDTH\]"):
        load_model("toymlp-x")


def test_unknown_model_lists_every_registered_form():
    with pytest.raises(ValueError) as err:
        load_model("resnet")
    msg = str(err.value)
    for form in ("digits", "gpt2[-medium|-large|-xl]", "inceptionv1", "torchvision:NAME", "FILE.py:FUNCTION"):
        assert form in msg
    assert "\n" not in msg


def test_a_plain_adapter_wraps_a_module_with_given_functions():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU()).eval()
    adapter = ModelAdapter("net", net, {"0": "relu"}, ["0", "1"], prepare=torch.as_tensor)
    assert adapter.prepare([1.0]).tolist() == [1.0] and adapter.default_inputs is None
    with pytest.raises(TypeError):
        ModelAdapter("net", net, {"0": "relu"}, ["0", "1"], prepare=torch.as_tensor, prepar=None)
    with pytest.raises(TypeError, match="takes no raw inputs"):
        ModelAdapter("net", net, {"0": "relu"}, ["0", "1"]).prepare([1.0])


FILE_MODEL = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.GELU(), nn.Linear(6, 3))


def example_inputs(n):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(1))
"""

TINY_GPT2 = dict(n_layers=2, d_model=32, n_heads=2, n_ctx=64)


def _load(kind, tmp_path):
    if kind == "digits":
        return "digits", load_model("digits", random_weights=True)
    if kind == "file":
        (tmp_path / "net.py").write_text(FILE_MODEL)
        spec = f"{tmp_path / 'net.py'}:build"
        return spec, load_model(spec)
    if kind == "gpt2":
        return "gpt2", load_model("gpt2", random_weights=True, config=TINY_GPT2, seed=1)
    return "inceptionv1", load_model("inceptionv1", random_weights=True, seed=0)


@pytest.mark.parametrize("kind", ["digits", "file", "gpt2", "inceptionv1"])
def test_each_builtin_adapter_keeps_the_interface(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("POLYLENS_CACHE", str(tmp_path / "cache"))
    spec, adapter = _load(kind, tmp_path)
    cls = type(adapter)
    assert issubclass(cls, ModelAdapter) and cls is not ModelAdapter and adapter_class(spec) is cls
    options = [n for n, p in inspect.signature(cls.load).parameters.items() if p.kind == p.KEYWORD_ONLY]
    assert {"weights", "random_weights", "device"} <= set(options)  # what the CLI passes to every model
    assert isinstance(adapter.name, str) and adapter.provenance["model"] == adapter.name
    modules = {n for n, _ in adapter.module.named_modules() if n}
    assert adapter.activation_layers and set(adapter.activation_layers) <= modules
    assert set(adapter.activation_layers.values()) <= set(get_args(Activation))
    assert set(adapter.space_layers) <= modules
    assert all(isinstance(c, type) and issubclass(c, nn.Module) for c in adapter.piecewise_linear_modules)
    assert adapter.check_layer(adapter.space_layers[0]) == adapter.space_layers[0]
    with pytest.raises(ValueError, match="available layers"):
        adapter.check_layer("no.such.layer")

    x = adapter.default_inputs(2)
    assert x.shape[0] == 2 and torch.equal(adapter.prepare(0), adapter.default_inputs(1))
    layers = list(adapter.activation_layers)[:2]
    got = capture(adapter.module, x, layers, keep_output=True)
    assert all(got.activations[n].shape[0] == 2 for n in layers)
    labels = adapter.describe_output(got.output)
    assert len(labels) == 2 and all(isinstance(s, str) for s in labels)
    if kind == "gpt2":
        ids = adapter.tokenize("Hello world")
        assert ids == [15496, 995] and adapter.prepare("Hello world").tolist() == [[50256, *ids]]
    else:
        assert adapter.tokenize is None
    if kind == "digits":
        assert adapter.default_labels(2).tolist() == adapter.test_split()["y_test"][:2].tolist()
