"""Direction finders: activation PCA, gradient PCA and the Local Interaction Basis (scored by
``polylens.directions.scoring``).

Both finders eigendecompose a second-moment matrix of rows ``X: [n, dim]``:

* ``ActivationPCA`` — the covariance of activations (centred, as usual).
* ``GradientPCA`` — E[g gᵀ] of gradients of a downstream quantity with respect
  to the activations (the "active subspace" matrix), **uncentred by default**.
  For a vector output the rows are the Jacobian rows, so E[g gᵀ] = E[JᵀJ].
  Centring is wrong here: in a model whose read-out is linear in the layer
  (the x² toy), ∂y/∂h = w_out for every input, so the centred covariance of the
  gradients is identically zero while E[g gᵀ] = w_out w_outᵀ has w_out as its
  only eigenvector.

Both follow the scikit-learn estimator contract: ``fit`` returns ``self``;
``components_: [n_components, dim]`` (unit rows), ``explained_variance_``,
``explained_variance_ratio_`` (share of the trace), ``mean_``.
"""

from __future__ import annotations

import numpy as np

from polylens.directions.scoring import as_rows, unit_rows
from polylens.validation import check_int


class _Estimator:
    """scikit-learn's parameter protocol (``get_params``/``set_params``, so ``sklearn.base.clone``
    works) without importing scikit-learn: the parameters are ``__init__``'s arguments."""

    @classmethod
    def _param_names(cls) -> list[str]:
        import inspect

        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.name != "self" and p.kind != p.VAR_KEYWORD]

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"{name}={value!r} is not a parameter of {type(self).__name__}; its parameters: {valid}"
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    def _check_fitted(self):
        if not hasattr(self, "components_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit first")

    def _check_features(self, X) -> np.ndarray:
        X = as_rows(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but this {type(self).__name__} was fitted with {self.n_features_in_}"
            )
        return X


class _SecondMomentPCA(_Estimator):
    def fit(self, X, y=None):
        # [n, k, dim] Jacobian rows: E over the n samples of Σ_k g_k g_kᵀ = E[JᵀJ].
        n = X.shape[0] if getattr(X, "ndim", 2) == 3 else None
        X = as_rows(X)
        n = n or X.shape[0]
        dim = X.shape[1]
        k = (
            dim
            if self.n_components is None
            else check_int("n_components", self.n_components, high=dim, high_name="n_features")
        )
        self.mean_ = X.mean(axis=0) if self.center else np.zeros(dim)
        Xc = X - self.mean_
        moment = Xc.T @ Xc / n  # [dim, dim]
        evals, evecs = np.linalg.eigh(moment)
        order = np.argsort(evals)[::-1][:k]
        evals = np.clip(evals[order], 0.0, None)
        comps = evecs[:, order].T  # [k, dim]
        # Deterministic sign: the largest-magnitude entry of each component is positive.
        signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
        comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
        total = float(np.trace(moment))
        self.components_ = comps
        self.explained_variance_ = evals
        self.explained_variance_ratio_ = evals / total if total > 0 else np.zeros_like(evals)
        self.n_features_in_ = dim
        return self

    def transform(self, X) -> np.ndarray:
        """Coordinates of ``X`` along the components: ``[n, n_components]``."""
        self._check_fitted()
        return (self._check_features(X) - self.mean_) @ self.components_.T

    def fit_transform(self, X, y=None) -> np.ndarray:
        return self.fit(X).transform(X)


class ActivationPCA(_SecondMomentPCA):
    """PCA of a layer's activations ``[n, dim]``: eigenvectors of Cov(a) (``center=True``)."""

    def __init__(self, n_components: int | None = None, *, center: bool = True):
        self.n_components = n_components
        self.center = center


class GradientPCA(_SecondMomentPCA):
    """PCA of gradients ``[n, dim]`` or Jacobian rows ``[n, k, dim]``: eigenvectors of E[g gᵀ].

    Uncentred by default (see the module docstring for why); ``center=True``
    gives the covariance of the gradients instead.
    """

    def __init__(self, n_components: int | None = None, *, center: bool = False):
        self.n_components = n_components
        self.center = center


