"""The sparse autoencoder: ReLU+L1 ("relu"), TopK, BatchTopK, JumpReLU, gated and Matryoshka
BatchTopK in one module.

x̂ = f((x − b_dec) W_enc + b_enc) W_dec + b_dec, with f = ReLU (L1 penalty), the k largest
ReLU pre-activations per sample (TopK, Gao et al. 2024) or the k·batch largest in the batch
(BatchTopK, Bussmann et al. 2024; at inference a single threshold θ replaces the batch rule).
Loss conventions follow SAELens/Anthropic: squared error summed over dimensions and averaged over
the batch; L1 summed over latents (times ‖W_dec row‖ in ``decoder_norm="weighted_l1"`` mode).

* JumpReLU (Rajamanoharan et al. 2024, "Jumping Ahead"): f(z) = z·H(z − θ) with a threshold
  θ_i = exp(log_threshold_i) per latent; loss ‖x − x̂‖² + l0·‖f‖₀. H has no gradient, so θ learns
  through the straight-through pseudo-derivatives ∂f/∂θ = −(θ/ε) K((z − θ)/ε) and
  ∂H(z − θ)/∂θ = −(1/ε) K((z − θ)/ε), K the rectangle 1{|u| < ½}, ε = ``bandwidth``;
  ∂f/∂z = H(z − θ) and the L0 term sends nothing to z (as the paper and SAELens).
* Gated (Rajamanoharan et al. 2024): π_gate = xc W_enc + b_enc (b_enc is SAELens's b_gate),
  π_mag = xc (W_enc ⊙ exp(r_mag)) + b_mag, f = 1{π_gate > 0} ⊙ ReLU(π_mag); loss ‖x − x̂‖²
  + l1·Σ ReLU(π_gate)·w (w as the ReLU SAE's L1) + ‖x − (ReLU(π_gate) W_dec* + b_dec*)‖², the last
  (the auxiliary loss) through a frozen (detached) decoder, so it trains the gate's encoder only.
* Matryoshka BatchTopK (Bussmann et al. 2025): BatchTopK's f; every prefix p of ``prefixes``
  reconstructs on its own, x̂_p = f[:, :p] W_dec[:p] + b_dec, and the loss is Σ_p ‖x − x̂_p‖²
  (the sum, as SAELens; the last prefix is the whole dictionary) + AuxK on the whole residual.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from sae.config import ARCHS, AUXK_ARCHS, BATCH_THRESHOLD_ARCHS, DECODER_NORMS, INITS, K_ARCHS, SAEConfig  # noqa: F401
from sae.geometry import unit_rows


class SAEOutput(NamedTuple):
    """Result of a forward pass (losses are scalars; ``loss`` is what training minimises)."""

    recon: Tensor  # [batch, d_in]
    acts: Tensor  # [batch, dict_size]
    pre_acts: Tensor  # [batch, dict_size]
    loss: Tensor
    mse: Tensor
    sparsity: Tensor  # L1 term (relu, gated), L0 term (jumprelu) or 0
    aux: Tensor  # AuxK term (k rules with dead latents), the gated auxiliary reconstruction, or 0
    orth: Tensor  # orthogonality penalty or 0
    prefix_mse: Tensor | None = None  # matryoshka: [P] squared error of each prefix (the last is ``mse``)


def rectangle(u: Tensor) -> Tensor:
    """The JumpReLU pseudo-derivative's kernel K(u) = 1{|u| < ½}."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """z·H(z − θ); gradients H(z − θ) for z and −(θ/ε) K((z − θ)/ε) for θ (summed over the batch)."""

    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        g_theta = -(theta / eps) * rectangle((z - theta) / eps) * grad
        return grad * (z > theta).to(grad.dtype), g_theta.reshape(-1, theta.shape[-1]).sum(0), None


class _Step(torch.autograd.Function):
    """H(z − θ); gradients 0 for z and −(1/ε) K((z − θ)/ε) for θ (summed over the batch)."""

    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        g_theta = -(1 / eps) * rectangle((z - theta) / eps) * grad
        return None, g_theta.reshape(-1, theta.shape[-1]).sum(0), None


