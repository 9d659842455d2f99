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
    got = capture(m, torch.randn(3, 5), "fc1")
    assert got.output is None and not calls
    assert not m.fc1._forward_hooks or all(True for _ in m.fc1._forward_hooks)
    assert len(m.fc1._forward_hooks) == 0


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