class LIB(_Estimator):
    """The Local Interaction Basis of one layer (Bushnaq et al. 2024, arXiv:2405.10928; the
    ``"jacobian"`` basis of Apollo's ``rib``), from activations ``[n, dim]`` and the gradients of a
    downstream target with respect to them (``[n, dim]`` or Jacobian rows ``[n, k, dim]``):

    1. eigendecompose the activation Gram matrix G = E[a aᵀ] = U D Uᵀ (uncentred, as ``rib``,
       which folds biases into the weights) and drop eigenvalues below ``tol`` × the largest;
    2. whiten: coordinates w = D^{-1/2} Uᵀ a, in which the target's gradients are g D^{1/2} U;
    3. eigendecompose M = E[(J U D^{1/2})ᵀ (J U D^{1/2})] = V Λ Vᵀ;
    4. the features are f = Λ^{1/2} Vᵀ w; each one's direction in activation space (the column of
       U D^{1/2} V that reconstructs a from f) is a row of ``components_`` (unit), ordered by
       ``importance_`` = Λ, the feature's share of E‖J‖² (gradient energy), highest first;
       ``transform`` gives the features f (E[f fᵀ] = diag(Λ) over the fitted activations).

    Equivalently the directions are the eigenvectors of G·E[JᵀJ]. They lie in the span of the
    activations (step 1), so a read-out direction outside that span is found only in part.
    """

    def __init__(self, n_components: int | None = None, *, tol: float = 1e-5):
        self.n_components = n_components
        self.tol = tol

    def fit(self, X, gradients):
        n = X.shape[0]
        A = as_rows(X, "activations")
        grads_n = gradients.shape[0]
        J = as_rows(gradients, "gradients")
        if grads_n != n:
            raise ValueError(f"{n} activation rows but {grads_n} gradient rows; give the gradients of the same inputs")
        if J.shape[1] != A.shape[1]:
            raise ValueError(
                f"activations have {A.shape[1]} features but gradients {J.shape[1]}; they must be of the same layer"
            )
        G = A.T @ A / n
        H = J.T @ J / n  # E[JᵀJ] (summed over the k target columns)
        d, U = np.linalg.eigh(G)
        keep = d > self.tol * max(float(d.max()), 0.0)
        if not keep.any():
            raise ValueError("the activations are all zero: there is no basis to find")
        U, d = U[:, keep], d[keep]
        half = U * np.sqrt(d)  # U D^{1/2}: [dim, r]
        M = half.T @ H @ half
        lam, V = np.linalg.eigh(M)
        order = np.argsort(lam)[::-1]
        k = len(order) if self.n_components is None else self.n_components
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= len(order):
            raise ValueError(
                f"n_components={self.n_components} must be between 1 and the {len(order)} directions "
                "the activations span"
            )
        order = order[:k]
        comps = (half @ V[:, order]).T  # [k, dim]
        comps = unit_rows(comps)
        signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
        signs = np.where(signs == 0, 1.0, signs)[:, None]
        self.components_ = comps * signs
        # f = Λ^{1/2} Vᵀ D^{-1/2} Uᵀ a, with each feature's sign that of its direction
        self.encoder_ = signs * np.sqrt(np.clip(lam[order], 0.0, None))[:, None] * (V[:, order].T @ (U / np.sqrt(d)).T)
        self.importance_ = np.clip(lam[order], 0.0, None)
        total = float(np.trace(H))
        self.importance_ratio_ = self.importance_ / total if total > 0 else np.zeros_like(self.importance_)
        self.rank_ = int(keep.sum())
        self.n_features_in_ = A.shape[1]
        return self

    def transform(self, X) -> np.ndarray:
        """The features f of activations ``X [n, dim]``: ``[n, n_components]`` (see the class docstring)."""
        self._check_fitted()
        return self._check_features(X) @ self.encoder_.T
