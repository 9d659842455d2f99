"""What every clusterer here shares: the points it accepts (``as_points``), the memory rule for a
dense distance matrix, and scikit-learn's estimator contract (``ClustererBase``).

``X`` is a ``SplineCodes``, packed uint64 words, a 0/1 or bool array ``[n, n_units]`` (packed
here), float activations ``[n, d]`` (``metric`` euclidean or cosine), or ``Points``.
"""

from __future__ import annotations

import inspect
import sys

import numpy as np

from polylens.clustering.neighbors import Points
from polylens.memory import available_memory

DENSE_MEMORY_SHARE = 0.5  # a dense distance matrix may take at most this share of available memory


def as_points(X, metric: str | None = None) -> Points:
    """``X`` as ``Points``: codes (SplineCodes, uint64 words, 0/1 or bool arrays) → Hamming;
    float arrays → ``metric`` (default euclidean)."""
    if isinstance(X, Points):
        return X
    codes = sys.modules.get("polylens.lens.codes")  # imports torch: a SplineCodes has imported it already
    if codes is not None and isinstance(X, codes.SplineCodes):
        return Points(X.words, "hamming")
    from polylens.lens.codes import pack_bits

    arr = np.asarray(X)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"points must be a non-empty 2-D array [n_points, n_units], got shape {arr.shape}")
    if np.iscomplexobj(arr):
        raise ValueError("points are complex-valued; give real activations or 0/1 codes")
    if arr.dtype == np.uint64:
        return Points(arr, "hamming")
    if arr.dtype == bool or (metric in (None, "hamming") and np.issubdtype(arr.dtype, np.integer)):
        if not np.isin(arr, (0, 1)).all():
            raise ValueError("integer codes must hold only 0 and 1 values (or pass packed uint64 words)")
        return Points(pack_bits(arr.astype(bool)), "hamming")
    if metric == "hamming":
        if not np.isin(arr, (0, 1)).all():
            raise ValueError("metric='hamming' needs 0/1 codes; these values are not all 0 or 1")
        return Points(pack_bits(arr.astype(bool)), "hamming")
    return Points(arr, metric or "euclidean")


def dense_fits(n: int, bytes_per: int = 4) -> bool:
    """Whether an ``n × n`` distance matrix (plus its working copy) fits the memory share."""
    return 2 * n * n * bytes_per <= DENSE_MEMORY_SHARE * available_memory()


def metric_of(points: Points) -> str | None:
    """The ``metric`` argument that gives ``as_points`` these points' metric back."""
    return None if points.metric == "hamming" else points.metric


class ClustererBase:
    """scikit-learn's contract: ``__init__`` stores its keyword parameters and nothing else, so
    ``get_params``/``set_params`` and ``sklearn.base.clone`` work; ``fit`` returns self."""

    @classmethod
    def _get_param_names(cls) -> list[str]:
        """The parameters of ``__init__``, as scikit-learn's ``BaseEstimator`` reads them."""
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.name != "self" and p.kind != p.VAR_KEYWORD]

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in self._get_param_names()}

    def set_params(self, **params):
        names = self._get_param_names()
        for k, v in params.items():
            if k not in names:
                raise ValueError(f"unknown parameter {k!r} for {type(self).__name__}; parameters: {', '.join(names)}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_

    def _check_fitted(self, attribute: str) -> None:
        if not hasattr(self, attribute):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(
                f"this {type(self).__name__} instance is not fitted yet; call fit with the points first"
            )

    def _say(self, message: str) -> None:
        self.notes_.append(message)
        if self.verbose:
            import sys

            print(f"polylens: {message}", file=sys.stderr)
