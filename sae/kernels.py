"""Hand-derived forward + backward of the SAE training loss: one pass, no autograd graph.

For each of E stacked SAEs (a single SAE is E = 1), with xc = x − b_dec, B the batch size:

    pre = xc W_enc + b_enc,  a = f(pre),  err = a W_dec + b_dec − x = a W_dec − xc
    loss = ‖err‖²/B + l1·Σ a·w/B + aux_coef·AuxK          (w = 1, or ‖W_dec row‖ for weighted_l1)

and, with g = 2·err/B and m = [a > 0] (ReLU, and the kept entries of TopK/BatchTopK),

    ∂W_dec = aᵀ g (+ l1·Σ_b a · W_dec/‖W_dec‖/B)      ∂a = g W_decᵀ + l1·w/B
    ∂pre = ∂a ⊙ m,   ∂b_enc = Σ_b ∂pre,   ∂W_enc = xcᵀ ∂pre,   ∂b_dec = Σ_b g − W_enc ∂b_enc.

Dense path: five matmuls instead of autograd's six (the b_dec gradient through the encoder is the
vector–matrix product W_enc ∂b_enc, not ∂pre W_encᵀ summed over the batch); ReLU, the mask and
the biases are applied inside or in place on the matmuls' outputs, with no [B, n] bool tensor.
Sparse path (CPU, for each member with fewer than ``SPARSE_MAX_DENSITY`` of its entries active; a
stack whose members differ runs its dense and its sparse members separately): only the encoder is a
dense matmul; a W_dec, aᵀ g and xcᵀ ∂pre are ``embedding_bag`` sums over the active entries and
g W_decᵀ is sampled at them (``torch.sparse.sampled_addmm``). AuxK (Gao et al. 2024) uses the
dense path.

JumpReLU (either path; the sparse one samples g W_decᵀ at the active entries and at the inactive
ones within ε/2 of θ, which the threshold's gradient reads too): a = pre·H(pre − θ),
θ = exp(log_threshold), loss += l0·Σ H(pre − θ)/B; with K = 1{|pre − θ| < ε/2} the
straight-through pseudo-derivatives give
    ∂θ = −(1/ε) Σ_b K ⊙ (θ·∂a + l0/B),  ∂log_threshold = θ ⊙ ∂θ,
    ∂pre = ∂a ⊙ H(pre − θ).
Matryoshka (dense path): err_p = a[:, :p] W_dec[:p] − xc for each prefix p, loss = Σ_p ‖err_p‖²/B;
a latent of segment s (between two prefixes) is read by every prefix from s on, so with the suffix
sums G_s = Σ_{p ≥ s} err_p its gradients are ∂a[:, s] = (2/B) G_s W_dec[s]ᵀ and
∂W_dec[s] = (2/B) a[:, s]ᵀ G_s, and ∂b_dec = (2/B) Σ_b G_0 − W_enc ∂b_enc.
Gated (dense path): the gradients in ``_gated``'s docstring.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sae.config import AUXK_ARCHS, BATCH_THRESHOLD_ARCHS, sparsity_field
from sae.model import SAEConfig, SparseAutoencoder, gradient_reach, rectangle, update_threshold_

KERNEL_ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka", "gated")
"""The rules ``sae_loss_and_grads`` computes; a g-SAE reaches it as TopK with a ranking weight."""
DENSE_ARCHS = ("matryoshka", "gated")
"""Rules the kernel computes on its dense path only (Matryoshka's prefixes read g W_decᵀ per
segment; the gated SAE's auxiliary loss reads it at every open gate). JumpReLU's sparse path samples
g W_decᵀ at the active entries and at those within ε/2 of their threshold (its STE reads both)."""
SUPPORTED_ARCHS = KERNEL_ARCHS + ("gsae",)
"""The ``SAEConfig.arch`` values the trainer's kernel path takes (``kernel_supports``)."""
SPARSE_MAX_DENSITY = 0.1
"""Fraction of active entries under which the sparse path is taken: the sparse products win below
it and lose above it (bench/bench_sae_kernels.py measures where they break even; docs/scale.md)."""


class SAEGrads(NamedTuple):
    """Gradients, shaped like the (stacked) parameters."""

    W_enc: Tensor  # [E, d, n]
    b_enc: Tensor  # [E, n]
    W_dec: Tensor  # [E, n, d]
    b_dec: Tensor  # [E, d]
    log_threshold: Tensor | None = None  # [E, n] jumprelu
    r_mag: Tensor | None = None  # [E, n] gated
    b_mag: Tensor | None = None  # [E, n] gated


class KernelOutput(NamedTuple):
    """Per-member losses ``[E]``, activations and gradients of one training step."""

    loss: Tensor  # [E]
    mse: Tensor  # [E] the whole dictionary's squared error
    sparsity: Tensor  # [E] L1 term (relu), L0 term (jumprelu) or 0
    aux: Tensor  # [E] AuxK term or 0
    acts: Tensor  # [E, batch, n]
    fired: Tensor  # [E, n] bool: latents active on some sample of the batch
    grads: SAEGrads
    kept_min: Tensor | None  # batchtopk: [E] smallest kept positive activation (inf: none); else None


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
    sparse: bool | None = None,
    rank_weight: Tensor | None = None,
    log_threshold: Tensor | None = None,
    bandwidth: float = 0.001,
    prefixes: tuple[int, ...] = (),
    r_mag: Tensor | None = None,
    b_mag: Tensor | None = None,
) -> KernelOutput:
    """Loss and gradients of E stacked untied SAEs on one batch (the maths in the module docstring).

    ``x [B, d]`` is shared by all members (or ``[E, B, d]``, one batch each); parameters are
    ``W_enc [E, d, n]``, ``b_enc [E, n]``, ``W_dec [E, n, d]``, ``b_dec [E, d]``; ``l1`` a float or
    a per-member ``[E]`` tensor (relu only); ``dead [E, n]`` or ``[n]`` (bool) turns on AuxK for
    topk / batchtopk when ``aux_coef > 0``, as ``SparseAutoencoder.forward``. ``sparse``: force the
    sparse (True) or dense (False) path (AuxK steps are always dense); None picks by density.
    ``rank_weight [E, B, n]`` (topk only): select the k latents with the largest ReLU(pre) ×
    weight, keeping their ReLU(pre) values: the g-SAE's rule (``gsae_inputs``). JumpReLU:
    ``log_threshold [E, n]``, ``bandwidth`` ε, and ``l1`` is the L0 coefficient; Matryoshka:
    ``prefixes`` (the last one n) and ``k``; gated: ``r_mag``, ``b_mag [E, n]`` (``b_enc`` is the
    gate's bias). No tensor argument is changed.
    """
    _check(x, W_enc, b_enc, W_dec, b_dec, arch, k)
    E, d, n = W_enc.shape
    if arch == "gated":
        return _gated(x, W_enc, b_enc, W_dec, b_dec, r_mag, b_mag, l1, decoder_norm)
    xs = x.unsqueeze(0) if x.dim() == 2 else x  # [1 or E, B, d]
    xc = xs - b_dec.unsqueeze(1)  # [E, B, d] (a new tensor: x is never written)
    pre = torch.baddbmm(b_enc.unsqueeze(1), xc, W_enc)  # [E, B, n]
    if rank_weight is not None and arch != "topk":
        raise ValueError(f"rank_weight applies to arch='topk' (the g-SAE), not {arch!r}")
    theta = log_threshold.exp() if arch == "jumprelu" else None
    acts, topk_vals, topk_idx, kept_min = _activate_(pre, arch, k, rank_weight, theta)  # pre: ReLU(pre) but jumprelu
    use_aux = arch in AUXK_ARCHS and aux_coef > 0 and dead is not None and bool(dead.any())
    if arch in DENSE_ARCHS:
        on_sparse = torch.zeros(E, dtype=torch.bool)
    elif use_aux or sparse is not None:
        on_sparse = torch.full((E,), bool(sparse) and not use_aux)
    else:
        on_sparse = _sparse_members(acts, topk_idx)
    l1v = torch.as_tensor(l1, dtype=W_dec.dtype, device=W_dec.device).expand(E)
    jump = (pre, theta, bandwidth) if arch == "jumprelu" else None
    segments = _segments(prefixes, n) if arch == "matryoshka" else None
    auxk = None
    if use_aux:  # AuxK reads ReLU(pre): the k rules' pre is ReLU'd already, JumpReLU's is not
        auxk = (dead, torch.relu(pre) if arch == "jumprelu" else pre)
    args = (arch, decoder_norm, aux_coef, aux_k, auxk, jump, segments)
    if bool(on_sparse.all()) or not bool(on_sparse.any()):  # one path for the whole stack
        parts = [_rest(xc, acts, topk_vals, topk_idx, W_enc, W_dec, l1v, bool(on_sparse[0]), *args)]
        members = [None]
    else:  # a sweep's low-L1 members dense, its high-L1 members sparse: each on its own path
        members = [on_sparse.logical_not().nonzero().squeeze(1), on_sparse.nonzero().squeeze(1)]
        parts = [
            _rest(
                *(_take(t, idx) for t in (xc, acts, topk_vals, topk_idx, W_enc, W_dec, l1v)),
                path,
                *args[:5],
                None if jump is None else (_take(pre, idx), _take(theta, idx), bandwidth),
                segments,
            )
            for idx, path in zip(members, (False, True))
        ]
    mse, inner, sparsity, aux, act_sum, gW_enc, gb_enc, gW_dec, gb_dec, g_log = (
        _put(E, [p[i] for p in parts], members) for i in range(10)
    )
    grads = SAEGrads(gW_enc, gb_enc, gW_dec, gb_dec, g_log)
    return KernelOutput(mse + inner + sparsity + aux, mse, sparsity, aux, acts, act_sum > 0, grads, kept_min)


