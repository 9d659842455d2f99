"""E sparse autoencoders of one shape, stacked: what the training engine trains (a single SAE is an
ensemble of one).

Parameters are stacked into ``W_enc [E, d, n]``, ``b_enc [E, n]``, ``W_dec [E, n, d]`` (absent when
tied), ``b_dec [E, d]`` (and an architecture's own: JumpReLU's ``log_threshold [E, n]``, the gated
SAE's ``r_mag``, ``b_mag [E, n]``); buffers ``l1 [E]`` (each member's sparsity coefficient: ``l1``,
or JumpReLU's ``l0``), ``threshold [E]`` (BatchTopK's θ) and ``since_fired [E, n]`` (samples since
each latent last fired). Members may differ in their sparsity coefficient only. Gradients come from
the hand-derived batched kernel (``sae.kernels``) where it applies (untied, no orthogonality
penalty, fp32), else from autograd through each member's ``SparseAutoencoder.forward`` run on views
of the stacked tensors (``torch.func.functional_call``), so both routes train the same tensors with
the same Adam.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import NamedTuple

import torch
from torch import Tensor, nn

from sae.config import BATCH_THRESHOLD_ARCHS, SAEConfig, sparsity_field
from sae.kernels import gsae_inputs, kernel_supports, sae_loss_and_grads
from sae.model import SparseAutoencoder, remove_parallel_grad_, unit_rows_, update_threshold_

PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")
ARCH_PARAMS = ("log_threshold", "r_mag", "b_mag", "W_skip")
"""Parameters only some SAEs have (JumpReLU's threshold, the gated SAE's magnitude path, a skip
transcoder's linear skip)."""
CPU_MEMBERS_PER_CALL = 2
"""Members per kernel call on CPU. 16 relu SAEs (d 256, 512 latents, batch 4096, 2 threads): one
call on all 16 took 515 ms a step, calls on 2 or on 1 member 425 ms (median of 7, interleaved)."""


class StepStats(NamedTuple):
    """One step's per-member numbers ``[E]`` (detached) and which latents fired ``[E, n]``."""

    loss: Tensor
    mse: Tensor
    l0: Tensor
    fired: Tensor


class Ensemble(nn.Module):
    """E SAEs of one shape and rule, stacked (see the module docstring)."""

    def __init__(self, saes: list[SparseAutoencoder]):
        super().__init__()
        if not saes:
            raise ValueError("an ensemble needs at least one SAE")
        self.configs = [s.config for s in saes]
        coef = sparsity_field(self.configs[0].arch)
        first = asdict(self.configs[0]) | {coef: 0.0}
        if any(asdict(c) | {coef: 0.0} != first for c in self.configs):
            raise ValueError(f"an ensemble's members must share every setting but {coef}")
        self.names = tuple(n for n in PARAMS + ARCH_PARAMS if getattr(saes[0], n) is not None)
        for name in PARAMS + ARCH_PARAMS:
            if name in self.names:
                setattr(self, name, nn.Parameter(torch.stack([getattr(s, name).detach() for s in saes])))
            else:
                setattr(self, name, None)
        dev = self.W_enc.device
        self.register_buffer(
            "l1", torch.tensor([getattr(c, coef) for c in self.configs], dtype=self.W_enc.dtype, device=dev)
        )
        self.register_buffer("threshold", torch.stack([s.threshold for s in saes]))
        self.register_buffer(
            "since_fired", torch.zeros(len(saes), self.configs[0].dict_size, dtype=torch.long, device=dev)
        )
        with torch.device("meta"):  # shells for functional_call: every tensor comes from the stack
            self._shells = [SparseAutoencoder(c) for c in self.configs]

    @property
    def config(self) -> SAEConfig:
        return self.configs[0]

    @property
    def size(self) -> int:
        return len(self.configs)

    @property
    def fused(self) -> bool:
        return kernel_supports(self.config)

    def dead_mask(self, window: int) -> Tensor:
        return self.since_fired >= window

    def _decoder_param(self) -> tuple[Tensor, int]:
        """The tensor holding the decoder rows and the axis along which each row runs."""
        return (self.W_enc, -2) if self.W_dec is None else (self.W_dec, -1)

    def decoders(self) -> Tensor:
        """Decoder rows ``[E, n, d]``."""
        return self.W_enc.transpose(1, 2) if self.W_dec is None else self.W_dec

    @torch.no_grad()
    def project_(self, before_step: bool, initial: bool = False) -> None:
        """'unit' decoders: before Adam's step drop the gradient along each row, after it renormalise
        (``initial``: the start's normalisation, the only one a frozen decoder gets)."""
        if self.config.freeze_decoder and not initial:
            return
        if self.config.decoder_norm == "unit":
            W, dim = self._decoder_param()
            (remove_parallel_grad_ if before_step else unit_rows_)(W, dim=dim)

    def member_tensors(self, e: int) -> dict[str, Tensor]:
        """Member ``e``'s parameters and threshold as views of the stack (a ``state_dict``'s keys)."""
        return {**{n: getattr(self, n)[e] for n in self.names}, "threshold": self.threshold[e]}

    def member_forward(self, e: int, x: Tensor, dead: Tensor | None = None, *, train: bool = True):
        """``SparseAutoencoder.forward`` of member ``e`` on the stacked tensors (autograd reaches them)."""
        shell = self._shells[e].train(train)
        return torch.func.functional_call(shell, self.member_tensors(e), (x,), {"dead": dead})

    def step_grads_(
        self, x, dead_window: int, *, fused: bool = True, bf16: bool = False, l0: bool = True, objective=None
    ) -> StepStats:
        """Losses on batch ``x [B, d]``; sets ``.grad`` of every stacked parameter and advances the
        BatchTopK thresholds. The dead-latent counters move in ``count_fired_`` (after the ranks of a
        data-parallel run have agreed on which latents fired). ``l0=False``: skip the L0 (a pass over
        the [E, B, n] activations; zeros then), for the steps nobody logs. ``objective``: the loss is
        ``objective(forward, x)`` (``x`` its batch, ``forward`` the member's ``SparseAutoencoder.forward``
        on rows), an ``SAEOutput`` whose ``loss`` replaces the reconstruction loss (end-to-end
        training; autograd)."""
        dead = self.dead_mask(dead_window)
        stats = (
            self._kernel_step(x, dead, l0)
            if fused and not bf16 and self.fused and objective is None
            else self._autograd_step(x, dead, bf16, l0, objective)
        )
        if (not self.config.learn_b_dec or self.config.freeze_decoder) and self.b_dec.grad is not None:
            self.b_dec.grad.zero_()  # Adam then never moves it (zero moments, zero step)
        if self.config.freeze_decoder and self.W_dec.grad is not None:
            self.W_dec.grad.zero_()
        return stats

    @torch.no_grad()
    def count_fired_(self, fired: Tensor, n_samples: int) -> None:
        """Reset the counters of the latents that ``fired [E, n]``, advance the others by ``n_samples``."""
        self.since_fired = torch.where(fired, torch.zeros_like(self.since_fired), self.since_fired + n_samples)

    def grads(self) -> list[Tensor]:
        return [getattr(self, n).grad for n in self.names if getattr(self, n).grad is not None]

    @torch.no_grad()
    def _kernel_step(self, x: Tensor, dead: Tensor, want_l0: bool = True) -> StepStats:
        """The batched kernel. On CPU it runs on ``CPU_MEMBERS_PER_CALL`` members at a time (views of
        the stacked parameters; the gradients are stacked again): the whole stack's [E, B, n]
        buffers fall out of cache (see the constant). Elsewhere it runs on the whole stack at once."""
        c, E = self.config, self.size
        per_call = CPU_MEMBERS_PER_CALL if self.W_enc.is_cpu else E
        outs = []
        extra = [n for n in ARCH_PARAMS if n in self.names]
        for lo in range(0, E, per_call):
            xs, arch, weight = gsae_inputs(c, x, self.W_dec[lo : lo + per_call])  # a g-SAE's rows: [x, J rows]
            outs.append(
                sae_loss_and_grads(
                    xs,
                    *(getattr(self, name)[lo : lo + per_call] for name in PARAMS),
                    **{name: getattr(self, name)[lo : lo + per_call] for name in extra},
                    bandwidth=c.bandwidth,
                    prefixes=c.prefixes,
                    arch=arch,
                    l1=self.l1[lo : lo + per_call],
                    k=c.k,
                    decoder_norm=c.decoder_norm,
                    aux_coef=c.aux_coef,
                    aux_k=c.aux_k,
                    dead=dead[lo : lo + per_call],
                    rank_weight=weight,
                )
            )
        for name in self.names:
            grads = [getattr(o.grads, name) for o in outs]
            getattr(self, name).grad = grads[0] if len(outs) == 1 else torch.cat(grads)
        if c.arch in BATCH_THRESHOLD_ARCHS:
            update_threshold_(self.threshold, torch.cat([o.kept_min for o in outs]), c.threshold_decay)
        cat = lambda key: torch.cat([getattr(o, key) for o in outs])  # noqa: E731
        l0 = torch.cat(
            [(o.acts != 0).float().sum(-1).mean(-1) if want_l0 else o.loss.new_zeros(o.loss.shape) for o in outs]
        )
        return StepStats(cat("loss"), cat("mse"), l0, cat("fired"))

    def _autograd_step(self, x, dead: Tensor, bf16: bool, want_l0: bool = True, objective=None) -> StepStats:
        """Autograd through each member's forward (tied decoders, the orthogonality penalty, bf16,
        transcoders, an ``objective``)."""
        for name in self.names:
            getattr(self, name).grad = None
        losses, mses, l0s, fired = [], [], [], []
        device = self.W_enc.device.type
        with torch.enable_grad():
            total = 0.0
            for e in range(self.size):
                with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                    if objective is None:
                        out = self.member_forward(e, x, dead[e])
                    else:
                        out = objective(lambda rows, e=e: self.member_forward(e, rows, dead[e]), x)
                loss = out.loss.float()
                total = total + loss
                losses.append(loss.detach())
                mses.append(out.mse.detach().float())
                nonzero = out.acts.detach() != 0
                l0s.append(nonzero.float().sum(-1).mean() if want_l0 else loss.new_zeros(()))
                fired.append(nonzero.any(0))
            total.backward()
        return StepStats(torch.stack(losses), torch.stack(mses), torch.stack(l0s), torch.stack(fired))

    def members(self) -> list[SparseAutoencoder]:
        """The members as separate SAEs (copies, in eval mode)."""
        out = []
        for e, c in enumerate(self.configs):
            sae = SparseAutoencoder(c).to(self.W_enc.device)
            sae.load_state_dict({k: v.detach().clone() for k, v in self.member_tensors(e).items()})
            out.append(sae.eval())
        return out
