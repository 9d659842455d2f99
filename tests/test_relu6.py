"""ReLU6 in the lens: two breakpoints (z = 0, z = 6), two code bits a unit, crossings of both.

Every check compares with an independent computation: the pre-activations read straight off the
layers, the analytic zeros of an affine pre-activation, a dense grid's sign changes, and Jacobians
by autograd on either side of a crossing."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from polylens.clustering.analysis import _unit_names
from polylens.lens.codes import LayerSlot, SplineCodes, extract_codes
from polylens.lens.density import boundary_density
from polylens.lens.exactness import first_smooth_step
from polylens.lens.paths import interpolation_path
from polylens.models.base import ModelAdapter


def _adapter(net, acts, name="net"):
    names = [n for n, _ in net.named_modules() if n]
    describe = lambda out: [str(i) for i in out.reshape(out.shape[0], -1).argmax(1).tolist()]  # noqa: E731
    return ModelAdapter(name, net.eval(), acts, names, prepare=torch.as_tensor, describe_output=describe)


def _mlp(seed, widths, gain=1.0):
    """Linear → ReLU6 a layer; activation layers are the Linear modules ("0", "2", ...)."""
    torch.manual_seed(seed)
    layers, acts = [], {}
    for i, (a, b) in enumerate(zip(widths[:-2], widths[1:-1])):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.mul_(gain)
        layers += [lin, nn.ReLU6()]
        acts[str(2 * i)] = "relu6"
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return _adapter(nn.Sequential(*layers), acts, "relu6-mlp")


def _state(z):
    """A ReLU6 unit's state: 0 (z ≤ 0), 1 (0 < z ≤ 6), 2 (z > 6)."""
    return (z > 0).long() + (z > 6).long()


# --- codes ------------------------------------------------------------------------------------


def _mixed_net():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(3, 7), nn.ReLU6(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 2))
    with torch.no_grad():
        net[0].weight.mul_(8.0)
    return _adapter(net, {"0": "relu6", "2": "relu"})


def test_codes_are_two_thermometer_bits_a_relu6_unit_and_one_a_relu_unit():
    adapter = _mixed_net()
    x = torch.randn(300, 3)
    codes = extract_codes(adapter, x)
    with torch.no_grad():
        z0 = adapter.module[0](x)
        z2 = adapter.module[2](adapter.module[1](z0))
    bits = codes.unpack()
    s0, s2 = codes.layers
    assert (s0.kind, s0.size, s0.units, s0.shape, s0.breakpoints) == ("relu6", 14, 7, (7,), (0.0, 6.0))
    assert (s2.kind, s2.size, s2.units, s2.offset) == ("relu", 5, 5, 14)
    assert codes.n_units == 19
    assert np.array_equal(bits[:, :7], (z0 > 0).numpy())
    assert np.array_equal(bits[:, 7:14], (z0 > 6).numpy())
    assert np.array_equal(bits[:, 14:], (z2 > 0).numpy())  # relu: one bit, as before
    assert (z0 > 6).any() and ((z0 > 0) & (z0 <= 6)).any()  # all three states occur
    assert [s0.bit_meaning(b) for b in (0, 6, 7, 13)] == [(0, 0.0), (6, 0.0), (0, 6.0), (6, 6.0)]
    with pytest.raises(ValueError, match="bit=14"):
        s0.bit_meaning(14)

    # Hamming distance = number of (unit, breakpoint) boundaries between two inputs
    d = codes.hamming_matrix()
    jump = (_state(z0)[:, None, :] - _state(z0)[None, :, :]).abs().sum(-1)
    flips = ((z2 > 0)[:, None, :] != (z2 > 0)[None, :, :]).sum(-1)
    assert np.array_equal(d, (jump + flips).numpy())
    assert ((_state(z0)[:, None, :] - _state(z0)[None, :, :]).abs() == 2).any()  # some 0 → 2 jumps, counted 2

    info = codes.summary()["layers"]
    assert (info[0]["units"], info[0]["bits"], info[1]["units"], info[1]["bits"]) == (7, 14, 5, 5)
    assert info[0]["fraction_on"] == pytest.approx(float(bits[:, :14].mean()))

    names = _unit_names(codes)
    assert names[:2] == ["0[0]>0", "0[1]>0"] and names[7] == "0[0]>6" and names[13] == "0[6]>6"
    assert names[14:] == [f"2[{i}]" for i in range(5)]


