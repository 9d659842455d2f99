"""Hand-derived forward + backward of the SAE training loss: one pass, no autograd graph.

For each of E stacked SAEs (a single SAE is E = 1), with xc = x − b_dec, B the batch size:

    pre = xc W_enc + b_enc,  a = f(pre),  err = a W_dec + b_dec − x
    loss = ‖err‖²/B + l1·Σ a·w/B + aux_coef·AuxK          (w = 1, or ‖W_dec row‖ for weighted_l1)

and, with g = 2·err/B and m = [a > 0] (ReLU, and the kept entries of TopK/BatchTopK),

    ∂W_dec = aᵀ g (+ l1·Σ_b a · W_dec/‖W_dec‖/B)      ∂a = g W_decᵀ + l1·w/B
    ∂pre = ∂a ⊙ m,   ∂b_enc = Σ_b ∂pre,   ∂W_enc = xcᵀ ∂pre,   ∂b_dec = Σ_b g − W_enc ∂b_enc.

Five matmuls instead of autograd's six: the b_dec gradient through the encoder is the
vector–matrix product W_enc ∂b_enc, not the [B, d] matrix ∂pre W_encᵀ summed over the batch.
The few elementwise passes over [B, n] write into the matmuls' outputs (ReLU in place, the
mask as a multiply in place). The AuxK term (Gao et al. 2024) is derived the same way.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from sae.model import SAEConfig, SparseAutoencoder

KERNEL_ARCHS = ("relu", "topk", "batchtopk")


class SAEGrads(NamedTuple):
    """Gradients, shaped like the (stacked) parameters."""

    W_enc: Tensor  # [E, d, n]
    b_enc: Tensor  # [E, n]
    W_dec: Tensor  # [E, n, d]
    b_dec: Tensor  # [E, d]


class KernelOutput(NamedTuple):
    """Per-member losses ``[E]``, activations and gradients of one training step."""

    loss: Tensor  # [E]
    mse: Tensor  # [E]
    sparsity: Tensor  # [E] L1 term (relu) or 0
    aux: Tensor  # [E] AuxK term or 0
    acts: Tensor  # [E, batch, n]
    fired: Tensor  # [E, n] bool: latents active on some sample of the batch
    grads: SAEGrads
    kept_min: Tensor | None  # batchtopk: [E] smallest kept positive activation (inf: none); else None


def _activate_(pre: Tensor, arch: str, k: int) -> tuple[Tensor, Tensor | None]:
    """Activations ``[E, B, n]`` from ``pre`` (ReLU applied in place on ``pre``; the caller keeps no
    other use of it) and, for BatchTopK, each member's smallest kept positive value."""
    post = pre.relu_()
    if arch == "relu":
        return post, None
    E, B, n = post.shape
    if arch == "topk":
        vals, idx = post.topk(k, dim=-1)
        return torch.zeros_like(post).scatter_(-1, idx, vals), None
    flat = post.reshape(E, B * n)
    vals, idx = flat.topk(min(k * B, B * n), dim=-1)
    acts = torch.zeros_like(flat).scatter_(-1, idx, vals).reshape(E, B, n)
    kept_min = torch.where(vals > 0, vals, torch.full_like(vals, float("inf"))).amin(-1)
    return acts, kept_min


