"""``polylens sae train|eval|sweep --data tms``: Toy-Models-of-Superposition data for the SAE
trainer, drawn by the one TMS feature generator (``polylens.directions.toys.sample_sparse_features``).

``sae`` does not know this data (``sae`` and ``polylens`` never import each other); ``open_data``
is what the commands hand to ``sae.runs`` to open a data spec: ``'tms'`` here, every other spec by
``sae.synthetic.make_data``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TMSDataConfig:
    """n sparse features embedded in d dimensions (the field names are what run folders record)."""

    n_features: int = 40
    """Sparse features n."""
    d: int = 10
    """Embedding dimension (superposition when n > d)."""
    sparsity: float = 0.95
    """S: each feature is 0 with probability S, else U[0, 1)."""
    seed: int = 0
    """Seed of the embedding directions."""

    def __post_init__(self):
        from polylens.validation import check_float, check_int

        check_int("n_features", self.n_features)
        check_int("d", self.d)
        if not 0 <= check_float("sparsity", self.sparsity) < 1:
            raise ValueError(f"sparsity={self.sparsity} must be in [0, 1)")


class TMSData:
    """x ∈ R^n with P(x_i ≠ 0) = 1 − S, x_i ~ U[0, 1); activations h = x @ features, with
    ``features [n, d]`` random unit directions (the ground truth an SAE should recover). A seeded
    stream, as the trainer reads one: ``sample(batch, generator) -> [batch, d]``."""

    def __init__(self, config: TMSDataConfig | None = None, device="cpu"):
        import torch

        from polylens.directions.scoring import unit_rows

        c = self.config = config if config is not None else TMSDataConfig()
        F = torch.randn(c.n_features, c.d, generator=torch.Generator().manual_seed(c.seed))
        self.features = unit_rows(F).to(device)
        self.device = torch.device(device)

    @property
    def d(self) -> int:
        return self.config.d

    def expected_active(self) -> float:
        """Expected number of non-zero features per sample, n·(1 − S)."""
        return self.config.n_features * (1 - self.config.sparsity)

    def sample_codes(self, batch: int, generator):
        """The sparse coefficients ``[batch, n]``."""
        from polylens.directions.toys import sample_sparse_features

        c = self.config
        return sample_sparse_features(c.n_features, batch, 1 - c.sparsity, generator, device=self.device)

    def sample(self, batch: int, generator):
        """Activations ``[batch, d]`` = codes @ features."""
        return self.sample_codes(batch, generator) @ self.features


def open_data(spec, seed: int = 0, device="cpu", **options):
    """The data source for ``spec``: ``'tms'`` (``options``: fields of ``TMSDataConfig`` but
    ``seed``) or whatever ``sae.synthetic.make_data`` opens (``'sharkey'``, an array file, an
    activation store)."""
    if spec != "tms":
        from sae.synthetic import make_data

        return make_data(spec, seed=seed, device=device, **options)
    known = [k for k in TMSDataConfig.__dataclass_fields__ if k != "seed"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"data 'tms' has no option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return TMSData(TMSDataConfig(seed=seed, **options), device=device)
