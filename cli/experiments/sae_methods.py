"""The SAEs ``polylens compare`` trains beside the direction finders, through ``sae``'s one engine:
ReLU+L1 SAEs on a toy's activations and gradients, and TopK SAEs (activations, gradients, the
g-SAE) on a model's layer, whose scale is unknown and whose sparsity TopK fixes regardless."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SAEOptions:
    """The SAE method of ``compare``: a ReLU+L1 SAE trained on the toy's hidden activations."""

    dict_size: int | None = None
    """Latents; default twice the larger of the ground-truth count and the layer width."""
    l1: float = 0.3
    """L1 coefficient (SAELens/Anthropic convention: Σ over latents, squared error Σ over dims)."""
    steps: int = 3000
    """Adam steps of batch 256 over the toy's evaluation activations (lr 3e-3)."""
    enabled: bool = True
    gsae_k: int = 4
    """The g-SAE's active latents per sample (it is a TopK SAE; the superposition toy has about 2
    active features a sample)."""


def train_sae(rows, steps: int, seed: int, **fields):
    """The SAE every ``compare`` method trains: ``SAEConfig(**fields)`` (``d_in`` among them) fitted
    with ``steps`` Adam steps of batch min(256, n) at lr 3e-3 on ``rows [n, width]``."""
    from sae.config import SAEConfig, TrainConfig
    from sae.train import train

    batch = min(256, rows.shape[0])
    config = TrainConfig(n_samples=batch * steps, batch_size=batch, lr=3e-3, seed=seed, log_every=steps)
    return train(SAEConfig(**fields), config, rows.float()).sae_


@dataclass(frozen=True)
class LayerSAEOptions:
    """The three TopK SAEs of ``compare --model``: on the activations (``sae``), on the gradients'
    Jacobian rows with b_dec fixed at 0 (``gradient_sae``) and the g-SAE on both (``gsae``). TopK,
    not ReLU+L1, because a real layer's scale is unknown and TopK's sparsity does not depend on it;
    the three share dictionary size, k and steps, so only what they read and how they select differs."""

    dict_size: int | None = None
    """Latents; default 4 × the layer width."""
    k: int | None = None
    """Active latents per row; default max(2, min(32, width // 8))."""
    steps: int = 2000
    """Adam steps of batch 256 (lr 3e-3) over the captured rows."""
    enabled: bool = True
    controls: bool = False
    """Also train the SAE's frozen-random-decoder control (``compare_layer.CONTROLS``)."""


def train_topk_sae(
    rows,
    d: int,
    opts: LayerSAEOptions,
    seed: int,
    *,
    arch: str = "topk",
    learn_b_dec: bool = True,
    grad_columns: int = 1,
    freeze_decoder: bool = False,
):
    """A TopK SAE (or with ``arch="gsae"`` a g-SAE, whose rows are ``[x, J rows]``) of width ``d`` on ``rows``."""
    n = opts.dict_size or 4 * d
    k = opts.k or max(2, min(32, d // 8))
    return train_sae(
        rows,
        opts.steps,
        seed,
        d_in=d,
        dict_size=n,
        arch=arch,
        k=min(k, n),
        learn_b_dec=learn_b_dec,
        grad_columns=grad_columns,
        freeze_decoder=freeze_decoder,
    )
