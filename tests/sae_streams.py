"""A small ground-truth stream for the sae tests, from sae's own generator: n unit features in d
dimensions, each active independently with probability 1 − sparsity at U[0, 1) (Sharkey's generator
with no frequency decay and no correlation fires every feature with exactly that probability)."""

from sae.synthetic import SharkeyConfig, SharkeyData


def sparse_stream(n_features: int, d: int, sparsity: float = 0.95, seed: int = 0) -> SharkeyData:
    m = n_features * (1 - sparsity)
    return SharkeyData(SharkeyConfig(n_features=n_features, d=d, m=m, decay=1.0, correlated=False, seed=seed))