def sae_loss_and_grads(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    W_dec: Tensor,
    b_dec: Tensor,
    *,
    arch: str = "relu",
    l1: float | Tensor = 0.0,
    k: int = 0,
    decoder_norm: str = "unit",
    aux_coef: float = 0.0,
    aux_k: int = 0,
    dead: Tensor | None = None,
) -> KernelOutput:
    """Loss and gradients of E stacked untied SAEs on one batch (the maths in the module docstring).

    ``x [B, d]`` is shared by all members (or ``[E, B, d]``, one batch each); parameters are
    ``W_enc [E, d, n]``, ``b_enc [E, n]``, ``W_dec [E, n, d]``, ``b_dec [E, d]``; ``l1`` a float or
    a per-member ``[E]`` tensor (relu only); ``dead [E, n]`` (bool) turns on AuxK for topk /
    batchtopk when ``aux_coef > 0``, as ``SparseAutoencoder.forward``. No tensor argument is changed.
    """
    if arch not in KERNEL_ARCHS:
        raise ValueError(f"arch={arch!r} is not supported by the kernel; choose one of {', '.join(KERNEL_ARCHS)}")
    E, d, n = W_enc.shape
    B = x.shape[-2]
    xs = x.unsqueeze(0) if x.dim() == 2 else x  # [1 or E, B, d]
    xc = xs - b_dec.unsqueeze(1)  # [E, B, d] (a new tensor: x is never written)
    pre = torch.baddbmm(b_enc.unsqueeze(1), xc, W_enc)  # [E, B, n]
    acts, kept_min = _activate_(pre, arch, k)
    err = torch.baddbmm(xc, acts, W_dec, beta=-1)  # a W_dec + b_dec − x = a W_dec − xc  [E, B, d]
    mse = torch.linalg.vecdot(err.reshape(E, -1), err.reshape(E, -1)) / B
    g_scale = 2.0 / B  # ∂(‖err‖²/B)/∂err = g_scale·err

    gW_dec = torch.bmm(acts.transpose(1, 2), err).mul_(g_scale)  # aᵀ g
    act_sum = acts.sum(1)  # [E, n] (acts >= 0: also which latents fired)
    zero = mse.new_zeros(E)
    sparsity = zero
    latent_bias = None  # ∂loss/∂a not coming through the decoder: l1·w/B  [E, 1, n]
    if arch == "relu":
        l1v = torch.as_tensor(l1, dtype=W_enc.dtype, device=W_enc.device).expand(E)
        if bool((l1v != 0).any()):
            if decoder_norm == "weighted_l1":
                norms = W_dec.norm(dim=-1)  # [E, n]
                sparsity = l1v * torch.linalg.vecdot(act_sum, norms) / B
                latent_bias = (l1v.unsqueeze(1) * norms / B).unsqueeze(1)
                # ∂‖w‖/∂w = w/‖w‖ (0 for a zero row, as autograd's norm backward)
                inv = torch.where(norms > 0, 1 / norms, torch.zeros_like(norms))
                gW_dec.add_(W_dec * (l1v.unsqueeze(1) * act_sum * inv / B).unsqueeze(-1))
            else:
                sparsity = l1v * act_sum.sum(-1) / B
                latent_bias = (l1v / B).reshape(E, 1, 1).expand(E, 1, n)

    # ∂pre = (g W_decᵀ + l1·w/B) ⊙ [a > 0], masked in the matmul's own output buffer
    # (threshold_backward is ReLU's backward: one pass, no [B, n] bool mask).
    W_decT = W_dec.transpose(1, 2)
    if latent_bias is None:
        g_pre = torch.bmm(err, W_decT).mul_(g_scale)
    else:
        g_pre = torch.baddbmm(latent_bias, err, W_decT, alpha=g_scale)
    torch.ops.aten.threshold_backward.grad_input(g_pre, acts, 0, grad_input=g_pre)

    aux = zero
    if arch != "relu" and aux_coef > 0 and dead is not None and bool(dead.any()):
        aux = _auxk_(pre, err, W_dec, dead, aux_coef, aux_k, d, gW_dec, g_pre)

    gb_enc = g_pre.sum(1)  # [E, n]
    gW_enc = torch.bmm(xc.transpose(1, 2), g_pre)  # [E, d, n]
    # ∂b_dec: +Σ_b g from the decoder, −W_enc ∂b_enc from the encoder (xc = x − b_dec).
    gb_dec = err.sum(1).mul_(g_scale).sub_(torch.bmm(W_enc, gb_enc.unsqueeze(-1)).squeeze(-1))
    loss = mse + sparsity + aux
    grads = SAEGrads(gW_enc, gb_enc, gW_dec, gb_dec)
    return KernelOutput(loss, mse, sparsity, aux, acts, act_sum > 0, grads, kept_min)