def jumprelu(z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """JumpReLU with the straight-through threshold gradient (``theta [n]``, ``z [..., n]``)."""
    return _JumpReLU.apply(z, theta, bandwidth)


def step(z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """H(z − θ) with the straight-through threshold gradient (JumpReLU's L0)."""
    return _Step.apply(z, theta, bandwidth)


@torch.no_grad()
def update_threshold_(threshold: Tensor, kept_min: Tensor, decay: float) -> None:
    """BatchTopK's inference θ (per member for a stack): the smallest kept activation m on the first
    step (θ = 0), then the EMA θ ← decay·θ + (1 − decay)·m; unchanged where nothing was kept (m = inf)."""
    m = kept_min.detach().to(threshold.dtype)
    new = torch.where(threshold == 0, m, decay * threshold + (1 - decay) * m)
    threshold.copy_(torch.where(torch.isfinite(m), new, threshold))


@torch.no_grad()
def unit_rows_(W: Tensor, dim: int = -1) -> None:
    """Rescale ``W`` in place to unit norm along ``dim`` (the decoder rows' axis)."""
    W.div_(W.norm(dim=dim, keepdim=True).clamp_min(1e-12))


@torch.no_grad()
def remove_parallel_grad_(W: Tensor, dim: int = -1) -> None:
    """Subtract from ``W.grad`` its component along each (unit) vector of ``W`` along ``dim``."""
    if W.grad is not None:
        U = W / W.norm(dim=dim, keepdim=True).clamp_min(1e-12)
        W.grad.sub_((W.grad * U).sum(dim=dim, keepdim=True) * U)


class SparseAutoencoder(nn.Module):
    """One SAE. Parameters ``W_enc [d_in, n]``, ``b_enc [n]``, ``W_dec [n, d_in]`` (absent when
    tied), ``b_dec [d_in]``; JumpReLU also ``log_threshold [n]`` (θ = exp), gated also ``r_mag [n]``
    and ``b_mag [n]`` (absent otherwise: None); buffer ``threshold`` (BatchTopK's and Matryoshka's
    inference θ, scalar). A transcoder (``d_out > 0``) has ``W_dec [n, d_out]``, ``b_dec [d_out]``
    and with ``skip`` ``W_skip [d_out, d_in]``."""

    def __init__(self, config: SAEConfig, generator: torch.Generator | None = None):
        super().__init__()
        if not config.scale_free:  # built without data: the scale-following defaults at σ = 1 (AUTO)
            config = config.resolve_scale(1.0)
        c = self.config = config
        self.W_enc = nn.Parameter(torch.empty(c.d_in, c.dict_size))
        self.b_enc = nn.Parameter(torch.zeros(c.dict_size))
        self.W_dec = None if c.tied else nn.Parameter(torch.empty(c.dict_size, c.d_target))
        self.b_dec = nn.Parameter(torch.zeros(c.d_target))
        self.W_skip = nn.Parameter(torch.zeros(c.d_out, c.d_in)) if c.skip else None
        jump, gated = c.arch == "jumprelu", c.arch == "gated"
        self.log_threshold = nn.Parameter(torch.full((c.dict_size,), math.log(c.threshold_init))) if jump else None
        self.r_mag = nn.Parameter(torch.zeros(c.dict_size)) if gated else None
        self.b_mag = nn.Parameter(torch.zeros(c.dict_size)) if gated else None
        self.register_buffer("threshold", torch.zeros(()))
        from sae.inits import initialize

        initialize(self, None, generator, placeholder=True)

    # ---- weights -------------------------------------------------------------------------------
    @property
    def decoder(self) -> Tensor:
        """Decoder rows ``[n, d_in]`` (the dictionary's directions)."""
        return self.W_enc.T if self.W_dec is None else self.W_dec

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale decoder rows to unit norm (in place; 'unit' mode only)."""
        if self.config.decoder_norm == "unit":
            W = self.W_enc if self.W_dec is None else self.W_dec
            unit_rows_(W, dim=0 if self.W_dec is None else 1)

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Drop the gradient component along each (unit) decoder row, so a step stays near the sphere."""
        if self.config.decoder_norm == "unit":
            W = self.W_enc if self.W_dec is None else self.W_dec
            remove_parallel_grad_(W, dim=0 if self.W_dec is None else 1)

    # ---- forward -------------------------------------------------------------------------------
    def encode_pre(self, x: Tensor) -> Tensor:
        if self.config.transcoder:  # b_dec lives in the target's space (SAELens: apply_b_dec_to_input false)
            return x @ self.W_enc + self.b_enc
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def split(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """A g-SAE's row ``[x, J rows]`` as (activations ``[B, d_in]``, Jacobian rows ``[B, k, d_in]``);
        a transcoder's row ``[x, y]`` as (x, None); other rules, or rows of width ``d_in``: (x, None)."""
        c = self.config
        if c.arch == "gsae" and x.shape[-1] == c.data_width:
            return x[..., : c.d_in], x[..., c.d_in :].reshape(*x.shape[:-1], c.grad_columns, c.d_in)
        if c.transcoder and x.shape[-1] == c.data_width:
            return x[..., : c.d_in], None
        return x, None

    def target(self, x: Tensor) -> Tensor:
        """What the reconstruction of data rows ``x`` is compared with: a transcoder's y (the row's last
        ``d_out`` columns), a g-SAE's activations, else the rows themselves."""
        c = self.config
        if c.transcoder:
            if x.shape[-1] != c.data_width:
                raise ValueError(
                    f"a transcoder's rows are [x, y], {c.d_in} + {c.d_out} = {c.data_width} wide; got {x.shape[-1]}"
                )
            return x[..., c.d_in :]
        return self.split(x)[0]

    def magnitude_pre(self, pre: Tensor) -> Tensor:
        """Gated: the magnitude path's pre-activations π_mag = (π_gate − b_gate)·exp(r_mag) + b_mag,
        i.e. xc (W_enc ⊙ exp(r_mag)) + b_mag with the shared directions."""
        return (pre - self.b_enc) * self.r_mag.exp() + self.b_mag

    def activate(self, pre: Tensor, jac: Tensor | None = None) -> Tensor:
        """Latent activations ``[batch, n]`` from pre-activations (training vs eval rule for BatchTopK;
        for a g-SAE the Jacobian rows ``jac [batch, k, d_in]`` rank the latents; for the gated SAE
        ``pre`` is the gate's)."""
        c = self.config
        if c.arch == "jumprelu":
            return jumprelu(pre, self.log_threshold.exp(), c.bandwidth)
        if c.arch == "gated":
            return (pre > 0).to(pre.dtype) * torch.relu(self.magnitude_pre(pre))
        post = torch.relu(pre)
        if c.arch == "relu":
            return post
        if c.arch == "gsae":
            score = post if jac is None else post * gradient_reach(jac, self.decoder)
            idx = score.detach().topk(c.k, dim=-1).indices
            return torch.zeros_like(post).scatter(-1, idx, post.gather(-1, idx))
        if c.arch == "topk":
            vals, idx = post.topk(c.k, dim=-1)
            return torch.zeros_like(post).scatter(-1, idx, vals)
        if self.training:  # batchtopk, matryoshka
            flat = post.reshape(-1)
            kk = min(c.k * post.shape[0], flat.numel())
            vals, idx = flat.topk(kk)
            acts = torch.zeros_like(flat).scatter(0, idx, vals).reshape(post.shape)
            with torch.no_grad():
                kept_min = torch.where(vals > 0, vals, torch.full_like(vals, float("inf"))).amin()
                update_threshold_(self.threshold, kept_min, c.threshold_decay)
            return acts
        return post * (post > self.threshold)

    def encode(self, x: Tensor) -> Tensor:
        x, jac = self.split(x)
        return self.activate(self.encode_pre(x), jac)

    def decode(self, acts: Tensor, x: Tensor | None = None) -> Tensor:
        """``acts @ W_dec + b_dec``; a skip transcoder adds ``x W_skipᵀ`` and needs its input rows ``x``."""
        out = acts @ self.decoder + self.b_dec
        if self.W_skip is not None:
            if x is None:
                raise ValueError("a skip transcoder's output reads its input too: call decode(acts, x)")
            out = out + self.split(x)[0] @ self.W_skip.T
        return out

    def reconstruct(self, x: Tensor) -> Tensor:
        """The SAE's output on input rows ``x [B, d_in]`` (a transcoder's: its prediction of y)."""
        return self.decode(self.encode(x), x)

    def forward(self, x: Tensor, dead: Tensor | None = None) -> SAEOutput:
        """Reconstruct ``x [batch, d_in]`` (a transcoder: predict y from rows ``[x, y]``); ``dead [n]``
        (bool) enables AuxK for topk/batchtopk."""
        c = self.config
        y = self.target(x)
        x, jac = self.split(x)
        pre = self.encode_pre(x)
        acts = self.activate(pre, jac)
        skip = self.b_dec if self.W_skip is None else self.b_dec + x @ self.W_skip.T  # what decode adds to acts W_dec
        recon = acts @ self.decoder + skip
        err = recon - y
        mse = err.pow(2).sum(-1).mean()
        zero = mse.new_zeros(())
        sparsity = zero
        penalised = torch.relu(pre) if c.arch == "gated" else acts  # gated: the L1 is on ReLU(π_gate)
        if c.arch in ("relu", "gated") and c.l1 > 0:
            if c.decoder_norm == "weighted_l1":
                sparsity = c.l1 * (penalised * self.decoder.norm(dim=-1)).sum(-1).mean()
            else:
                sparsity = c.l1 * penalised.abs().sum(-1).mean()
        if c.arch == "jumprelu" and c.l0 > 0:
            sparsity = c.l0 * step(pre, self.log_threshold.exp(), c.bandwidth).sum(-1).mean()
        aux = zero
        if c.arch in AUXK_ARCHS and c.aux_coef > 0 and dead is not None and bool(dead.any()):
            aux = c.aux_coef * auxk_loss(self, pre, err.detach(), dead)
        if c.arch == "gated":  # the gate alone reconstructs through the frozen decoder
            aux = (torch.relu(pre) @ self.decoder.detach() + skip.detach() - y).pow(2).sum(-1).mean()
        prefix_mse, total = None, mse
        if c.arch == "matryoshka":
            prefix_mse = torch.stack(
                [(acts[:, :p] @ self.decoder[:p] + skip - y).pow(2).sum(-1).mean() for p in c.prefixes[:-1]] + [mse]
            )
            total = prefix_mse.sum()
        orth = zero
        if c.orth > 0:
            orth = c.orth * (
                orthogonality_full(self.decoder) if c.orth_full else orthogonality_active(self.decoder, acts)
            )
        return SAEOutput(recon, acts, pre, total + sparsity + aux + orth, mse, sparsity, aux, orth, prefix_mse)


def gradient_reach(jac: Tensor, decoder: Tensor) -> Tensor:
    """‖J d_i‖ for every latent: ``jac [B, k, d]``, ``decoder [n, d]`` → ``[B, n]`` (or a stack
    ``[E, n, d]`` → ``[E, B, n]``; k = 1: |g · d_i|), how much the target moves per unit of latent i
    (the g-SAE's ranking weight)."""
    jacT = jac.detach().transpose(-1, -2)  # [B, d, k]
    decoder = decoder.detach()
    if decoder.dim() == 3:  # [E, 1, n, d] @ [1, B, d, k] -> [E, B, n, k]
        return torch.linalg.vector_norm(decoder.unsqueeze(1) @ jacT.unsqueeze(0), dim=-1)
    return torch.linalg.vector_norm(decoder @ jacT, dim=-1)  # [n, d] @ [B, d, k] -> [B, n, k]


def auxk_loss(sae: SparseAutoencoder, pre: Tensor, residual: Tensor, dead: Tensor) -> Tensor:
    """AuxK (Gao et al. 2024, App. A.2): the top-k_aux dead latents reconstruct the main residual
    ``x − x̂`` (detached); normalised by the residual's variance so the scale is data-free."""
    c = sae.config
    k_aux = min(c.aux_k or max(1, c.d_in // 2), int(dead.sum()))
    masked = torch.where(dead, torch.relu(pre), torch.zeros_like(pre))
    vals, idx = masked.topk(k_aux, dim=-1)
    aux_acts = torch.zeros_like(pre).scatter(-1, idx, vals)
    aux_recon = aux_acts @ sae.decoder  # no bias: it models the residual
    # The target is x − x̂, the prediction is +aux_recon: err = recon − x, so the target is −err.
    num = (aux_recon + residual).pow(2).sum(-1).mean()
    den = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
    return num / den


def orthogonality_active(decoder: Tensor, acts: Tensor) -> Tensor:
    """Mean over latents active in the batch of |cos| to their closest other decoder row.

    O(m·n) for m active latents (an [m, n] cosine block, not the [n, n] Gram matrix); the
    gradient reaches both the active row and its nearest neighbour's row.
    """
    active = (acts != 0).any(0).nonzero().squeeze(-1)  # [m]
    if active.numel() == 0:
        return decoder.new_zeros(())
    U = unit_rows(decoder)
    cos = (U[active] @ U.T).abs()  # [m, n]
    cos = cos.scatter(1, active.unsqueeze(1), 0.0)  # drop each row's self-similarity
    return cos.max(dim=1).values.mean()


def orthogonality_full(decoder: Tensor) -> Tensor:
    """Mean over all latents of |cos| to their closest other decoder row (O(n²); small dictionaries)."""
    U = unit_rows(decoder)
    cos = (U @ U.T).abs()
    cos = cos - torch.diag_embed(cos.diagonal())
    return cos.max(dim=1).values.mean()


def max_pairwise_cos(decoder: Tensor) -> float:
    """Largest |cos| between two distinct decoder rows."""
    with torch.no_grad():
        U = unit_rows(decoder.float())
        cos = (U @ U.T).abs()
        cos.fill_diagonal_(0)
        return float(cos.max())
