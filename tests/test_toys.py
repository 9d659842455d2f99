import copy
import math

import pytest
import torch

from polylens.directions.finders import GradientPCA
from polylens.directions.scoring import score_directions
from polylens.directions.toys import SuperpositionConfig, X2Config, make_toy, sample_sparse_features, train_x2


def test_x2_is_deterministic_and_fits():
    a = train_x2(X2Config(steps=400, seed=3))
    b = train_x2(X2Config(steps=400, seed=3))
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    x = a.inputs
    assert ((a.model(x) - x**2) ** 2).mean() < 5e-3


def test_x2_truth_is_the_read_out_direction_by_finite_differences():
    """The only direction the output reads in the hidden layer: moving h along a unit v changes y by
    v·∇y, so the normalised vector of output changes along the basis vectors is the truth."""
    toy = make_toy("x2", steps=300)
    h = toy.activations()[:5].double()
    readout = copy.deepcopy(toy.model.readout).double()
    eps = 1e-3
    basis = torch.eye(h.shape[1], dtype=torch.float64)
    slopes = torch.stack([(readout(h + eps * e) - readout(h - eps * e))[:, 0] / (2 * eps) for e in basis], dim=1)
    assert torch.allclose(slopes, slopes[:1].expand_as(slopes), atol=1e-9)  # the same direction at every input
    ref = slopes[0] / slopes[0].norm()
    assert torch.allclose(toy.truth[0].double(), ref, atol=1e-6)
    G = toy.gradients()  # the captured Jacobian rows are the same slopes
    assert torch.allclose(G[:5, 0].double(), slopes, atol=1e-5)
    assert score_directions(toy.truth, GradientPCA(1).fit(G).components_).mmcs > 0.999999


def test_superposition_truth_is_where_one_hot_features_land():
    """Feature i alone (input e_i) lands on h = W e_i in the hidden layer: the truth is those points,
    normalised, for the features whose point is at least norm_cut from the origin."""
    toy = make_toy("superposition", steps=300, n_features=12, n_hidden=4, norm_cut=0.3)
    with torch.no_grad():
        landed = toy.model.hidden(torch.eye(12))  # [12, 4]: the forward pass, not the weight read
    keep = landed.norm(dim=1) >= 0.3
    assert toy.truth.shape == (int(keep.sum()), 4)
    assert torch.allclose(toy.truth, landed[keep] / landed[keep].norm(dim=1, keepdim=True), atol=1e-6)


def test_superposition_beats_every_model_without_it():
    """A model that represents only d of n features loses at least Var(x_i) = p/3 − p²/4 on each of the
    other n − d (the best a bias can do for a feature the bottleneck does not carry): the trained toy's
    held-out loss is below that bound only if it packs more than d features into d dimensions."""
    n, d, p = 20, 5, 0.05
    toy = make_toy("superposition", steps=1000, n_features=n, n_hidden=d, p_active=p)
    with torch.no_grad():
        loss = float(((toy.model(toy.inputs) - toy.inputs) ** 2).sum(1).mean())
    bound = (n - d) * (p / 3 - p**2 / 4)
    assert loss < 0.5 * bound
    assert toy.truth.shape[0] > d


def test_sparse_features_have_the_planted_rate_and_magnitudes():
    p, n, batch = 0.1, 30, 20_000
    x = sample_sparse_features(n, batch, p, torch.Generator().manual_seed(0))
    active = x != 0
    sd = math.sqrt(p * (1 - p) / (n * batch))
    assert abs(float(active.float().mean()) - p) < 5 * sd
    values = x[active]
    assert float(values.min()) >= 0 and float(values.max()) < 1
    assert abs(float(values.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / values.numel())  # U[0, 1)
    again = sample_sparse_features(n, batch, p, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


@pytest.mark.parametrize(
    "bad, name", [({"n_hidden": 0}, "n_hidden=0"), ({"steps": -1}, "steps=-1"), ({"bogus": 1}, "bogus")]
)
def test_bad_options(bad, name):
    with pytest.raises(ValueError, match=name):
        make_toy("x2", **bad)


def test_bad_setup_and_config():
    with pytest.raises(ValueError, match="p_active"):
        SuperpositionConfig(p_active=0)
    with pytest.raises(ValueError, match="unknown setup"):
        make_toy("nope")