def test_relu6_soft_codes_are_the_hard_bits_and_survive_save_load(tmp_path):
    adapter = _mixed_net()
    x = torch.randn(50, 3)
    codes = extract_codes(adapter, x, soft=True)
    assert np.array_equal(codes.soft[:, :14], codes.unpack()[:, :14].astype(np.float32))
    codes.save(str(tmp_path / "c.npz"))
    back = SplineCodes.load(str(tmp_path / "c.npz"))
    assert back.layers == codes.layers and np.array_equal(back.words, codes.words)
    assert np.array_equal(back.layer("0").unpack(), codes.unpack()[:, :14])


def test_a_code_file_from_before_relu6_still_loads(tmp_path):
    bits = np.random.default_rng(0).random((6, 10)) < 0.5
    from polylens.lens.codes import pack_bits

    meta = {
        "format": "polylens.spline_codes/1",
        "n_units": 10,
        "layers": [{"name": "fc", "kind": "relu", "offset": 0, "size": 10, "shape": [10]}],
        "provenance": {"model": "old"},
    }
    with open(tmp_path / "old.npz", "wb") as fh:
        np.savez_compressed(fh, words=pack_bits(bits), meta=np.array(json.dumps(meta)))
    old = SplineCodes.load(str(tmp_path / "old.npz"))
    assert np.array_equal(old.unpack(), bits) and old.layers[0].units == 10
    with pytest.raises(ValueError, match="multiple"):
        LayerSlot("fc", "relu6", 0, 7, (7,))


# --- exact density ------------------------------------------------------------------------------


def _crossing_keys(res):
    return Counter((c.layer, c.unit, c.breakpoint) for c in res.crossings)


def test_exact_crossings_of_one_relu6_layer_are_the_analytic_zeros_of_z_and_z_minus_6():
    adapter = _mixed_net()  # count at the relu6 layer only: z(t) is affine in t along an input line
    x0, x1 = torch.tensor([[-1.5, 0.7, -0.4]]), torch.tensor([[1.2, -0.9, 1.6]])
    path = interpolation_path(adapter, x0, x1, "input")
    res = boundary_density(adapter, path, count_layers=["0"], n_profile=0)
    assert res.exact
    w, b = adapter.module[0].weight.detach().double(), adapter.module[0].bias.detach().double()
    z0, z1 = (x0.double() @ w.T + b)[0], (x1.double() @ w.T + b)[0]
    want = []
    for u in range(7):
        for bp in (0.0, 6.0):
            t = float((bp - z0[u]) / (z1[u] - z0[u]))  # z(t) = z0 + t (z1 − z0)
            if 0 < t < 1:
                want.append((t, u, bp))
    want.sort()
    assert sum(bp == 6.0 for _, _, bp in want) >= 2 and sum(bp == 0.0 for _, _, bp in want) >= 2
    got = [(c.t, c.unit, c.breakpoint) for c in res.crossings]
    assert [(u, bp) for _, u, bp in got] == [(u, bp) for _, u, bp in want]
    assert np.allclose([t for t, _, _ in got], [t for t, _, _ in want], atol=1e-12)
    assert res.crossings_per_layer == {"0": len(want)}
    assert {c.to_json()["breakpoint"] for c in res.crossings} == {0.0, 6.0}


def _dense_crossings(adapter, path, layers, n=200_000):
    """(layer, unit, breakpoint) → bracket midpoints of the sign changes of z and z − 6 on a grid."""
    t = np.linspace(0.0, 1.0, n + 1)
    net = adapter.module.double()
    try:
        acts, h = {}, path.at(t)
        with torch.no_grad():
            for name, mod in net.named_children():
                h = mod(h)
                acts[name] = h
    finally:
        adapter.module.float()
    out = {}
    for name in layers:
        z = acts[name].numpy()
        for bp in (0.0, 6.0):
            on = z > bp
            step, unit = np.nonzero(on[1:] != on[:-1])
            for s, u in zip(step, unit):
                out.setdefault((name, int(u), bp), []).append(0.5 * (t[s] + t[s + 1]))
    return out, t, acts


