from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from polylens.capture import capture
from polylens.lens.density import boundary_density
from polylens.lens.paths import ActivationPath, interpolation_path, polyline_path, scaling_path
from polylens.lens.shell import shell_profile
from polylens.models.base import ModelAdapter


def _adapter(net, acts, name="net"):
    names = [n for n, _ in net.named_modules() if n]
    describe = lambda out: [str(i) for i in out.reshape(out.shape[0], -1).argmax(1).tolist()]  # noqa: E731
    return ModelAdapter(name, net.eval(), acts, names, prepare=torch.as_tensor, describe_output=describe)


def relu_mlp(seed, d_in=3, width=24, depth=3):
    torch.manual_seed(seed)
    layers, acts, d = [], {}, d_in
    for i in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        acts[str(2 * i)] = "relu"
        d = width
    layers.append(nn.Linear(d, 4))
    return _adapter(nn.Sequential(*layers), acts, "mlp")


def relu_cnn(seed, pool=False):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2) if pool else nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 10),
        nn.ReLU(),
        nn.Linear(10, 3),
    )
    return _adapter(net, {"0": "relu", "3": "relu", "6": "relu"}, "cnn")


def _per_unit(res):
    return Counter((c.layer, c.unit) for c in res.crossings)


def _check_against_dense_sampling(adapter, path, n_dense=20000):
    exact = boundary_density(adapter, path, n_profile=0)
    assert exact.exact and exact.n_crossings > 0
    coarse = boundary_density(adapter, path, exact=False, n_samples=200, refine=False, n_profile=0)
    dense = boundary_density(adapter, path, exact=False, n_samples=n_dense, refine=False, n_profile=0)
    e, c, d = _per_unit(exact), _per_unit(coarse), _per_unit(dense)
    # Never fewer than any sampling, per unit; equal to the dense-sampling limit.
    assert all(e[k] >= c[k] for k in c) and all(e[k] >= d[k] for k in d)
    assert e == d
    # Same positions, to the sampling step.
    for key in e:
        te = sorted(x.t for x in exact.crossings if (x.layer, x.unit) == key)
        td = sorted(x.t for x in dense.crossings if (x.layer, x.unit) == key)
        assert np.allclose(te, td, atol=1.5 / n_dense)
    # Each exact position is a zero of that unit's pre-activation.
    net64 = adapter.module.double()
    pts = path.at(np.array([x.t for x in exact.crossings]))
    layers = list(exact.crossings_per_layer)
    if path.layer == "input":
        got = capture(net64, pts, layers)
    else:
        base = path.base.double().expand(len(pts), *path.base.shape[1:])
        got = capture(net64, base, layers, patch={path.layer: pts})
    adapter.module.float()
    for i, x in enumerate(exact.crossings):
        z = got.activations[x.layer].reshape(len(pts), -1)
        assert abs(float(z[i, x.unit])) <= 1e-7 * float(z[i].abs().max())
    return exact


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_equals_dense_sampling_limit_mlp_input_space(seed):
    adapter = relu_mlp(seed)
    g = torch.Generator().manual_seed(100 + seed)
    x0, x1 = torch.randn(1, 3, generator=g) * 3, torch.randn(1, 3, generator=g) * 3
    res = _check_against_dense_sampling(adapter, interpolation_path(adapter, x0, x1, "input"))
    assert set(res.crossings_per_layer) == {"0", "2", "4"}


def test_exact_equals_dense_sampling_limit_mlp_hidden_layer_and_scaling():
    adapter = relu_mlp(3)
    g = torch.Generator().manual_seed(7)
    x0, x1 = torch.randn(1, 3, generator=g), torch.randn(1, 3, generator=g)
    res = _check_against_dense_sampling(adapter, interpolation_path(adapter, x0, x1, "1"))
    assert set(res.crossings_per_layer) == {"2", "4"}  # only layers after the path's layer
    _check_against_dense_sampling(adapter, scaling_path(adapter, x0, "2", alpha_max=3.0))


@pytest.mark.parametrize("seed, pool", [(0, False), (1, True)])
def test_exact_equals_dense_sampling_limit_cnn(seed, pool):
    adapter = relu_cnn(seed, pool)
    g = torch.Generator().manual_seed(seed)
    x0, x1 = torch.randn(1, 1, 6, 6, generator=g), torch.randn(1, 1, 6, 6, generator=g)
    res = _check_against_dense_sampling(adapter, interpolation_path(adapter, x0, x1, "input"))
    assert res.crossings_per_layer["0"] > 0 and res.crossings_per_layer["3"] > 0