def _auxk_(post: Tensor, err: Tensor, W_dec: Tensor, dead: Tensor, coef: float, aux_k: int, d: int,
           gW_dec: Tensor, g_pre: Tensor) -> Tensor:
    """AuxK (as ``sae.model.auxk_loss``): adds its gradients into ``gW_dec`` and ``g_pre`` in place
    and returns the per-member term ``[E]``. ``post`` is ReLU(pre); ``err`` is recon − x."""
    E, B, n = post.shape
    dead = dead.reshape(-1, n).expand(E, n)
    out = post.new_zeros(E)
    for e in range(E):  # members may have different numbers of dead latents (so different k_aux)
        if not bool(dead[e].any()):
            continue
        k_aux = min(aux_k or max(1, d // 2), int(dead[e].sum()))
        masked = torch.where(dead[e], post[e], torch.zeros_like(post[e]))
        vals, idx = masked.topk(k_aux, dim=-1)
        aux_acts = torch.zeros_like(masked).scatter_(-1, idx, vals)  # [B, n]
        r = err[e]  # the residual's negative: the target of aux_recon is x − x̂ = −err
        e_aux = torch.addmm(r, aux_acts, W_dec[e])  # aux_recon − (x − x̂)
        r_c = r - r.mean(0)
        den = (torch.linalg.vecdot(r_c.reshape(-1), r_c.reshape(-1)) / B).clamp_min(1e-12)
        out[e] = coef * torch.linalg.vecdot(e_aux.reshape(-1), e_aux.reshape(-1)) / B / den
        g = e_aux.mul_(2 * coef / (B * den))
        gW_dec[e].addmm_(aux_acts.T, g)
        g_pre[e].add_(torch.ops.aten.threshold_backward(g @ W_dec[e].T, aux_acts, 0))
    return out


# ---- the single-SAE binding used by the trainer ----------------------------------------------


def kernel_supports(config: SAEConfig) -> bool:
    """Whether ``fused_backward_`` computes this SAE's loss (untied, no orthogonality penalty)."""
    return config.arch in KERNEL_ARCHS and not config.tied and config.orth == 0


@torch.no_grad()
def fused_backward_(sae: SparseAutoencoder, x: Tensor, dead: Tensor | None = None) -> KernelOutput:
    """``sae(x, dead).loss.backward()`` without autograd: sets each parameter's ``.grad`` (replacing
    it) and, for BatchTopK in training mode, updates ``sae.threshold`` as ``sae.activate`` does.
    Returns the step's losses as scalars and ``acts [B, n]``; gradients keep a leading E = 1."""
    c = sae.config
    if not kernel_supports(c):
        raise ValueError(f"the kernel needs an untied SAE without orthogonality penalty and arch in {KERNEL_ARCHS}; "
                         f"got arch={c.arch!r}, tied={c.tied}, orth={c.orth}")
    if c.arch == "batchtopk" and not sae.training:
        raise ValueError("the kernel computes BatchTopK's training rule; call sae.train() first (eval uses the threshold θ)")
    params = (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    out = sae_loss_and_grads(
        x, *(p.unsqueeze(0) for p in params), arch=c.arch, l1=c.l1, k=c.k, decoder_norm=c.decoder_norm,
        aux_coef=c.aux_coef, aux_k=c.aux_k, dead=dead,
    )  # fmt: skip
    for p, g in zip(params, out.grads):
        p.grad = g[0]
    if c.arch == "batchtopk" and sae.training and bool(torch.isfinite(out.kept_min[0])):
        m = out.kept_min[0].to(sae.threshold.dtype)  # the EMA of SparseAutoencoder.activate
        first = bool(sae.threshold == 0)
        sae.threshold.copy_(m if first else c.threshold_decay * sae.threshold + (1 - c.threshold_decay) * m)
    return out._replace(loss=out.loss[0], mse=out.mse[0], sparsity=out.sparsity[0], aux=out.aux[0], acts=out.acts[0], fired=out.fired[0])