def test_exact_density_of_a_two_layer_relu6_net_equals_a_dense_grid():
    adapter = _mlp(5, [3, 10, 10, 2], gain=2.5)
    x0, x1 = torch.tensor([[-4.0, 3.0, -2.0]]), torch.tensor([[3.5, -2.5, 4.0]])
    path = interpolation_path(adapter, x0, x1, "input")
    res = boundary_density(adapter, path, n_profile=400)
    assert res.exact
    dense, _, acts = _dense_crossings(adapter, path, ["0", "2"])
    keys = _crossing_keys(res)
    assert keys == Counter({k: len(v) for k, v in dense.items()})
    # the second layer's crossings come after first-layer saturation kinks (z = 6 crossings)
    assert sum(v for (la, _, bp), v in keys.items() if la == "0" and bp == 6.0) >= 2
    assert sum(v for (la, _, _), v in keys.items() if la == "2") >= 3
    for key, ts in dense.items():
        te = sorted(c.t for c in res.crossings if (c.layer, c.unit, c.breakpoint) == key)
        assert np.allclose(te, sorted(ts), atol=1.0 / 200_000)
    # each exact position is where that unit's pre-activation equals the breakpoint
    net64 = adapter.module.double()
    try:
        for c in res.crossings:
            h = path.at(np.array([c.t]))
            with torch.no_grad():
                for name, mod in net64.named_children():
                    h = mod(h)
                    if name == c.layer:
                        break
            assert abs(float(h[0, c.unit]) - c.breakpoint) <= 1e-9 * max(1.0, float(h.abs().max()))
    finally:
        adapter.module.float()
    # the sampled mode sees both breakpoints too
    sampled = boundary_density(adapter, path, exact=False, n_samples=20_000, n_profile=0)
    assert _crossing_keys(sampled) == keys
    # the Hamming profile counts boundaries: brute-force ReLU6 states at the profile's grid points
    tp = np.array(res.profile["t"])
    net64 = adapter.module.double()
    try:
        h, states = path.at(tp), []
        with torch.no_grad():
            for name, mod in net64.named_children():
                h = mod(h)
                if name in ("0", "2"):
                    states.append(_state(h))
    finally:
        adapter.module.float()
    st = torch.cat(states, dim=1)
    assert res.profile["hamming"] == (st[1:] - st[:-1]).abs().sum(1).tolist()
    assert sum(res.profile["hamming"]) > 0


def test_exact_density_on_an_activation_layer_path_counts_relu6_saturations():
    adapter = _mlp(11, [4, 12, 12, 3], gain=3.0)
    x0, x1 = torch.tensor([[1.0, -2.0, 0.5, 2.0]]), torch.tensor([[-1.5, 1.0, 2.5, -1.0]])
    path = interpolation_path(adapter, x0, x1, "1")  # the post-ReLU6 space of the first layer
    res = boundary_density(adapter, path, n_profile=0)
    assert res.exact and res.layers == ["2"]
    h1 = path.at(np.linspace(0.0, 1.0, 200_001))
    with torch.no_grad():
        z = adapter.module.double()[2](h1).numpy()
    adapter.module.float()
    want = Counter()
    for bp in (0.0, 6.0):
        on = z > bp
        for u in np.nonzero(on[1:] != on[:-1])[1]:
            want[("2", int(u), bp)] += 1
    assert _crossing_keys(res) == want and any(bp == 6.0 for _, _, bp in want)


# --- certificate ---------------------------------------------------------------------------------


def _mobile_block():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 6, 1),
        nn.BatchNorm2d(6),
        nn.ReLU6(),
        nn.Conv2d(6, 6, 3, padding=1, groups=6),  # depthwise
        nn.BatchNorm2d(6),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )
    with torch.no_grad():  # BN statistics and affine parameters that are not the identity
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(2.0, 6.0)
            bn.bias.uniform_(-1.0, 3.0)
    return _adapter(net, {"1": "relu6", "4": "relu6"}, "mobile")


