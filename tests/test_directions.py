import numpy as np
import pytest
import torch

from polylens.directions.finders import LIB, ActivationPCA, GradientPCA
from polylens.directions.scoring import abs_cosines, score_directions, span_basis, unit_rows
from sae.metrics import frac_recovered, hungarian


def test_gradient_pca_of_linear_map_recovers_row_space_exactly():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(3, 12))  # f(h) = A h: the Jacobian rows are A's rows for every input
    J = np.broadcast_to(A, (50, 3, 12))
    pca = GradientPCA(3).fit(J)
    # span(components) == row space of A: projecting A's rows onto it loses nothing.
    P = pca.components_.T @ pca.components_
    assert np.allclose(A @ P, A, atol=1e-10)
    assert np.allclose(pca.explained_variance_ratio_.sum(), 1.0)
    # Eigenvalues are those of AᵀA.
    assert np.allclose(np.sort(pca.explained_variance_), np.sort(np.linalg.eigvalsh(A @ A.T)), atol=1e-9)


def test_centred_pca_of_constant_gradients_is_zero_uncentred_finds_direction():
    w = np.array([3.0, -4.0, 0.0, 0.0])
    G = np.tile(w, (100, 1))
    unc = GradientPCA(1).fit(G)
    assert abs(abs(unc.components_[0] @ w) / 5.0 - 1.0) < 1e-12
    cen = GradientPCA(1, center=True).fit(G)
    assert np.allclose(cen.explained_variance_, 0.0)
    assert np.allclose(cen.explained_variance_ratio_, 0.0)


def test_activation_pca_matches_sklearn():
    from sklearn.decomposition import PCA

    X = np.random.default_rng(1).normal(size=(200, 6)) @ np.diag([5, 3, 2, 1, 0.5, 0.1])
    ours = ActivationPCA(4).fit(X)
    ref = PCA(4).fit(X)
    assert np.allclose(np.abs(ours.components_ @ ref.components_.T), np.eye(4), atol=1e-8)
    assert np.allclose(ours.explained_variance_ratio_, ref.explained_variance_ratio_, atol=1e-10)
    assert np.allclose(np.abs(ours.transform(X)), np.abs(ref.transform(X)), atol=1e-8)


def test_estimator_contract_and_errors():
    X = torch.randn(20, 5)
    X_before = X.clone()
    pca = ActivationPCA(2)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="not fitted"):
        pca.transform(X)
    assert pca.fit(X) is pca
    assert torch.equal(X, X_before)
    with pytest.raises(ValueError, match=r"n_components=9 must be between 1 and n_features=5"):
        ActivationPCA(9).fit(X)
    bad = X.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        GradientPCA(2).fit(bad)


def test_hungarian_of_permuted_sign_flipped_copy_is_one():
    rng = np.random.default_rng(2)
    T = rng.normal(size=(7, 16))
    F = -T[rng.permutation(7)] * rng.uniform(0.5, 2, size=(7, 1))
    s = score_directions(T, F)
    assert hungarian(T, F)[2] == pytest.approx(1.0)
    assert s.mmcs == pytest.approx(1.0)
    assert frac_recovered(T, F) == 1.0
    assert s.subspace_overlap == pytest.approx(1.0)


def test_scores_against_brute_force():
    rng = np.random.default_rng(3)
    T = rng.normal(size=(4, 6))
    F = rng.normal(size=(3, 6))
    cos = abs_cosines(T, F)
    import itertools

    best_assign = max(
        sum(cos[r, c] for r, c in zip(rows, perm))
        for rows in itertools.combinations(range(4), 3)
        for perm in itertools.permutations(range(3))
    )
    s = score_directions(T, F)
    assert hungarian(T, F)[2] == pytest.approx(best_assign / 4)
    assert s.mmcs == pytest.approx(cos.max(axis=1).mean())
    # Subspace overlap: projection onto span(F) computed by least squares.
    Tn = T / np.linalg.norm(T, axis=1, keepdims=True)
    coef, *_ = np.linalg.lstsq(F.T, Tn.T, rcond=None)
    assert s.subspace_overlap == pytest.approx(np.linalg.norm(F.T @ coef, axis=0).mean())


def test_full_basis_covers_everything_but_is_not_recovery():
    T = np.random.default_rng(4).normal(size=(10, 4))
    s = score_directions(T, np.eye(4))
    assert s.subspace_overlap == pytest.approx(1.0)
    assert frac_recovered(T, np.eye(4)) < 1.0