def test_exact_finds_two_flips_within_one_sampling_step():
    # z = 0.001 - relu(x) - relu(-x) is positive only for |x| < 0.001: two crossings 0.002 apart.
    lin1, lin2 = nn.Linear(1, 2), nn.Linear(2, 1)
    with torch.no_grad():
        lin1.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        lin1.bias.zero_()
        lin2.weight.copy_(torch.tensor([[-1.0, -1.0]]))
        lin2.bias.fill_(0.001)
    adapter = _adapter(nn.Sequential(lin1, nn.ReLU(), lin2, nn.ReLU()), {"0": "relu", "2": "relu"})
    path = interpolation_path(adapter, torch.tensor([[-1.0]]), torch.tensor([[1.3]]), "input")
    exact = boundary_density(adapter, path, count_layers=["2"], n_profile=0)
    sampled = boundary_density(adapter, path, count_layers=["2"], exact=False, n_samples=100, n_profile=0)
    assert exact.n_crossings == 2 and sampled.n_crossings == 0
    xs = path.at(np.array([c.t for c in exact.crossings])).flatten()
    assert torch.allclose(xs, torch.tensor([-0.001, 0.001], dtype=torch.float64), atol=1e-9)


def test_polyline_counts_add_up_over_segments_and_profile():
    adapter = relu_mlp(4)
    g = torch.Generator().manual_seed(4)
    a, b, c = (torch.randn(1, 3, generator=g) * 2 for _ in range(3))
    whole = boundary_density(adapter, interpolation_path(adapter, a, c, "input", via=[b]), n_profile=50)
    first = boundary_density(adapter, interpolation_path(adapter, a, b, "input"), n_profile=0)
    second = boundary_density(adapter, interpolation_path(adapter, b, c, "input"), n_profile=0)
    assert whole.n_crossings == first.n_crossings + second.n_crossings
    ts = [x.t for x in whole.crossings]
    assert ts == sorted(ts) and 0 <= ts[0] and ts[-1] <= 1
    assert whole.path["length"] == pytest.approx(first.path["length"] + second.path["length"])
    assert len(whole.profile["hamming"]) == 50 and len(whole.profile["labels"]) == 51
    assert sum(whole.profile["hamming"]) <= whole.n_crossings
    js = whole.to_json()
    assert {"model", "layers", "path", "n_crossings", "crossings", "density_per_unit_length", "exact"} <= set(js)
    assert js["density_per_unit_length"] == pytest.approx(js["n_crossings"] / js["path"]["length"])
    same = polyline_path(adapter, torch.cat([a, b, c]), "input")
    assert boundary_density(adapter, same, n_profile=0).n_crossings == whole.n_crossings


def test_smooth_mode_on_gelu_refines_to_zeros():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.GELU(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 2))
    adapter = _adapter(net, {"0": "gelu", "2": "gelu"})
    path = interpolation_path(adapter, torch.randn(1, 3) * 3, torch.randn(1, 3) * 3, "input")
    with pytest.raises(ValueError, match="not piecewise-linear.*smooth \\(sampled\\) mode, exact=False"):
        boundary_density(adapter, path, exact=True)
    res = boundary_density(adapter, path, n_samples=500, n_profile=0)
    dense = boundary_density(adapter, path, exact=False, n_samples=20000, refine=False, n_profile=0)
    assert not res.exact and res.n_crossings == dense.n_crossings > 0
    for x, y in zip(res.crossings, dense.crossings):
        assert abs(x.t - y.t) <= 1.5 / 20000


def test_bad_paths_raise_value_errors():
    adapter = relu_mlp(0)
    x = torch.randn(1, 3)
    with pytest.raises(ValueError, match="zero-length"):
        interpolation_path(adapter, x, x.clone(), "input")
    with pytest.raises(ValueError, match="shapes differ"):
        interpolation_path(adapter, x, torch.randn(1, 4), "input")
    with pytest.raises(ValueError, match="NaN"):
        ActivationPath("polyline", "input", torch.tensor([[0.0, 1.0, float("nan")], [1.0, 1.0, 1.0]]), None)
    with pytest.raises(ValueError, match="unknown layer '9'.*available layers"):
        interpolation_path(adapter, x, torch.randn(1, 3), "9")
    path = interpolation_path(adapter, x, torch.randn(1, 3), "3")
    with pytest.raises(ValueError, match="count layer '0' is not an activation layer at or after '3'; choose from: 4"):
        boundary_density(adapter, path, count_layers=["0"])


def test_shell_profile_equals_the_closed_form_of_a_one_layer_relu_net():
    # along the ray α·x in input space, unit i's pre-activation is α(w_i·x) + b_i: zero at
    # α = -b_i / (w_i·x), a crossing when 0 < α < A, at radius α‖x‖
    adapter = relu_mlp(5, d_in=3, width=40, depth=1)
    inputs = torch.randn(7, 3, generator=torch.Generator().manual_seed(5))
    alpha_max, n_bins = 2.5, 9
    prof = shell_profile(adapter, inputs, "input", alpha_max=alpha_max, n_bins=n_bins)
    w, b = adapter.module[0].weight.double().detach().numpy(), adapter.module[0].bias.double().detach().numpy()
    x = inputs.double().numpy()
    norms = np.linalg.norm(x, axis=1)
    alpha = -b[None, :] / (x @ w.T)
    inside = (alpha > 0) & (alpha < alpha_max)
    radii = (alpha * norms[:, None])[inside]
    edges = np.linspace(0, alpha_max * norms.max(), n_bins + 1)
    counts = np.histogram(radii, bins=edges)[0]
    reach = alpha_max * norms
    coverage = [sum(max(0.0, min(r, hi) - lo) for r in reach) for lo, hi in zip(edges[:-1], edges[1:])]
    assert prof.exact and prof.layers == ["0"] and prof.n_paths == 7
    assert prof.n_crossings == inside.sum() > 20
    assert prof.norms == pytest.approx(norms.tolist(), rel=1e-6)
    assert prof.bin_edges == pytest.approx(edges.tolist(), rel=1e-6)
    assert prof.crossings == counts.tolist()
    assert prof.coverage == pytest.approx(coverage, rel=1e-6)
    assert prof.density == pytest.approx((counts / np.array(coverage)).tolist(), rel=1e-6)


