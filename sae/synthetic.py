"""Ground-truth synthetic activations: the Sharkey et al. (2022) generator.

It is a seeded stream: ``sample(batch, generator)`` returns ``[batch, d]`` on the stream's
device, and ``features`` ``[n, d]`` (unit rows) is the ground truth an SAE should recover.

Sharkey generator — decay form: we implement the *multiplicative* form of the public
replication (feature i's firing probability carries a factor λ^i), not Heap et al.'s
"probability raised to the power λ·i". Per sample, a copula draw z ~ N(0, Σ) gives u = Φ(z)
(uniform marginals, correlated through Σ); feature i fires with probability min(1, s·λ^i·u_i).
Σ is a random correlation matrix drawn **once per dataset** (A·Aᵀ, A Gaussian, rescaled to unit
diagonal) and applied **per sample** (the replication drew one z per batch). The uncorrelated mode
uses independent u_i ~ U(0, 1): the same marginals, so s — solved exactly by bisection on
Σ_i E[min(1, s λ^i u)] = m — gives the expected number of active features m in both modes.
Active coefficients are U[0, 1). No "at least one active" forcing (it would bias the count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sae.geometry import unit_rows


def _expected_fire(c: Tensor) -> Tensor:
    """E[min(1, c·u)] for u ~ U(0, 1): c/2 when c <= 1, else 1 − 1/(2c)."""
    return torch.where(c <= 1, c / 2, 1 - 1 / (2 * c.clamp_min(1e-30)))


def solve_scale(decay: Tensor, m: float) -> float:
    """The s with Σ_i E[min(1, s·decay_i·u)] = m (bisection; the sum is increasing in s)."""
    if not 0 < m < decay.numel():
        raise ValueError(f"expected active count m={m} must be in (0, n_features={decay.numel()})")
    d = decay.double()
    lo, hi = 0.0, 1.0
    while float(_expected_fire(hi * d).sum()) < m:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if float(_expected_fire(mid * d).sum()) < m:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass
class SharkeyConfig:
    """Configuration of the Sharkey–Braun–Millidge toy data."""

    n_features: int = 512
    """Ground-truth features n."""
    d: int = 256
    """Activation dimension."""
    m: float = 5.0
    """Expected number of active features per sample."""
    decay: float = 0.99
    """Geometric frequency decay λ (multiplicative form: factor λ^i on feature i)."""
    correlated: bool = True
    """Correlate firing through a Gaussian copula (Σ drawn once per dataset)."""
    seed: int = 0
    """Seed of the features and Σ (batches take their own generator)."""
    scale_sigma: float = 0.0
    """Feature scales that are not normalised: each feature's coefficients are U[0, 1) times its
    own scale s_i = exp(σ z_i − σ²/2), z_i ~ N(0, 1) drawn once per dataset (log-normal, mean 1);
    0 (default): every feature on the same scale, as Sharkey et al."""

    def __post_init__(self):
        if not (math.isfinite(self.scale_sigma) and self.scale_sigma >= 0):
            raise ValueError(f"scale_sigma={self.scale_sigma} must be a finite number >= 0")
        for name in ("n_features", "d"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name}={v!r} must be a positive integer")
        if not 0 < self.m < self.n_features:
            raise ValueError(f"m={self.m} must be in (0, n_features={self.n_features})")
        if not 0 < self.decay <= 1:
            raise ValueError(f"decay={self.decay} must be in (0, 1]")


class SharkeyData:
    """The Sharkey et al. generator (see module docstring). ``features [n, d]`` is the ground truth."""

    def __init__(self, config: SharkeyConfig | None = None, device: str | torch.device = "cpu"):
        c = self.config = config if config is not None else SharkeyConfig()
        g = torch.Generator().manual_seed(c.seed)
        F = torch.randn(c.n_features, c.d, generator=g)
        self.features = unit_rows(F).to(device)
        self.decay_factors = (c.decay ** torch.arange(c.n_features, dtype=torch.float64)).float()
        self.scale = solve_scale(self.decay_factors, c.m)
        self.fire_scale = (self.scale * self.decay_factors).to(device)  # c_i = s·λ^i
        self.chol = None
        if c.correlated:
            A = torch.randn(c.n_features, c.n_features, generator=g, dtype=torch.float64)
            S = A @ A.T / c.n_features
            dsq = S.diagonal().sqrt()
            S = S / dsq[:, None] / dsq[None, :]
            S = S + 1e-6 * torch.eye(c.n_features, dtype=torch.float64)
            self.chol = torch.linalg.cholesky(S).float().to(device)  # Σ = L Lᵀ, once per dataset
        self.feature_scales = torch.ones(c.n_features, device=device)
        """Each feature's coefficient scale ``[n]`` (all 1 unless ``scale_sigma``)."""
        if c.scale_sigma > 0:  # its own generator: the features and Σ stay those of scale_sigma=0
            z = torch.randn(c.n_features, generator=torch.Generator().manual_seed(c.seed * 1_000_003 + 17))
            self.feature_scales = torch.exp(c.scale_sigma * z - c.scale_sigma**2 / 2).to(device)
        self.device = torch.device(device)

    @property
    def d(self) -> int:
        return self.config.d

    def expected_active(self) -> float:
        """Closed-form expected number of active features per sample (= m)."""
        return float(_expected_fire(self.fire_scale.double().cpu()).sum())

    def firing_probabilities(self) -> Tensor:
        """Marginal probability that each feature fires ``[n]``."""
        return _expected_fire(self.fire_scale.double().cpu()).float()

    def sample_codes(self, batch: int, generator: torch.Generator) -> Tensor:
        """Sparse feature coefficients ``[batch, n]`` (U[0, 1) × the feature's scale where active, else 0)."""
        n = self.config.n_features
        kw = dict(generator=generator, device=self.device)
        if self.chol is not None:
            z = torch.randn(batch, n, **kw) @ self.chol.T  # one copula draw per sample
            u = 0.5 * (1 + torch.erf(z / math.sqrt(2)))  # Φ(z): uniform marginals
        else:
            u = torch.rand(batch, n, **kw)
        fire = torch.rand(batch, n, **kw) < (self.fire_scale * u).clamp(max=1)
        codes = torch.rand(batch, n, **kw) * fire
        return codes * self.feature_scales if self.config.scale_sigma > 0 else codes

    def sample(self, batch: int, generator: torch.Generator) -> Tensor:
        """Activations ``[batch, d]`` = codes @ features."""
        return self.sample_codes(batch, generator) @ self.features