def test_lib_on_a_linear_toy_equals_the_closed_form():
    """y = W a: every Jacobian is W. LIB's directions are the eigenvectors of G·WᵀW (G = E[a aᵀ]),
    ordered by eigenvalue; with whitened activations (G = I) they are W's right singular vectors
    with importance the squared singular values."""
    from polylens.directions.finders import LIB

    rng = np.random.default_rng(0)
    d, k, n = 6, 3, 4000
    L = rng.normal(size=(d, d))
    A = rng.normal(size=(n, d)) @ L.T  # anisotropic
    W = rng.normal(size=(k, d))
    J = np.broadcast_to(W, (n, k, d))
    lib = LIB().fit(A, J)
    G = A.T @ A / n
    evals, evecs = np.linalg.eig(G @ W.T @ W)
    order = np.argsort(evals.real)[::-1][:k]  # rank k: the rest have eigenvalue 0
    closed = np.real(evecs[:, order]).T
    closed /= np.linalg.norm(closed, axis=1, keepdims=True)
    assert np.allclose(np.abs((lib.components_[:k] * closed).sum(1)), 1.0, atol=1e-6)
    assert np.allclose(lib.importance_[:k], np.sort(evals.real)[::-1][:k], rtol=1e-6)
    assert np.allclose(lib.importance_[k:], 0.0, atol=1e-8)
    # whitened activations: right singular vectors of W, importance s²
    Z = A @ np.linalg.inv(np.linalg.cholesky(G)).T
    white = LIB(k).fit(Z, J)
    _, s, vt = np.linalg.svd(W, full_matrices=False)
    assert np.allclose(np.abs((white.components_ * vt).sum(1)), 1.0, atol=1e-6)
    assert np.allclose(white.importance_, s**2, rtol=1e-6)
    # only the activations' span: a layer living in 2 of 6 dimensions gives 2 directions, inside it
    flat = A[:, :2] @ rng.normal(size=(2, d))
    two = LIB().fit(flat, J)
    assert two.rank_ == 2 and two.components_.shape == (2, d)
    _, _, span = np.linalg.svd(flat, full_matrices=False)
    assert np.allclose(np.linalg.norm(two.components_ @ span[:2].T, axis=1), 1.0, atol=1e-8)
    with pytest.raises(ValueError, match="between 1 and the 2 directions"):
        LIB(3).fit(flat, J)


def test_best_cos_is_the_distribution_mmcs_averages():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(5, 8))
    found = np.vstack([truth[:2] + 0.01 * rng.normal(size=(2, 8)), rng.normal(size=(3, 8))])
    s = score_directions(truth, found)
    assert len(s.best_abs_cos) == 5 and np.mean(s.best_abs_cos) == pytest.approx(s.mmcs)
    assert np.allclose(s.best_abs_cos, abs_cosines(truth, found).max(axis=1))
    assert min(s.best_abs_cos[:2]) > 0.99 and max(s.best_abs_cos[2:]) < 0.99  # two found, three not


def test_the_two_mmcs_differ_exactly_on_sign_flipped_directions():
    """polylens's mmcs is sign-invariant, sae's mmcs_signed is not: on a dictionary whose rows are
    the truth flipped, the first is 1 and the second -1 (each computed in its one place)."""
    from sae.metrics import mmcs_signed

    truth = np.eye(4)[:1]
    assert score_directions(truth, -truth).mmcs == pytest.approx(1.0)
    assert mmcs_signed(
        torch.tensor(truth, dtype=torch.float32), torch.tensor(-truth, dtype=torch.float32)
    ) == pytest.approx(-1.0)


def test_span_basis_and_unit_rows_against_independent_computations():
    rng = np.random.default_rng(5)
    B = rng.normal(size=(2, 7))
    D = np.vstack([B, B[0] + 3 * B[1], -2 * B[1]])  # rank 2, with duplicated directions
    Q = span_basis(D)
    assert Q.shape == (2, 7) and np.allclose(Q @ Q.T, np.eye(2), atol=1e-12)
    P_ref = B.T @ np.linalg.solve(B @ B.T, B)  # the projector onto span(B), by the normal equations
    assert np.allclose(Q.T @ Q, P_ref, atol=1e-10)
    assert span_basis(np.zeros((3, 4))).shape == (0, 4)
    X = np.array([[3.0, 4.0], [0.0, 0.0]])
    assert np.allclose(unit_rows(X), [[0.6, 0.8], [0.0, 0.0]])
    assert torch.allclose(unit_rows(torch.tensor(X)), torch.tensor([[0.6, 0.8], [0.0, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize(
    "estimator", [ActivationPCA(3), GradientPCA(3, center=True), LIB(), LIB(2, tol=1e-3)], ids=repr
)
def test_sklearn_clone_and_not_fitted(estimator):
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError

    twin = clone(estimator)
    assert type(twin) is type(estimator) and twin.get_params() == estimator.get_params()
    with pytest.raises(NotFittedError):
        twin.transform(np.ones((2, 4)))
    assert twin.set_params(n_components=1).n_components == 1 and estimator.n_components != 1
    with pytest.raises(ValueError, match="not a parameter"):
        twin.set_params(bogus=1)


def test_lib_transform_gives_uncorrelated_features_with_the_importances():
    """f = Λ^{1/2} Vᵀ D^{-1/2} Uᵀ a: over the fitted activations E[f fᵀ] = diag(Λ) (computed here from
    the features alone), and each feature grows along its own direction."""
    rng = np.random.default_rng(6)
    n, d, k = 3000, 5, 2
    A = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    W = rng.normal(size=(k, d))
    lib = LIB().fit(A, np.broadcast_to(W, (n, k, d)))
    F = lib.transform(A)
    assert F.shape == (n, lib.components_.shape[0])
    assert np.allclose(F.T @ F / n, np.diag(lib.importance_), atol=1e-8 * lib.importance_.max())
    assert np.all(lib.transform(lib.components_[:k]).diagonal() > 0)
    with pytest.raises(ValueError, match="fitted with 5"):
        lib.transform(A[:, :4])