def _gated(
    x: Tensor,
    W_enc: Tensor,
    b_gate: Tensor,
    W_dec: Tensor,
    b_dec: Tensor,
    r_mag: Tensor,
    b_mag: Tensor,
    l1,
    decoder_norm: str,
) -> KernelOutput:
    """The gated SAE's loss and gradients (dense). With xW = xc W_enc, s = exp(r_mag),
    π_g = xW + b_gate, π_m = xW ⊙ s + b_mag, a = 1{π_g > 0} ⊙ ReLU(π_m), err = a W_dec − xc,
    e_aux = ReLU(π_g) W_dec − xc (the auxiliary reconstruction; its decoder frozen) and g = 2/B:

        ∂π_m = g·err W_decᵀ ⊙ 1{π_g > 0} ⊙ 1{π_m > 0}
        ∂π_g = (g·e_aux W_decᵀ + l1·w/B) ⊙ 1{π_g > 0}
        ∂xW = ∂π_g + s ⊙ ∂π_m,   ∂W_enc = xcᵀ ∂xW,
        ∂b_gate = Σ_b ∂π_g,   ∂b_mag = Σ_b ∂π_m,
        ∂r_mag = Σ_b ∂π_m ⊙ xW ⊙ s,   ∂W_dec = g·aᵀ err (+ the weighted L1's row-norm term),
        ∂b_dec = g·Σ_b err − W_enc Σ_b ∂xW   (the auxiliary loss's b_dec is frozen too)."""
    E, d, n = W_enc.shape
    if r_mag is None or b_mag is None:
        raise ValueError("arch='gated' needs r_mag and b_mag ([E, n] each)")
    xs = x.unsqueeze(0) if x.dim() == 2 else x
    B = xs.shape[1]
    g_scale = 2.0 / B
    xc = xs - b_dec.unsqueeze(1)  # [E, B, d]
    xW = torch.bmm(xc, W_enc)  # [E, B, n]
    s = r_mag.exp().unsqueeze(1)  # [E, 1, n]
    pg = xW + b_gate.unsqueeze(1)
    pm = torch.addcmul(b_mag.unsqueeze(1), xW, s)
    gate = pg > 0
    rg = torch.relu(pg)
    acts = torch.relu(pm) * gate
    err = torch.baddbmm(xc, acts, W_dec, beta=-1)
    e_aux = torch.baddbmm(xc, rg, W_dec, beta=-1)
    mse = torch.linalg.vecdot(err.reshape(E, -1), err.reshape(E, -1)) / B
    aux = torch.linalg.vecdot(e_aux.reshape(E, -1), e_aux.reshape(E, -1)) / B
    l1v = torch.as_tensor(l1, dtype=W_dec.dtype, device=W_dec.device).expand(E)
    gW_dec = torch.bmm(acts.transpose(1, 2), err).mul_(g_scale)
    norms = W_dec.norm(dim=-1) if decoder_norm == "weighted_l1" else torch.ones_like(b_gate)  # w [E, n]
    rg_sum = rg.sum(1)  # [E, n]
    sparsity = l1v * torch.linalg.vecdot(rg_sum, norms) / B
    if decoder_norm == "weighted_l1":
        inv = torch.where(norms > 0, 1 / norms, torch.zeros_like(norms))
        gW_dec.add_(W_dec * (l1v.unsqueeze(1) * rg_sum * inv / B).unsqueeze(-1))
    W_decT = W_dec.transpose(1, 2)
    g_pm = torch.bmm(err, W_decT).mul_(g_scale).mul_(gate).mul_(pm > 0)
    g_pg = torch.baddbmm((l1v.unsqueeze(1) * norms / B).unsqueeze(1), e_aux, W_decT, alpha=g_scale).mul_(gate)
    g_xW = torch.addcmul(g_pg, g_pm, s)
    gW_enc = torch.bmm(xc.transpose(1, 2), g_xW)
    gb_dec = err.sum(1).mul_(g_scale).sub_(torch.bmm(W_enc, g_xW.sum(1).unsqueeze(-1)).squeeze(-1))
    grads = SAEGrads(gW_enc, g_pg.sum(1), gW_dec, gb_dec, r_mag=(g_pm * xW * s).sum(1), b_mag=g_pm.sum(1))
    return KernelOutput(mse + sparsity + aux, mse, sparsity, aux, acts, acts.sum(1) > 0, grads, None)


