from collections import OrderedDict

import pytest
import torch
from torch import nn

from polylens.capture import capture, layer_names, recording, resolve_layers


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(fc1=nn.Linear(5, 7), act1=nn.ReLU(), fc2=nn.Linear(7, 6), act2=nn.ReLU(), out=nn.Linear(6, 3))
    ).eval()


def test_activations_equal_manual_forward():
    m = mlp()
    x = torch.randn(11, 5)
    got = capture(m, x, ["fc1", "act2"], batch_size=4)
    z1 = m.fc1(x)
    h2 = torch.relu(m.fc2(torch.relu(z1)))
    assert torch.allclose(got.activations["fc1"], z1, atol=1e-6)
    assert torch.allclose(got.activations["act2"], h2, atol=1e-6)


def test_input_site_reads_preactivation_of_relu_module():
    m = mlp()
    x = torch.randn(4, 5)
    got = capture(m, x, "act1", site="input")
    assert torch.allclose(got.activations["act1"], m.fc1(x), atol=1e-6)


def test_wildcard_and_predicate_selection():
    m = mlp()
    assert resolve_layers(m, "act*") == ["act1", "act2"]
    assert resolve_layers(m, lambda n, mod: isinstance(mod, nn.Linear)) == ["fc1", "fc2", "out"]
    assert layer_names(m) == ["fc1", "act1", "fc2", "act2", "out"]


def test_unknown_layer_lists_available():
    with pytest.raises(ValueError, match="available layers: fc1, act1"):
        resolve_layers(mlp(), "fc9")


def test_gradients_are_jacobian_rows():
    """For out = W2 h + b with h the act2 output, d out_j / d h = W2[j] for every sample."""
    m = mlp()
    x = torch.randn(9, 5)
    got = capture(m, x, "act2", target=lambda out: out)
    assert got.gradients["act2"].shape == (9, 3, 6)
    expected = m.out.weight.detach().expand(9, 3, 6)
    assert torch.allclose(got.gradients["act2"], expected, atol=1e-6)
    # A scalar target gives k = 1.
    got1 = capture(m, x, "act2", target=lambda out: out[:, 1])
    assert torch.allclose(got1.gradients["act2"][:, 0], m.out.weight[1].detach().expand(9, 6), atol=1e-6)


def test_gradients_match_autograd_per_sample_and_with_frozen_weights():
    m = mlp()
    for p in m.parameters():
        p.requires_grad_(False)
    x = torch.randn(6, 5)
    got = capture(m, x, ["fc1", "act2"], target=lambda out: (out**2).sum(dim=1), batch_size=4)
    for i in range(6):
        z1 = m.fc1(x[i : i + 1]).requires_grad_(True)
        y = (m.out(m.act2(m.fc2(m.act1(z1)))) ** 2).sum()
        (g,) = torch.autograd.grad(y, z1)
        assert torch.allclose(got.gradients["fc1"][i, 0], g[0], atol=1e-5)


def test_stop_early_skips_later_layers_and_hooks_are_removed():
    m = mlp()
    calls = []
    m.out.register_forward_hook(lambda *a: calls.append(1))
    capture(m, torch.randn(3, 5), "fc1")  # the first capture of a layer set checks, once, that fc1 runs once
    calls.clear()
    got = capture(m, torch.randn(3, 5), "fc1")
    assert got.output is None and not calls
    assert len(m.fc1._forward_hooks) == 0 and len(m.out._forward_hooks) == 1  # ours removed, the user's kept
    # under patch too, and the output only when asked
    capture(m, torch.randn(3, 5), "fc2", patch={"act1": torch.zeros(3, 7)})
    calls.clear()
    got = capture(m, torch.randn(3, 5), "fc2", patch={"act1": torch.zeros(3, 7)})
    assert got.output is None and not calls
    assert torch.allclose(got.activations["fc2"], m.fc2.bias.detach().expand(3, -1))
    got = capture(m, torch.randn(3, 5), "fc1", keep_output=True)
    assert got.output.shape == (3, 3) and len(calls) == 1


class Reused(nn.Module):
    """One ReLU module applied twice (as torchvision's ResNet blocks do)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.relu = nn.Linear(4, 4), nn.Linear(4, 4), nn.ReLU()

    def forward(self, x):
        return self.relu(self.fc2(self.relu(self.fc1(x))))


@pytest.mark.parametrize(
    "kwargs", [{}, {"stop_early": False}, {"keep_output": True}, {"target": lambda out: out.sum(1)}]
)
def test_a_module_called_twice_is_an_error_naming_it(kwargs):
    with pytest.raises(ValueError, match="module 'relu' runs 2\\+ times"):
        capture(Reused(), torch.randn(2, 4), "relu", **kwargs)
    got = capture(Reused(), torch.randn(2, 4), "fc2", **kwargs)  # a module that runs once is fine
    assert got.activations["fc2"].shape == (2, 4)


class InPlaceResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        out = self.fc(x)
        out += x  # edits fc's output in place, as ResNet's ``out += identity``
        return out


@pytest.mark.parametrize("grad", [False, True])
def test_recorded_output_is_what_the_module_returned(grad):
    m, x = InPlaceResidual(), torch.randn(4, 3)
    target = (lambda out: out.sum(1)) if grad else None
    got = capture(m, x, "fc", target=target, stop_early=False)
    assert torch.allclose(got.activations["fc"], m.fc(x).detach())
    if grad:  # d sum(fc(x) + x) / d fc(x) = 1
        assert torch.allclose(got.gradients["fc"], torch.ones(4, 1, 3))


def test_patch_replaces_a_layer_output():
    m = mlp()
    x = torch.randn(3, 5)
    zeros = torch.zeros(3, 6)
    got = capture(m, x, "out", patch={"act2": zeros}, stop_early=False)
    assert torch.allclose(got.activations["out"], m.out.bias.detach().expand(3, 3))


def test_recording_removes_hooks_on_error():
    m = mlp()
    with pytest.raises(RuntimeError):
        with recording(m, "fc1"):
            raise RuntimeError("boom")
    assert len(m.fc1._forward_hooks) == 0


def test_patch_needs_exact_names():
    m = mlp()
    with pytest.raises(ValueError, match="exact layer names"):
        capture(m, torch.randn(2, 5), "out", patch={"act*": torch.zeros(2, 6)})
    with pytest.raises(ValueError, match="unknown layer"):
        capture(m, torch.randn(2, 5), "out", patch={"nope": torch.zeros(2, 6)})


def test_patch_at_the_input_site_is_refused_before_any_forward():
    m = mlp()
    calls = []
    m.fc1.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="patch is only applied with site='output', not site='input'"):
        with recording(m, "fc1", site="input", patch={"fc1": torch.zeros(2, 7)}):
            m(torch.randn(2, 5))
    assert not calls and len(m.fc1._forward_hooks) == 1  # refused before the forward; no hook of ours left
    with pytest.raises(ValueError, match="site='middle' must be one of 'output', 'input'"):
        capture(m, torch.randn(2, 5), "fc1", site="middle")
    with pytest.raises(ValueError, match="batch_size=0 must be a positive integer"):
        capture(m, torch.randn(2, 5), "fc1", batch_size=0)