SYNTHETIC = {"sharkey": (SharkeyConfig, SharkeyData)}


def make_data(spec: str, seed: int = 0, device: str | torch.device = "cpu", **options):
    """A data source by name: ``'sharkey'`` (options: fields of ``SharkeyConfig``; ``seed`` seeds the
    features and Σ) → a generator object with ``features``; anything else is a path to a ``.npy`` /
    ``.safetensors`` array → ``[N, d]`` tensor, or to an activation store folder (``polylens cache``)
    → ``sae.activation_store.ActivationStore`` (``options`` must be empty). Other synthetic data
    (``polylens sae --data tms``) is opened by the caller and handed to ``sae.runs`` as ``open_data``."""
    if spec in SYNTHETIC:
        config_cls, data_cls = SYNTHETIC[spec]
        known = [k for k in config_cls.__dataclass_fields__ if k != "seed"]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"data {spec!r} has no option(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return data_cls(config_cls(seed=seed, **options), device=device)
    if options:
        raise ValueError(
            f"option(s) {', '.join(sorted(options))} apply to synthetic data ({', '.join(SYNTHETIC)}), "
            f"not to the file {spec}"
        )
    from sae.activation_store import ActivationStore, is_store
    from sae.sources import load_array

    return ActivationStore(spec) if is_store(spec) else load_array(spec)