def _segments(prefixes: tuple[int, ...], n: int) -> list[tuple[int, int]]:
    """Matryoshka's segments ``[(lo, hi), ...]`` between consecutive prefixes (the last ends at n)."""
    bounds = [0, *(p for p in prefixes if p < n), n]
    if any(b <= a for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"prefixes={list(prefixes)} must be strictly increasing and at most n={n}")
    return list(zip(bounds, bounds[1:]))


def _rest(
    xc: Tensor,
    acts: Tensor,
    topk_vals,
    topk_idx,
    W_enc: Tensor,
    W_dec: Tensor,
    l1v: Tensor,
    on_sparse: bool,
    arch: str,
    decoder_norm: str,
    aux_coef: float,
    aux_k: int,
    auxk: tuple[Tensor, Tensor] | None,
    jump: tuple[Tensor, Tensor, float] | None = None,
    segments: list[tuple[int, int]] | None = None,
) -> tuple[Tensor, ...]:
    """Everything after the activation for the members given, all on one path (``auxk``: the dead
    mask and ReLU(pre), dense path only; ``jump``: JumpReLU's pre, θ and ε; ``segments``:
    Matryoshka's): ``(mse, inner prefixes' squared error, sparsity, aux, act_sum, ∂W_enc, ∂b_enc,
    ∂W_dec, ∂b_dec, ∂log_threshold)``, each with a leading member dimension (the last two may be None)."""
    E, B, n = acts.shape
    pattern = None
    window = None
    if on_sparse and jump is not None:  # JumpReLU: the active entries and those near θ (zero values there)
        pre, theta, eps = jump
        window = ((pre - theta.unsqueeze(1)).abs() < eps / 2).reshape(-1)
        pattern = _Pattern.from_dense(acts, (acts != 0).reshape(-1) | window)
    elif on_sparse:
        pattern = _Pattern.from_dense(acts) if topk_idx is None else _Pattern.from_topk(topk_vals, topk_idx, n)
    g_scale = 2.0 / B  # ∂(‖err‖²/B)/∂err = g_scale·err

    # Decoder: err = a W_dec − xc, ∂W_dec = aᵀ g.
    inner = xc.new_zeros(E)
    if segments is not None and len(segments) > 1:
        err, inner, gW_dec, err_sums = _matryoshka_decoder(xc, acts, W_dec, segments, g_scale)
        act_sum = acts.sum(1)
    elif pattern is None:
        err = torch.baddbmm(xc, acts, W_dec, beta=-1)  # [E, B, d]
        gW_dec = torch.bmm(acts.transpose(1, 2), err).mul_(g_scale)
        act_sum = acts.sum(1)  # [E, n]
    else:
        err = pattern.times(pattern.vals, W_dec).sub_(xc)
        gW_dec = pattern.t_times(pattern.vals, err).mul_(g_scale)
        act_sum = pattern.col_sum(pattern.vals)
    mse = torch.linalg.vecdot(err.reshape(E, -1), err.reshape(E, -1)) / B
    sparsity, latent_bias = _l1_(arch, l1v, decoder_norm, act_sum, W_dec, B, gW_dec)

    aux = mse.new_zeros(E)
    g_log = None
    if pattern is None:
        # ∂pre = (g W_decᵀ + l1·w/B) ⊙ [a > 0], masked in the matmul's own output buffer
        # (threshold_backward is ReLU's backward: one pass, no [B, n] bool mask).
        W_decT = W_dec.transpose(1, 2)
        if segments is not None and len(segments) > 1:  # segment s is read by the prefixes from s on
            g_pre = acts.new_empty(acts.shape)
            for (lo, hi), G in zip(segments, err_sums):
                g_pre[..., lo:hi] = torch.bmm(G, W_decT[..., lo:hi]).mul_(g_scale)
        elif latent_bias is None:
            g_pre = torch.bmm(err, W_decT).mul_(g_scale)
        else:
            g_pre = torch.baddbmm(latent_bias.unsqueeze(1), err, W_decT, alpha=g_scale)
        if jump is not None:
            sparsity, g_log = _jumprelu_threshold(jump, g_pre, acts, l1v, B)
        torch.ops.aten.threshold_backward.grad_input(g_pre, acts, 0, grad_input=g_pre)
        if auxk is not None:
            dead, post = auxk
            aux = _auxk_(post, err, W_dec, dead, aux_coef, aux_k, gW_dec, g_pre)
        gb_enc = g_pre.sum(1)  # [E, n]
        gW_enc = torch.bmm(xc.transpose(1, 2), g_pre)  # [E, d, n]
    else:
        # The same at the active entries only (a sampled product), then two sparse ᵀ-products.
        g_vals = pattern.sample(err, W_dec).mul_(g_scale)
        if latent_bias is not None:
            g_vals.add_(latent_bias.reshape(-1)[pattern.cols])
        if jump is not None:  # θ's STE reads ∂a at the window's entries, active or not
            pre, theta, eps = jump
            K = window[pattern.flat].to(g_vals.dtype)
            theta_v = theta.reshape(-1)[pattern.cols]
            contrib = K * (theta_v * g_vals + (l1v / B).repeat_interleave(B * n)[pattern.flat])
            g_log = theta * pattern.col_sum(contrib).mul_(-1 / eps)
            sparsity = l1v * pattern.col_sum((pattern.vals > 0).to(g_vals.dtype)).sum(-1) / B
        if topk_idx is not None or jump is not None:  # TopK keeps zeros when fewer than k are positive,
            g_vals.mul_(pattern.vals > 0)  # JumpReLU's window holds inactive entries: no gradient there
        gb_enc = pattern.col_sum(g_vals)
        gW_enc = pattern.t_times(g_vals, xc).transpose(1, 2).contiguous()
    # ∂b_dec: +Σ_b g from the decoder (every prefix's), −W_enc ∂b_enc from the encoder (xc = x − b_dec).
    g_out = err_sums[0] if segments is not None and len(segments) > 1 else err
    gb_dec = g_out.sum(1).mul_(g_scale).sub_(torch.bmm(W_enc, gb_enc.unsqueeze(-1)).squeeze(-1))
    return mse, inner, sparsity, aux, act_sum, gW_enc, gb_enc, gW_dec, gb_dec, g_log