def test_certificate_accepts_relu6_eval_batchnorm_and_depthwise_conv_and_refuses_training_mode():
    adapter = _mobile_block()
    x = torch.randn(1, 2, 5, 5)
    net = adapter.module
    assert first_smooth_step(net.eval(), x, None, "8") is None
    assert "training mode" in first_smooth_step(net.train(), x, None, "8")
    net.eval()
    smooth = nn.Sequential(*list(net.children())[:5], nn.Hardswish(), *list(net.children())[6:]).eval()
    assert "Hardswish" in first_smooth_step(smooth, x, None, "8")

    path = interpolation_path(adapter, x, torch.randn(1, 2, 5, 5) * 3, "input")
    res = boundary_density(adapter, path, n_profile=0, affine_change=False)
    assert res.exact and res.n_crossings > 0 and any(c.breakpoint == 6.0 for c in res.crossings)
    dense = boundary_density(adapter, path, exact=False, n_samples=50_000, refine=False, n_profile=0, batch_size=10_000)
    assert _crossing_keys(dense) == _crossing_keys(res)
    net.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            boundary_density(adapter, path, exact=True, n_profile=0)
    finally:
        net.eval()


# --- affine change --------------------------------------------------------------------------------


def test_affine_change_at_relu6_crossings_equals_the_jump_of_the_jacobian():
    adapter = _mlp(5, [3, 10, 10, 2], gain=2.5)
    x0, x1 = torch.tensor([[-4.0, 3.0, -2.0]]), torch.tensor([[3.5, -2.5, 4.0]])
    path = interpolation_path(adapter, x0, x1, "input")
    res = boundary_density(adapter, path, n_profile=0)
    ts = np.array([c.t for c in res.crossings])
    net64 = adapter.module.double()
    try:
        checked = Counter()
        for i, c in enumerate(res.crossings):
            gap = np.min(np.abs(np.delete(ts, i) - c.t)) if len(ts) > 1 else 1.0
            eps = min(gap, c.t, 1 - c.t) / 4
            if eps < 1e-9:
                continue
            jac = [
                torch.autograd.functional.jacobian(lambda p: net64(p[None])[0], path.at(np.array([c.t + s]))[0])
                for s in (-eps, eps)
            ]
            want = float((jac[1] - jac[0]).norm())
            assert c.affine_change == pytest.approx(want, rel=1e-6, abs=1e-12)
            checked[c.breakpoint] += 1
    finally:
        adapter.module.float()
    assert checked[6.0] >= 2 and checked[0.0] >= 2
    assert any(c.breakpoint == 6.0 and c.affine_change > 1e-3 for c in res.crossings)  # no slope-0 side


def test_linearity_is_read_on_z_not_on_z_minus_6_so_a_tiny_relu6_layer_keeps_its_kinks():
    # An undeclared ReLU before a ReLU6 layer whose pre-activations are ~1e-9: z_0(t) = 1e-9 (3|t − ½| − 1)
    # is positive at both ends and dips below 0 between t = 1/6 and 5/6. Measured against z − 6 (≈ −6)
    # the kink would be far below the tolerance and both crossings lost.
    net = nn.Sequential(nn.ReLU(), nn.Linear(3, 2), nn.ReLU6(), nn.Linear(2, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) * 1e-9)
        net[1].bias.copy_(torch.tensor([-1.0, 0.5]) * 1e-9)
    adapter = _adapter(net, {"1": "relu6"})
    path = interpolation_path(adapter, torch.tensor([[1.5, -1.5, 1.0]]), torch.tensor([[-1.5, 1.5, -1.0]]), "input")
    res = boundary_density(adapter, path, n_profile=0, affine_change=False)
    assert [(c.unit, c.breakpoint) for c in res.crossings] == [(0, 0.0), (0, 0.0)]
    assert np.allclose([c.t for c in res.crossings], [1 / 6, 5 / 6], atol=1e-12)
