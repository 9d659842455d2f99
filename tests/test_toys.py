import pytest
import torch

from polylens.directions.finders import ActivationPCA, GradientPCA, score_directions
from polylens.directions.toys import SuperpositionConfig, X2Config, make_toy, train_x2


def test_x2_is_deterministic_and_fits():
    a = train_x2(X2Config(steps=400, seed=3))
    b = train_x2(X2Config(steps=400, seed=3))
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    x = a.inputs
    assert ((a.model(x) - x**2) ** 2).mean() < 5e-3


def test_x2_gradients_equal_readout_and_gradient_pca_finds_it():
    toy = make_toy("x2", steps=300)
    G = toy.gradients()
    w = toy.model.readout.weight.detach()
    assert torch.allclose(G, w.expand_as(G), atol=1e-6)
    comp = GradientPCA(1).fit(G).components_
    assert score_directions(toy.truth, comp).mmcs > 0.999999


def test_superposition_truth_is_represented_columns():
    toy = make_toy("superposition", steps=300, n_features=12, n_hidden=4, norm_cut=0.3)
    W = toy.model.hidden.weight.detach().T
    keep = W.norm(dim=1) >= 0.3
    assert toy.truth.shape == (int(keep.sum()), 4)
    assert torch.allclose(toy.truth, W[keep] / W[keep].norm(dim=1, keepdim=True))
    # With n > d no d-dimensional PCA basis can match more than d directions one-to-one.
    n_truth = toy.truth.shape[0]
    assert n_truth > 4  # more represented features than dimensions: superposition
    s = score_directions(toy.truth, ActivationPCA(4).fit(toy.activations()).components_)
    assert s.n_directions == 4 and s.hungarian_mean_cos <= 4 / n_truth + 1e-9


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