def _matryoshka_decoder(
    xc: Tensor, acts: Tensor, W_dec: Tensor, segments: list[tuple[int, int]], g_scale: float
) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """Each prefix's error err_p (running sums over the segments), the inner prefixes' squared
    error ``[E]``, ∂W_dec, and the suffix sums G_s = Σ_{p ≥ s} err_p (see the module docstring)."""
    E, B, _ = acts.shape
    errs, err = [], -xc
    for lo, hi in segments:
        err = torch.baddbmm(err, acts[..., lo:hi], W_dec[:, lo:hi])
        errs.append(err)
    inner = sum(torch.linalg.vecdot(e.reshape(E, -1), e.reshape(E, -1)) for e in errs[:-1]) / B
    sums, G = [], None
    for e in reversed(errs):
        G = e if G is None else G + e
        sums.append(G)
    sums.reverse()
    gW_dec = torch.empty_like(W_dec)
    for (lo, hi), G in zip(segments, sums):
        gW_dec[:, lo:hi] = torch.bmm(acts[..., lo:hi].transpose(1, 2), G).mul_(g_scale)
    return err, inner, gW_dec, sums


def _jumprelu_threshold(
    jump: tuple[Tensor, Tensor, float], g_acts: Tensor, acts: Tensor, l0v: Tensor, B: int
) -> tuple[Tensor, Tensor]:
    """JumpReLU's L0 term ``[E]`` and ∂log_threshold ``[E, n]`` from ∂a = ``g_acts`` (before the mask)."""
    pre, theta, eps = jump
    K = rectangle((pre - theta.unsqueeze(1)) / eps)  # [E, B, n]
    l0 = l0v * torch.count_nonzero(acts.reshape(acts.shape[0], -1), dim=1).to(l0v.dtype) / B
    g_theta = (K * (theta.unsqueeze(1) * g_acts + (l0v / B).view(-1, 1, 1))).sum(1).mul_(-1 / eps)
    return l0, theta * g_theta