def test_float64_copy_is_reused_until_weights_change():
    adapter = relu_mlp(6)
    first = adapter.float64_module()
    assert adapter.float64_module() is first and first[0].weight.dtype == torch.float64
    with torch.no_grad():
        adapter.module[0].weight.add_(1.0)
    second = adapter.float64_module()
    assert second is not first and torch.equal(second[0].weight, adapter.module[0].weight.double())
    adapter.module.load_state_dict({k: v * 0 for k, v in adapter.module.state_dict().items()})
    assert adapter.float64_module() is not second  # load_state_dict copies in place: still seen
    assert relu_mlp(6).float64_module() is not adapter.float64_module()  # one copy per adapter, no global


def test_exact_counting_never_gives_up_on_roundoff(digits):
    """Regression: the scaling path of test digit 80 in relu1 has a conv2 unit at |z| ~ 1e-17 near
    s = 0.0073, whose sign is float64 noise; exact counting split there forever ("not affine on any
    piece narrower than 1e-13") on an AVX2 CPU. It must finish, and agree with dense sampling."""
    x = digits.default_inputs(81)[80:81]
    path = scaling_path(digits, x, "relu1", alpha_max=3.0)
    exact = boundary_density(digits, path, exact=True)
    dense = boundary_density(digits, path, exact=False, n_samples=20000, n_profile=0)
    assert exact.exact is True
    count = lambda r: sorted((c.layer, c.unit) for c in r.crossings)  # noqa: E731
    assert count(exact) == count(dense)


def test_exact_counting_accepts_pieces_too_narrow_to_hold_a_point(digits):
    """Regression: in input space from test digit 180 to 218, splitting made a piece a few ulps
    wide, with no float64 point inside to check it by; exact counting crashed there. It must
    finish and agree with dense sampling."""
    x = digits.default_inputs(219)
    path = interpolation_path(digits, x[180:181], x[218:219], "input")
    exact = boundary_density(digits, path, n_profile=0, affine_change=False)
    dense = boundary_density(digits, path, exact=False, n_samples=50000, refine=False, n_profile=0)
    assert exact.exact and exact.n_crossings > 100
    count = lambda r: sorted((c.layer, c.unit) for c in r.crossings)  # noqa: E731
    assert count(exact) == count(dense)


def _jacobian_jumps(adapter, path, crossings):
    """‖J₊ − J₋‖_F by brute force: full Jacobians (path space → output) at the middles of the
    pieces on either side of each crossing, where the map is affine."""
    module = adapter.float64_module()  # a Sequential: the rest of the net after the path's layer is a slice
    rest = module if path.layer == "input" else module[int(path.layer) + 1 :]
    ts = [0.0] + [c.t for c in crossings] + [1.0]

    def jac(t):
        return torch.autograd.functional.jacobian(lambda v: rest(v[None])[0], path.at(np.array([t]))[0])

    return [
        float((jac(0.5 * (ts[i + 1] + ts[i + 2])) - jac(0.5 * (ts[i] + ts[i + 1]))).norm())
        for i in range(len(crossings))
    ]


@pytest.mark.parametrize("case", ["mlp-input", "cnn-hidden", "cnn-own-layer"])
def test_affine_change_per_crossing_equals_brute_force_jacobians(case):
    if case == "mlp-input":
        adapter = relu_mlp(3)
        path = interpolation_path(adapter, 3 * torch.randn(1, 3), 3 * torch.randn(1, 3), "input")
    else:
        adapter = relu_cnn(1)
        x0, x1 = torch.randn(1, 1, 6, 6), torch.randn(1, 1, 6, 6)
        path = interpolation_path(
            adapter, x0, x1, "1" if case == "cnn-hidden" else "0"
        )  # "0": the crossing units' own layer
    res = boundary_density(adapter, path, n_profile=0)
    assert res.exact and res.n_crossings >= 5
    got = [c.affine_change for c in res.crossings]
    assert all(g > 0 for g in got)
    assert got == pytest.approx(_jacobian_jumps(adapter, path, res.crossings), rel=1e-6, abs=1e-12)
    smooth = boundary_density(adapter, path, exact=False, n_samples=100, n_profile=0)
    assert all(c.affine_change is None for c in smooth.crossings)  # no affine pieces claimed when not certified
