"""The evaluator's batch-1 base: for a path in a hidden layer, what runs before that layer is
computed once from the base input and the patched layer hands its consumers the batch of path
points. It must give the crossings the expanded base gives (and the pre-activations a hand-written
forward gives), and fall back to the expanded base where a model cannot take a batch-1 branch."""

import numpy as np
import torch
from torch import nn

from polylens.lens.density import boundary_density
from polylens.lens.paths import Evaluator, interpolation_path
from polylens.models.base import ModelAdapter


def _adapter(net, acts, name):
    names = [n for n, _ in net.named_modules() if n]
    describe = lambda out: [str(i) for i in out.reshape(out.shape[0], -1).argmax(1).tolist()]  # noqa: E731
    return ModelAdapter(name, net.eval(), acts, names, prepare=torch.as_tensor, describe_output=describe)


class ResCNN(nn.Module):
    """stem conv → ReLU6 → [conv1 → ReLU → conv2, + the stem's output] → conv3 → ReLU → linear."""

    def __init__(self, skip_by_batch: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.act0 = nn.ReLU6()
        self.conv1 = nn.Conv2d(4, 6, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 5, 3, padding=1)
        self.act3 = nn.ReLU()
        self.fc = nn.Linear(5 * 6 * 6, 3)
        self.skip_by_batch = skip_by_batch  # a (contrived) skip that reads the batch size

    def forward(self, x):
        s = self.act0(self.stem(x))
        h = self.conv2(self.act1(self.conv1(s)))
        h = h + (s * s.shape[0] if self.skip_by_batch else s)  # batch 1 + batch m broadcasts
        return self.fc(self.act3(self.conv3(h)).flatten(1))


class CatCNN(nn.Module):
    """Two branches of one stem, concatenated along channels: a batch-1 branch cannot join a batch-m one."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.act0 = nn.ReLU()
        self.conv_b = nn.Conv2d(4, 3, 1)
        self.conv_a = nn.Conv2d(4, 3, 3, padding=1)
        self.act_a = nn.ReLU()
        self.conv3 = nn.Conv2d(6, 5, 3, padding=1)
        self.act3 = nn.ReLU()
        self.fc = nn.Linear(5 * 6 * 6, 3)

    def forward(self, x):
        s = self.act0(self.stem(x))
        b = self.conv_b(s)  # runs before the path's layer, so it is part of the base's computation
        a = self.act_a(self.conv_a(s))
        return self.fc(self.act3(self.conv3(torch.cat([a, b], dim=1))).flatten(1))


def _res_adapter(seed=0, **kw):
    torch.manual_seed(seed)
    net = ResCNN(**kw)
    with torch.no_grad():
        net.conv1.weight.mul_(3.0)
    return _adapter(net, {"stem": "relu6", "conv1": "relu", "conv3": "relu"}, "rescnn")


def _cat_adapter(seed=0):
    torch.manual_seed(seed)
    return _adapter(CatCNN(), {"stem": "relu", "conv_a": "relu", "conv3": "relu"}, "catcnn")


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 2, 6, 6, generator=g, dtype=torch.float64).float()


def _same_crossings(a, b):
    assert a.n_crossings == b.n_crossings > 0 and a.exact == b.exact
    for c, d in zip(a.crossings, b.crossings):
        assert (c.layer, c.unit, c.breakpoint) == (d.layer, d.unit, d.breakpoint)
        assert abs(c.t - d.t) <= 1e-12
        assert c.affine_change == d.affine_change or abs(c.affine_change - d.affine_change) <= 1e-12 * abs(
            d.affine_change
        )
    assert a.profile == b.profile


def _first_conv_batches(adapter):
    """Record the batch size every forward pass feeds the stem (the module before the path)."""
    seen = []
    handle = adapter.float64_module().stem.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    return seen, handle


def _hand_forward_res(net, base, points):
    """conv3's pre-activation at path points in conv1's output space, written out by hand."""
    s = torch.clamp(net.stem(base), 0, 6)
    h = net.conv2(torch.relu(points)) + s
    return net.conv3(h).reshape(points.shape[0], -1)


def test_batch1_base_matches_the_expanded_base_and_a_hand_forward_on_a_residual_cnn():
    adapter = _res_adapter()
    x = _inputs()
    path = interpolation_path(adapter, x[:1], x[1:], "conv1")
    points = path.at(np.linspace(0.0, 1.0, 9))
    seen, handle = _first_conv_batches(adapter)
    try:
        shared = Evaluator(adapter, path, ["conv1", "conv3"])
        z_shared, out_shared = shared(points, want_output=True)
        n_seen = len(seen)
        expanded = Evaluator(adapter, path, ["conv1", "conv3"], shared_base=False)
        z_expanded, out_expanded = expanded(points, want_output=True)
    finally:
        handle.remove()
    assert shared.shared_base is True and expanded.shared_base is False
    # the stem ran on the batch-1 base, but for the first comparison (4 expanded rows); the expanded
    # route fed it the 8 points after the first (the first call is one point: its width is unknown)
    assert set(seen[:n_seen]) == {1, 4} and seen[:n_seen].count(4) == 1 and 8 in seen[n_seen:]
    assert torch.equal(z_shared, z_expanded) and torch.equal(out_shared, out_expanded)
    net64 = adapter.float64_module()
    with torch.no_grad():
        hand = _hand_forward_res(net64, x[:1].double(), points)
    width = points[0].numel()
    assert torch.allclose(z_shared[:, width:], hand, rtol=0, atol=1e-12)


def test_batch1_base_gives_the_expanded_routes_crossings_exact_and_sampled():
    adapter = _res_adapter()
    x = _inputs()
    path = interpolation_path(adapter, x[:1], x[1:], "conv1")
    for exact in (True, False):
        fast = boundary_density(adapter, path, exact=exact, n_samples=40, n_profile=20)
        slow = boundary_density(adapter, path, exact=exact, n_samples=40, n_profile=20, shared_base=False)
        _same_crossings(fast, slow)
        assert fast.evaluations == slow.evaluations
        if exact:
            assert all(c.affine_change is not None and c.affine_change > 0 for c in fast.crossings)


def test_a_concatenation_with_a_batch1_branch_falls_back_to_the_expanded_base():
    adapter = _cat_adapter()
    x = _inputs(2)
    path = interpolation_path(adapter, x[:1], x[1:], "conv_a")
    ev = Evaluator(adapter, path, ["conv_a", "conv3"])
    points = path.at(np.linspace(0.0, 1.0, 7))
    z, _ = ev(points)
    assert ev.shared_base is False  # the batch-1 route raised in torch.cat; the expanded one ran
    net = adapter.float64_module()
    with torch.no_grad():
        s = torch.relu(net.stem(x[:1].double()))
        b = net.conv_b(s).expand(7, -1, -1, -1)
        hand = net.conv3(torch.cat([torch.relu(points), b], dim=1)).reshape(7, -1)
    assert torch.allclose(z[:, points[0].numel() :], hand, rtol=0, atol=1e-12)
    fast = boundary_density(adapter, path, n_profile=10)
    slow = boundary_density(adapter, path, n_profile=10, shared_base=False)
    _same_crossings(fast, slow)


def test_a_model_whose_skip_reads_the_batch_size_is_caught_by_the_first_comparison():
    adapter = _res_adapter(skip_by_batch=True)
    x = _inputs(3)
    path = interpolation_path(adapter, x[:1], x[1:], "conv1")
    ev = Evaluator(adapter, path, ["conv3"])
    z, _ = ev(path.at(np.linspace(0.0, 1.0, 5)))
    assert ev.shared_base is False  # same shapes, other values: the expanded base is used
    reference = Evaluator(adapter, path, ["conv3"], shared_base=False)
    assert torch.equal(z, reference(path.at(np.linspace(0.0, 1.0, 5)))[0])


def test_one_point_calls_leave_the_route_undecided_until_a_batch_comes():
    adapter = _res_adapter()
    x = _inputs()
    path = interpolation_path(adapter, x[:1], x[1:], "conv1")
    ev = Evaluator(adapter, path, ["conv3"])
    ev(path.at(np.array([0.5])))
    assert ev.shared_base is None  # one point: the batch-1 base is the expanded one, nothing to decide
    ev(path.at(np.linspace(0.0, 1.0, 3)))
    assert ev.shared_base is True


class BranchCNN(nn.Module):
    """A stem, then two branches joined as InceptionV1 joins them (a batch-1 branch broadcast): the
    path lies in branch a; branch b, later in forward order, reads the stem only."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.act0 = nn.ReLU()
        self.conv_a = nn.Conv2d(4, 3, 3, padding=1)
        self.act_a = nn.ReLU()
        self.conv_a2 = nn.Conv2d(3, 5, 3, padding=1)
        self.act_a2 = nn.ReLU()
        self.conv_b = nn.Conv2d(4, 5, 1)
        self.act_b = nn.ReLU()
        self.fc = nn.Linear(10 * 6 * 6, 3)

    def forward(self, x):
        s = self.act0(self.stem(x))
        a = self.act_a2(self.conv_a2(self.act_a(self.conv_a(s))))
        b = self.act_b(self.conv_b(s))
        n = max(a.shape[0], b.shape[0])
        return self.fc(torch.cat([a.expand(n, -1, -1, -1), b.expand(n, -1, -1, -1)], dim=1).flatten(1))


def test_a_layer_off_the_paths_branch_is_shown_independent_and_its_order_costs_no_splits():
    torch.manual_seed(0)
    acts = {"stem": "relu", "conv_a": "relu", "conv_a2": "relu", "conv_b": "relu"}
    adapter = _adapter(BranchCNN(), acts, "branchcnn")
    x = _inputs(4)
    path = interpolation_path(adapter, x[:1], x[1:], "conv_a")
    ev = Evaluator(adapter, path, ["conv_a", "conv_a2", "conv_b"])
    assert ev.shares_base() and ev.path_independent == {"conv_b"}
    fast = boundary_density(adapter, path, n_profile=10)
    slow = boundary_density(adapter, path, n_profile=10, shared_base=False)  # every flip before conv_b splits
    assert fast.layers == slow.layers == ["conv_a", "conv_a2", "conv_b"]
    _same_crossings(fast, slow)
    assert {c.layer for c in fast.crossings} == {"conv_a", "conv_a2"}  # conv_b never moves
    assert fast.evaluations < slow.evaluations