def _take(t: Tensor | None, idx: Tensor) -> Tensor | None:
    """Members ``idx`` (increasing) of a stacked tensor: a view when they are consecutive."""
    if t is None:
        return None
    lo, count = int(idx[0]), idx.numel()
    return t.narrow(0, lo, count) if int(idx[-1]) - lo + 1 == count else t.index_select(0, idx)


def _put(E: int, parts: list[Tensor], members: list[Tensor | None]) -> Tensor:
    """Reassemble per-member results computed on disjoint member subsets."""
    if members[0] is None or parts[0] is None:  # one path, or a result no member has (∂log_threshold)
        return parts[0]
    out = parts[0].new_empty((E, *parts[0].shape[1:]))
    for part, idx in zip(parts, members):
        out.index_copy_(0, idx, part)
    return out


def _check(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, arch: str, k: int) -> None:
    if arch not in KERNEL_ARCHS:
        raise ValueError(f"arch={arch!r} is not supported by the kernel; choose one of {', '.join(KERNEL_ARCHS)}")
    if W_enc.dim() != 3:
        raise ValueError(f"W_enc must be [E, d, n] (a single SAE: W_enc.unsqueeze(0)); got shape {tuple(W_enc.shape)}")
    E, d, n = W_enc.shape
    for name, t, shape in (("b_enc", b_enc, (E, n)), ("W_dec", W_dec, (E, n, d)), ("b_dec", b_dec, (E, d))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}; with W_enc of shape {(E, d, n)} it must be {shape}")
    if not (x.dim() == 2 or (x.dim() == 3 and x.shape[0] == E)) or x.shape[-1] != d:
        raise ValueError(f"x has shape {tuple(x.shape)}; it must be [batch, d={d}] or [E={E}, batch, d={d}]")
    if arch in ("topk", "batchtopk", "matryoshka") and not 0 < k <= n:
        raise ValueError(f"k={k} must be between 1 and the number of latents n={n} for arch={arch!r}")


