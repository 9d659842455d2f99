"""Exact counting is claimed only where certified: everything between the path's layer and the
last counted layer must be piecewise-linear."""

import pytest
import torch
from torch import nn

from polylens.lens.density import _choose_layers, boundary_density
from polylens.lens.paths import interpolation_path
from polylens.models.base import ModelAdapter


def _adapter(net, acts):
    names = [n for n, _ in net.named_modules() if n]
    return ModelAdapter("net", net, acts, names, prepare=torch.as_tensor, describe_output=lambda out: ["x"] * len(out))


def _net(middle: nn.Module, *, train: bool = False):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), middle, nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    return _adapter(net.train(train), {"0": "relu", "3": "relu"})


class Tanh(nn.Module):
    """A container whose own forward applies a smooth function (no leaf module to see)."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Identity()

    def forward(self, x):
        return torch.tanh(self.inner(x))


@pytest.mark.parametrize(
    "middle, train, why",
    [
        (nn.LayerNorm(8), False, "LayerNorm"),
        (nn.Softmax(dim=1), False, "Softmax"),
        (Tanh(), False, "tanh\\(\\) in the forward of module '2' \\(Tanh\\)"),
    ],
)
def test_a_smooth_step_between_relu_layers_refuses_exact_and_defaults_to_smooth(middle, train, why):
    adapter = _net(middle, train=train)
    path = interpolation_path(adapter, torch.randn(1, 3), torch.randn(1, 3), "input")
    with pytest.raises(ValueError, match=f"{why}.*exact=False"):
        boundary_density(adapter, path, exact=True)
    res = boundary_density(adapter, path, n_samples=200, n_profile=0)
    assert res.exact is False
    # counting only the first layer needs nothing after it: exact again
    assert boundary_density(adapter, path, count_layers="0").exact is True


def test_batch_norm_in_training_mode_is_refused():
    adapter = _net(nn.BatchNorm1d(8), train=True)
    path = interpolation_path(adapter, torch.randn(1, 3), torch.randn(1, 3), "input")
    for exact in (True, None, False):
        with pytest.raises(ValueError, match="'2' \\(BatchNorm1d\\) is in training mode.*eval\\(\\)"):
            boundary_density(adapter, path, exact=exact, n_samples=50, n_profile=0)


@pytest.mark.parametrize("middle", [nn.Identity(), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.LeakyReLU(0.1)])
def test_piecewise_linear_steps_are_certified(middle):
    adapter = _net(middle)
    adapter.module.eval()
    path = interpolation_path(adapter, torch.randn(1, 3), torch.randn(1, 3), "input")
    assert boundary_density(adapter, path).exact is True


def test_inception_local_response_norm_before_maxpool1_is_not_exact():
    from polylens.models import load_model

    adapter = load_model("inceptionv1", random_weights=True, seed=0)
    x0, x1 = adapter.default_inputs(2).split(1)
    before = interpolation_path(adapter, x0, x1, "conv2d0")
    with pytest.raises(ValueError, match="LRN.*exact=False"):
        _choose_layers(adapter, before, ["conv2d1_pre_relu_conv"], True)
    assert _choose_layers(adapter, before, ["conv2d1_pre_relu_conv"], None)[2] is False
    after = interpolation_path(adapter, x0, x1, "maxpool1")
    assert _choose_layers(adapter, after, ["mixed3b_1x1_pre_relu_conv"], None)[2] is True


def test_gpt2_activation_kind_comes_from_the_config():
    from polylens.models import load_model

    relu = load_model(
        "gpt2", random_weights=True, config=dict(n_layers=1, d_model=32, n_heads=2, n_ctx=16, act_fn="relu")
    )
    assert relu.activation_layers == {"blocks.0.mlp.hook_pre": "relu"}
    gelu = load_model("gpt2", random_weights=True, config=dict(n_layers=1, d_model=32, n_heads=2, n_ctx=16))
    assert gelu.activation_layers == {"blocks.0.mlp.hook_pre": "gelu_tanh"}
    # even with ReLU MLPs, the LayerNorm before the MLP sits on the path: never exact across it
    a, b = torch.tensor([[50256, 11, 12, 13]]), torch.tensor([[50256, 21, 22, 23]])
    path = interpolation_path(relu, a, b, "blocks.0.hook_resid_mid")
    with pytest.raises(ValueError, match="module 'blocks.0.ln2' \\(LayerNorm\\).*exact=False"):
        _choose_layers(relu, path, None, True)
    assert _choose_layers(relu, path, None, None)[2] is False
