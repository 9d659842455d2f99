"""Toy models with known ground-truth directions, trained in seconds on a CPU.

* ``x2`` — the x² example of Chughtai & Bushnaq ("Activation space
  interpretability may be doomed", 2025): x ~ U[-1, 1]^k, h = ReLU(E x + b) with
  n hidden units, y = W_out h (+ c) fitted to y_i = x_i². The only directions
  downstream computation reads are the rows of W_out: that is the ground truth.
* ``superposition`` — the Toy Models of Superposition autoencoder (Elhage et
  al. 2022): n sparse features (each active with probability p, magnitude
  U[0, 1]) into d < n dims, h = W x, x̂ = ReLU(Wᵀ h + b), trained with
  importance-weighted MSE. Ground truth: the columns of W (directions in
  h-space) of the features the model actually represents, ‖W_i‖ >= norm_cut.

Every toy is an ``nn.Module`` with a named hidden layer, so it is read through
``polylens.capture`` like any other model. Training is seeded and
deterministic on CPU (same seed, same weights).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from polylens.capture import capture
from polylens.directions.scoring import unit_rows


def _positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive integer")


@dataclass(frozen=True)
class X2Config:
    """Configuration of the x² toy."""

    n_hidden: int = 64
    """Hidden ReLU units n."""
    n_inputs: int = 1
    """Input dimension k (k = 1 is the scalar x² example; y_i = x_i² for each i)."""
    bias: bool = True
    """Give the hidden layer and the read-out a bias (without one, h = ReLU(E x) can only fit |x|-like shapes)."""
    steps: int = 3000
    """Adam steps."""
    batch_size: int = 512
    lr: float = 3e-3
    n_eval: int = 4096
    """Evaluation inputs (an even grid for k = 1, uniform samples otherwise)."""
    seed: int = 0

    def __post_init__(self):
        for name in ("n_hidden", "n_inputs", "steps", "batch_size", "n_eval"):
            _positive(name, getattr(self, name))
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0")


@dataclass(frozen=True)
class SuperpositionConfig:
    """Configuration of the Toy-Models-of-Superposition autoencoder."""

    n_features: int = 40
    """Sparse input features n."""
    n_hidden: int = 10
    """Hidden dimensions d (superposition when n > d)."""
    p_active: float = 0.05
    """Probability that a feature is non-zero (TMS sparsity S = 1 - p)."""
    importance_decay: float = 1.0
    """Importance of feature i is decay**i (1.0: all equally important)."""
    norm_cut: float = 0.5
    """A feature counts as represented (ground truth) when its column of W has norm >= this."""
    steps: int = 3000
    batch_size: int = 1024
    lr: float = 3e-3
    n_eval: int = 8192
    seed: int = 0

    def __post_init__(self):
        for name in ("n_features", "n_hidden", "steps", "batch_size", "n_eval"):
            _positive(name, getattr(self, name))
        if not 0 < self.p_active <= 1:
            raise ValueError(f"p_active={self.p_active} must be in (0, 1]")
        if not 0 < self.importance_decay <= 1:
            raise ValueError(f"importance_decay={self.importance_decay} must be in (0, 1]")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0")


@dataclass
class Toy:
    """A trained toy, its data and its ground truth.

    model: the trained module; ``layer`` names its hidden layer (a module path).
    inputs: evaluation inputs ``[n_eval, in_dim]``.
    truth: ground-truth directions in the hidden layer's space ``[n_truth, hidden]`` (unit rows).
    final_loss: training loss on the last step.
    """

    name: str
    config: X2Config | SuperpositionConfig
    model: nn.Module
    layer: str
    inputs: Tensor
    truth: Tensor
    final_loss: float

    def target(self, output: Tensor) -> Tensor:
        """The downstream quantity for gradient PCA: the model output ``[batch, k]``."""
        return output

    def activations(self) -> Tensor:
        """Hidden activations on the evaluation inputs ``[n_eval, hidden]``."""
        return capture(self.model, self.inputs, self.layer).activations[self.layer]

    def gradients(self) -> Tensor:
        """Jacobian rows of the output w.r.t. the hidden layer ``[n_eval, k, hidden]``."""
        return capture(self.model, self.inputs, self.layer, target=self.target).gradients[self.layer]

    def describe(self) -> dict:
        return {"setup": self.name, "config": asdict(self.config), "final_loss": self.final_loss}


def _train(model: nn.Module, sample, loss_fn, steps: int, lr: float, gen: torch.Generator) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        x = sample(gen)
        loss = loss_fn(model(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


def train_x2(config: X2Config = X2Config()) -> Toy:
    """Train the x² toy; ground truth = the read-out rows W_out ``[k, n_hidden]``."""
    c = config
    gen = torch.Generator().manual_seed(c.seed)
    torch.manual_seed(c.seed)  # nn.Linear's default init draws from the global generator
    model = nn.Sequential(
        OrderedDict(
            embed=nn.Linear(c.n_inputs, c.n_hidden, bias=c.bias),
            hidden=nn.ReLU(),
            readout=nn.Linear(c.n_hidden, c.n_inputs, bias=c.bias),
        )
    )

    def sample(g):
        return torch.rand(c.batch_size, c.n_inputs, generator=g) * 2 - 1

    loss = _train(model, sample, lambda y, x: ((y - x**2) ** 2).mean(), c.steps, c.lr, gen)
    if c.n_inputs == 1:
        inputs = torch.linspace(-1, 1, c.n_eval).unsqueeze(1)
    else:
        inputs = torch.rand(c.n_eval, c.n_inputs, generator=gen) * 2 - 1
    model.eval()
    truth = unit_rows(model.readout.weight.detach().clone())
    return Toy("x2", c, model, "hidden", inputs, truth, loss)


class TMSModel(nn.Module):
    """x̂ = ReLU(Wᵀ W x + b); ``hidden`` is the d-dimensional bottleneck h = W x."""

    def __init__(self, n_features: int, n_hidden: int):
        super().__init__()
        self.hidden = nn.Linear(n_features, n_hidden, bias=False)  # weight = W: [d, n]
        nn.init.xavier_normal_(self.hidden.weight)
        self.bias = nn.Parameter(torch.zeros(n_features))

    def forward(self, x: Tensor) -> Tensor:
        h = self.hidden(x)  # [batch, d]
        return torch.relu(h @ self.hidden.weight + self.bias)  # [batch, n]


def sample_sparse_features(n: int, batch: int, p: float, gen: torch.Generator, device=None) -> Tensor:
    """TMS inputs ``[batch, n]``: each feature U[0, 1) with probability p, else 0 (drawn on
    ``device``, default the generator's): the one Toy-Models-of-Superposition feature generator."""
    kw = {"generator": gen, "device": gen.device if device is None else device}
    active = torch.rand(batch, n, **kw) < p
    return torch.rand(batch, n, **kw) * active


def train_superposition(config: SuperpositionConfig = SuperpositionConfig()) -> Toy:
    """Train the TMS toy; ground truth = represented columns of W ``[n_truth, d]``."""
    c = config
    gen = torch.Generator().manual_seed(c.seed)
    torch.manual_seed(c.seed)
    model = TMSModel(c.n_features, c.n_hidden)
    importance = c.importance_decay ** torch.arange(c.n_features, dtype=torch.float32)

    def sample(g):
        return sample_sparse_features(c.n_features, c.batch_size, c.p_active, g)

    def loss_fn(xhat, x):
        return (importance * (xhat - x) ** 2).sum(dim=1).mean()

    loss = _train(model, sample, loss_fn, c.steps, c.lr, gen)
    model.eval()
    W = model.hidden.weight.detach().T.clone()  # [n, d]: feature i's direction in h-space
    represented = W.norm(dim=1) >= c.norm_cut
    if not represented.any():
        raise ValueError(f"no feature has a column norm >= norm_cut={c.norm_cut}; lower norm_cut or train longer")
    inputs = sample_sparse_features(c.n_features, c.n_eval, c.p_active, gen)
    return Toy("superposition", c, model, "hidden", inputs, unit_rows(W[represented]), loss)


SETUPS = {"x2": (X2Config, train_x2), "superposition": (SuperpositionConfig, train_superposition)}


def make_toy(setup: str, **overrides) -> Toy:
    """Build and train a toy by name (``x2`` or ``superposition``) with config overrides."""
    if setup not in SETUPS:
        raise ValueError(f"unknown setup {setup!r}; choose one of: {', '.join(SETUPS)}")
    config_cls, train = SETUPS[setup]
    known = config_cls.__dataclass_fields__
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"setup {setup!r} has no option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return train(config_cls(**overrides))


def planted_codes(n: int, n_clusters: int, n_units: int, *, flip: float = 0.05, seed: int = 0):
    """Codes with planted clusters: ``n_clusters`` random prototype codes, each point its
    prototype with every bit flipped with probability ``flip``. Returns ``(bits [n, n_units] bool,
    labels [n])``; prototypes differ in about half their bits, members in about 2·flip·(1−flip)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    protos = rng.random((n_clusters, n_units)) < 0.5
    labels = rng.integers(0, n_clusters, n)
    return protos[labels] ^ (rng.random((n, n_units)) < flip), labels