def _activate_(
    pre: Tensor, arch: str, k: int, rank_weight: Tensor | None = None, theta: Tensor | None = None
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """``(acts [E, B, n], topk_vals, topk_idx, kept_min)``; ``pre`` is overwritten with ReLU(pre)
    (but for JumpReLU, whose threshold gradient reads pre near θ ``[E, n]``). TopK also returns its
    ``[E, B, k]`` values and indices (the sparsity pattern), BatchTopK and Matryoshka each member's
    smallest kept positive value (inf: none) for the inference threshold."""
    if arch == "jumprelu":
        return pre * (pre > theta.unsqueeze(1)), None, None, None
    post = pre.relu_()
    if arch == "relu":
        return post, None, None, None
    E, B, n = post.shape
    if arch == "topk":
        if rank_weight is not None:  # the g-SAE: chosen by activation x gradient reach, valued by activation
            idx = (post * rank_weight).topk(k, dim=-1, sorted=False).indices
            vals = post.gather(-1, idx)
        else:
            vals, idx = post.topk(k, dim=-1, sorted=False)  # the same entries as sorted=True, unordered
        return torch.zeros_like(post).scatter_(-1, idx, vals), vals, idx, None
    flat = post.reshape(E, B * n)
    vals, idx = flat.topk(min(k * B, B * n), dim=-1, sorted=False)
    acts = torch.zeros_like(flat).scatter_(-1, idx, vals).reshape(E, B, n)
    kept_min = torch.where(vals > 0, vals, torch.full_like(vals, float("inf"))).amin(-1)
    return acts, None, None, kept_min


def _l1_(
    arch: str, l1, decoder_norm: str, act_sum: Tensor, W_dec: Tensor, B: int, gW_dec: Tensor
) -> tuple[Tensor, Tensor | None]:
    """The L1 term ``[E]`` and ``l1·w/B [E, n]`` (its gradient in each activation; None when there
    is no L1); adds the weighted-L1 gradient in the row norms into ``gW_dec`` in place."""
    E, n = act_sum.shape
    if arch != "relu":
        return act_sum.new_zeros(E), None
    l1v = torch.as_tensor(l1, dtype=W_dec.dtype, device=W_dec.device).expand(E)
    if not bool((l1v != 0).any()):
        return act_sum.new_zeros(E), None
    if decoder_norm != "weighted_l1":
        return l1v * act_sum.sum(-1) / B, (l1v / B).unsqueeze(1).expand(E, n)
    norms = W_dec.norm(dim=-1)  # [E, n]
    # ∂‖w‖/∂w = w/‖w‖ (0 for a zero row, as autograd's norm backward)
    inv = torch.where(norms > 0, 1 / norms, torch.zeros_like(norms))
    gW_dec.add_(W_dec * (l1v.unsqueeze(1) * act_sum * inv / B).unsqueeze(-1))
    return l1v * torch.linalg.vecdot(act_sum, norms) / B, l1v.unsqueeze(1) * norms / B


def _sparse_members(acts: Tensor, topk_idx: Tensor | None) -> Tensor:
    """Per member ``[E]`` (bool, CPU): whether the sparse path pays, i.e. fewer than
    ``SPARSE_MAX_DENSITY`` of its entries are active (estimated from its first 256 rows)."""
    E = acts.shape[0]
    if not acts.is_cpu:  # embedding_bag sums beat dense matmuls on CPU; not measured elsewhere
        return torch.zeros(E, dtype=torch.bool)
    if topk_idx is not None:
        return torch.full((E,), topk_idx.shape[-1] < SPARSE_MAX_DENSITY * acts.shape[-1])
    head = acts[:, :256]  # cheaper than counting all rows
    return torch.count_nonzero(head.reshape(E, -1), dim=1) < SPARSE_MAX_DENSITY * head[0].numel()


class _Pattern:
    """The active entries of ``acts [E, B, n]``: E·B bags of global latent indices (e·n + j) in
    row order, and the same entries grouped by latent. Products with the sparse activation
    matrix are ``embedding_bag`` sums: O(nnz·d) instead of O(B·n·d)."""

    def __init__(self, rows: Tensor, cols: Tensor, vals: Tensor, E: int, B: int, n: int):
        self.E, self.B, self.n = E, B, n
        self.rows, self.cols, self.vals = rows, cols, vals  # [nnz] each, ordered by row
        self.row_start = _starts(rows, E * B)
        self.perm = torch.sort(cols, stable=True).indices  # entries grouped by latent
        self.rows_by_col = rows[self.perm]
        self.col_start = _starts(cols, E * n)

    @classmethod
    def from_dense(cls, acts: Tensor, mask: Tensor | None = None) -> _Pattern:
        """The nonzero entries of ``acts``, or those of the flat bool ``mask`` (which may hold zeros)."""
        E, B, n = acts.shape
        flat = (acts.reshape(-1) if mask is None else mask).nonzero().squeeze(1)  # e·B·n + b·n + j, increasing
        rows = flat.div(n, rounding_mode="floor")  # e·B + b
        cols = flat - rows * n + rows.div(B, rounding_mode="floor") * n  # e·n + j
        pattern = cls(rows, cols, acts.reshape(-1)[flat], E, B, n)
        pattern.flat = flat
        return pattern

    @classmethod
    def from_topk(cls, vals: Tensor, idx: Tensor, n: int) -> _Pattern:
        E, B, k = idx.shape
        rows = torch.arange(E * B, device=idx.device).repeat_interleave(k)
        cols = idx + torch.arange(E, device=idx.device).mul_(n).view(E, 1, 1)
        return cls(rows, cols.reshape(-1), vals.reshape(-1), E, B, n)

    def times(self, vals: Tensor, M: Tensor) -> Tensor:
        """``A M`` per member for the sparse ``A [E, B, n]`` holding ``vals``; ``M [E, n, d]`` → ``[E, B, d]``."""
        E, _, d = M.shape
        out = F.embedding_bag(self.cols, M.reshape(-1, d), self.row_start, mode="sum", per_sample_weights=vals)
        return out.view(E, self.B, d)

    def t_times(self, vals: Tensor, M: Tensor) -> Tensor:
        """``Aᵀ M`` per member; ``M [E, B, d]`` → ``[E, n, d]``."""
        E, _, d = M.shape
        out = F.embedding_bag(
            self.rows_by_col, M.reshape(-1, d), self.col_start, mode="sum", per_sample_weights=vals[self.perm]
        )
        return out.view(E, self.n, d)

    def sample(self, G: Tensor, W: Tensor) -> Tensor:
        """``G Wᵀ`` at the active entries ``[nnz]``, for ``G [E, B, d]``, ``W [E, n, d]``."""
        d = W.shape[-1]
        crow = torch.cat([self.row_start, self.row_start.new_tensor([self.cols.numel()])])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR tensor support is in beta state"
            # Zeros, not empty_like: sampled_addmm computes beta·S + …, and 0·NaN is NaN, so an
            # uninitialised buffer could poison the product.
            S = torch.sparse_csr_tensor(
                crow, self.cols, torch.zeros_like(self.vals), (self.E * self.B, self.E * self.n), check_invariants=False
            )
            return torch.sparse.sampled_addmm(S, G.reshape(-1, d), W.reshape(-1, d).T, beta=0.0).values()

    def col_sum(self, vals: Tensor) -> Tensor:
        """Σ over the batch of the entries ``vals``, per latent ``[E, n]``."""
        return vals.new_zeros(self.E * self.n).index_add_(0, self.cols, vals).view(self.E, self.n)


def _starts(sorted_ids: Tensor, n_groups: int) -> Tensor:
    """Offset of each group's first entry in ``sorted_ids`` (embedding_bag's offsets)."""
    counts = torch.bincount(sorted_ids, minlength=n_groups)
    return torch.cumsum(counts, 0).sub_(counts)


def _auxk_(
    post: Tensor, err: Tensor, W_dec: Tensor, dead: Tensor, coef: float, aux_k: int, gW_dec: Tensor, g_pre: Tensor
) -> Tensor:
    """AuxK (as ``sae.model.auxk_loss``): adds its gradients into ``gW_dec`` and ``g_pre`` in place
    and returns the per-member term ``[E]``. ``post`` is ReLU(pre); ``err`` is recon − x."""
    E, B, n = post.shape
    d = err.shape[-1]
    dead = dead.reshape(-1, n).expand(E, n)
    out = post.new_zeros(E)
    for e in range(E):  # members may have different numbers of dead latents (so different k_aux)
        if not bool(dead[e].any()):
            continue
        k_aux = min(aux_k or max(1, d // 2), int(dead[e].sum()))
        masked = torch.where(dead[e], post[e], torch.zeros_like(post[e]))
        vals, idx = masked.topk(k_aux, dim=-1)
        aux_acts = torch.zeros_like(masked).scatter_(-1, idx, vals)  # [B, n]
        r = err[e]  # the target of aux_recon is x − x̂ = −err
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
    """Whether ``fused_backward_`` computes this SAE's loss (untied, no orthogonality penalty, not a
    transcoder: its encoder reads x and its decoder writes y, which the kernel's one xc = x − b_dec
    does not express; transcoders train through autograd)."""
    return config.arch in SUPPORTED_ARCHS and not config.tied and config.orth == 0 and not config.transcoder


def gsae_inputs(config: SAEConfig, x: Tensor, W_dec: Tensor) -> tuple[Tensor, str, Tensor | None]:
    """``(x, arch, rank_weight)`` for the kernel: a g-SAE's rows ``[x, J rows]`` become the
    activations, arch 'topk' and the ranking weight ‖J d_i‖ of every stacked member (``W_dec
    [E, n, d]``); other rules pass through."""
    if config.arch != "gsae":
        return x, config.arch, None
    d = config.d_in
    if x.shape[-1] != config.data_width:
        return x, "topk", None  # rows without the gradient: plain TopK, as SparseAutoencoder.encode
    return x[..., :d], "topk", gradient_reach(x[..., d:].reshape(x.shape[0], config.grad_columns, d), W_dec)


@torch.no_grad()
def fused_backward_(
    sae: SparseAutoencoder, x: Tensor, dead: Tensor | None = None, sparse: bool | None = None
) -> KernelOutput:
    """``sae(x, dead).loss.backward()`` without autograd: sets each parameter's ``.grad`` (replacing
    it) and, for BatchTopK, updates ``sae.threshold`` as ``sae.activate`` does in training mode.
    Returns the losses as scalars, ``acts [B, n]`` and ``fired [n]``; gradients keep a leading 1."""
    c = sae.config
    if not kernel_supports(c):
        raise ValueError(
            f"the kernel needs an untied SAE without orthogonality penalty and arch in {SUPPORTED_ARCHS}; "
            f"got arch={c.arch!r}, tied={c.tied}, orth={c.orth}"
        )
    if c.arch in BATCH_THRESHOLD_ARCHS and not sae.training:
        raise ValueError(
            "the kernel computes BatchTopK's training rule; call sae.train() first (eval uses the threshold θ)"
        )
    names = [n for n in SAEGrads._fields if getattr(sae, n, None) is not None]
    params = (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    x, arch, weight = gsae_inputs(c, x, sae.W_dec.unsqueeze(0))
    out = sae_loss_and_grads(
        x,
        *(p.unsqueeze(0) for p in params),
        **{n: getattr(sae, n).unsqueeze(0) for n in names[4:]},
        bandwidth=c.bandwidth,
        prefixes=c.prefixes,
        arch=arch,
        l1=getattr(c, sparsity_field(c.arch)),
        k=c.k,
        decoder_norm=c.decoder_norm,
        aux_coef=c.aux_coef,
        aux_k=c.aux_k,
        dead=dead,
        sparse=sparse,
        rank_weight=weight,
    )
    for name in names:
        getattr(sae, name).grad = getattr(out.grads, name)[0]
    if c.arch in BATCH_THRESHOLD_ARCHS:
        update_threshold_(sae.threshold, out.kept_min[0], c.threshold_decay)  # as SparseAutoencoder.activate
    return out._replace(
        loss=out.loss[0], mse=out.mse[0], sparsity=out.sparsity[0], aux=out.aux[0], acts=out.acts[0], fired=out.fired[0]
    )
