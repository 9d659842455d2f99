"""Sweeps: a grid of L1 coefficients × dictionary sizes, trained as batched ensembles in one pass.

Every member sees the same batch at every step (drawn once). Members with the same dictionary
size form one group whose parameters are stacked into ``[E, ...]`` tensors: the batched kernel
(bmm, a per-member L1; on CPU two members a call, ``CPU_MEMBERS_PER_CALL``) gives the whole
group's gradients, and one Adam steps the stacked tensors (Adam is element-wise, so this is E independent Adams). Groups (one per dictionary size)
share the batch. Member (l1, n) starts from the SAE that ``train(SAEConfig(dict_size=n, l1=l1,
…), config, data)`` starts from, so it ends where that single run ends up to float reassociation.

Per cell the sweep reports the held-out evaluation (MMCS and the rest with ground truth), the
dead fraction, and the final training loss: what Sharkey et al.'s dictionary-size heuristics are
read from (dead latents appear, the loss stops falling once the dictionary passes the true count).
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from sae.config import SAEConfig, TrainConfig
from sae.kernels import kernel_supports, sae_loss_and_grads
from sae.model import SparseAutoencoder, remove_parallel_grad_, unit_rows_, update_threshold_
from sae.store import BatchSource
from sae.train import check_resources, init_sample, initial_sae, lr_at

PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")
FINAL_LOSS_SHARE = 0.1  # the final loss is the mean training loss over this last share of the steps
CPU_MEMBERS_PER_CALL = 2
"""Members per kernel call on CPU. 16 relu SAEs (d 256, 512 latents, batch 4096, 2 threads): one
call on all 16 took 515 ms a step, calls on 2 or on 1 member 425 ms (median of 7, interleaved)."""


class Ensemble(nn.Module):
    """E SAEs of one shape and rule, stacked: ``W_enc [E, d, n]``, ``b_enc [E, n]``,
    ``W_dec [E, n, d]``, ``b_dec [E, d]``; they may differ in their L1 coefficient only."""

    def __init__(self, saes: list[SparseAutoencoder]):
        super().__init__()
        self.configs = [s.config for s in saes]
        first = asdict(self.configs[0]) | {"l1": 0.0}
        if any(asdict(c) | {"l1": 0.0} != first for c in self.configs):
            raise ValueError("an ensemble's members must share every setting but l1")
        if not kernel_supports(self.configs[0]):
            raise ValueError("sweeps train with the batched kernel: untied decoders without the orthogonality penalty (drop --tied / --orth)")
        for name in PARAMS:
            setattr(self, name, nn.Parameter(torch.stack([getattr(s, name).detach() for s in saes])))
        self.register_buffer("l1", torch.tensor([c.l1 for c in self.configs], dtype=self.W_enc.dtype, device=self.W_enc.device))
        self.register_buffer("threshold", torch.stack([s.threshold for s in saes]))
        self.register_buffer("since_fired", torch.zeros(len(saes), self.configs[0].dict_size, dtype=torch.long, device=self.W_enc.device))

    @property
    def config(self) -> SAEConfig:
        return self.configs[0]

    def dead_mask(self, window: int) -> Tensor:
        return self.since_fired >= window

    @torch.no_grad()
    def step_grads_(self, x: Tensor, dead_window: int) -> Tensor:
        """Losses ``[E]`` on batch ``x [B, d]``; sets ``.grad`` of every stacked parameter (the
        kernel) and advances the BatchTopK thresholds and the dead-latent counters.

        On CPU the kernel runs on ``CPU_MEMBERS_PER_CALL`` members at a time (views of the stacked
        parameters; the gradients are stacked again): the whole stack's [E, B, n] buffers fall out
        of cache (see the constant). Elsewhere it runs on the whole stack in one call."""
        c, E = self.config, self.W_enc.shape[0]
        per_call = CPU_MEMBERS_PER_CALL if self.W_enc.is_cpu else E
        dead = self.dead_mask(dead_window)
        outs = [
            sae_loss_and_grads(
                x, *(getattr(self, name)[lo : lo + per_call] for name in PARAMS), arch=c.arch, l1=self.l1[lo : lo + per_call], k=c.k,
                decoder_norm=c.decoder_norm, aux_coef=c.aux_coef, aux_k=c.aux_k, dead=dead[lo : lo + per_call],
            )  # fmt: skip
            for lo in range(0, E, per_call)
        ]
        for i, name in enumerate(PARAMS):
            getattr(self, name).grad = outs[0].grads[i] if len(outs) == 1 else torch.cat([o.grads[i] for o in outs])
        if c.arch == "batchtopk":
            update_threshold_(self.threshold, torch.cat([o.kept_min for o in outs]), c.threshold_decay)
        fired = torch.cat([o.fired for o in outs])
        self.since_fired = torch.where(fired, torch.zeros_like(self.since_fired), self.since_fired + x.shape[0])
        return torch.cat([o.loss for o in outs])

    @torch.no_grad()
    def project_(self, before_step: bool) -> None:
        """'unit' decoders: before Adam's step drop the gradient along each row, after it renormalise."""
        if self.config.decoder_norm == "unit":
            (remove_parallel_grad_ if before_step else unit_rows_)(self.W_dec, dim=-1)

    def members(self) -> list[SparseAutoencoder]:
        """The trained members as separate SAEs (copies, in eval mode)."""
        out = []
        for e, c in enumerate(self.configs):
            sae = SparseAutoencoder(c).to(self.W_enc.device)
            sae.load_state_dict({**{n: getattr(self, n)[e].detach().clone() for n in PARAMS}, "threshold": self.threshold[e].clone()})
            out.append(sae.eval())
        return out


@dataclass
class SweepResult:
    """A trained grid: ``saes[i][j]`` has L1 ``l1s[i]`` and ``dict_sizes[j]`` latents."""

    l1s: list[float]
    dict_sizes: list[int]
    saes: list[list[SparseAutoencoder]]
    final_loss: list[list[float]]
    """Mean training loss over the last ``FINAL_LOSS_SHARE`` of the steps."""
    steps: int
    history: list[dict] = field(default_factory=list)


def sweep(data, l1s: list[float], dict_sizes: list[int], sae_fields: dict, config: TrainConfig) -> SweepResult:
    """Train every (l1, dictionary size) of the grid on ``data`` in one pass (see the module docstring).

    ``sae_fields``: SAEConfig fields shared by all cells (``d_in`` from the data when absent).
    ``config`` as for a single run; resampling, periodic checkpoints and bf16 are single-run only.
    """
    if not l1s or not dict_sizes:
        raise ValueError("a sweep needs at least one L1 coefficient and one dictionary size")
    if config.resample_every or config.checkpoint_every or config.bf16:
        raise ValueError("sweeps support neither resampling, periodic checkpoints nor bf16 (resample_every, checkpoint_every, bf16); train single runs for those")
    source = BatchSource(data, config.batch_size, config.seed, config.device)
    fields = {k: v for k, v in sae_fields.items() if k not in ("l1", "dict_size")}
    fields.setdefault("d_in", source.d)
    if source.d is not None and source.d != fields["d_in"]:
        raise ValueError(f"data dimension {source.d} does not match d_in={fields['d_in']}")
    for n in dict_sizes:
        check_resources(SAEConfig(**fields, dict_size=n, l1=l1s[0]), config, n_sae=len(l1s))
    sample = init_sample(SAEConfig(**fields, dict_size=dict_sizes[0], l1=l1s[0]), config, source)  # drawn once, read by every member
    groups = [Ensemble([initial_sae(SAEConfig(**fields, dict_size=n, l1=l1), config, source, sample) for l1 in l1s]) for n in dict_sizes]
    opts = [torch.optim.Adam(g.parameters(), lr=config.lr, foreach=False) for g in groups]
    for g in groups:
        g.project_(before_step=False)
    tail_from = config.steps - max(1, math.ceil(FINAL_LOSS_SHARE * config.steps))
    loss_sum = [torch.zeros(len(l1s), dtype=torch.float64, device=config.device) for _ in groups]
    history: list[dict] = []
    bar = None
    if config.progress:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, file=sys.stderr, unit="step", dynamic_ncols=True, desc=f"{len(l1s) * len(dict_sizes)} SAEs")
    try:
        for step in range(config.steps):
            x = source.batch(step)
            if x.shape[-1] != fields["d_in"]:
                raise ValueError(f"batch at step {step} has dimension {x.shape[-1]}, the SAEs' d_in is {fields['d_in']}")
            for j, (g, opt) in enumerate(zip(groups, opts)):
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, config)
                loss = g.step_grads_(x, config.dead_window)
                if not bool(torch.isfinite(loss).all()):  # as in Trainer.fit: a NaN/inf in x gets here too
                    _stop_sweep(step, x, [f"l1={l1s[e]} n={g.config.dict_size}" for e in (~torch.isfinite(loss)).nonzero().flatten().tolist()])
                g.project_(before_step=True)
                opt.step()
                g.project_(before_step=False)
                if step >= tail_from:
                    loss_sum[j] += loss.double()
            if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
                history.append({"step": step + 1, "dead_fraction": [g.dead_mask(config.dead_window).float().mean(1).tolist() for g in groups]})
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    n_tail = config.steps - tail_from
    final = [(s / n_tail).tolist() for s in loss_sum]  # [size][l1]
    members = [g.members() for g in groups]  # [size][l1]
    return SweepResult(
        list(l1s), list(dict_sizes), [[members[j][i] for j in range(len(groups))] for i in range(len(l1s))],
        [[final[j][i] for j in range(len(groups))] for i in range(len(l1s))], config.steps, history,
    )  # fmt: skip


def _stop_sweep(step: int, x: Tensor, cells: list[str]) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"batch at step {step} contains NaN or inf; sweep stopped, nothing written")
    raise ValueError(f"loss became NaN/inf at step {step} for {', '.join(cells)}; sweep stopped, nothing written")


# ---- a sweep in a folder: sweep.json, sweep.png, sweep.safetensors -------------------------------
SWEEP_JSON, SWEEP_PNG, SWEEP_WEIGHTS = "sweep.json", "sweep.png", "sweep.safetensors"


def dict_sizes_for(ratios: list[float], n_true: int) -> list[int]:
    """Dictionary sizes as multiples of the true feature count (or of d for data without ground truth)."""
    sizes = [max(1, round(r * n_true)) for r in ratios]
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"ratios {ratios} give repeated dictionary sizes {sizes} for {n_true} features; give distinct ratios")
    return sizes


def sweep_run(out_dir, data: str = "sharkey", l1s=(0.01, 0.03, 0.1, 0.3, 1.0), ratios=(0.5, 1.0, 2.0, 4.0), sae_fields: dict | None = None,
              config: TrainConfig | None = None, data_options: dict | None = None, eval_samples: int = 20_000, force: bool = False) -> dict:  # fmt: skip
    """Sweep L1 × dictionary ratio on ``data`` (as ``sae.runs.train_run``) into ``out_dir``; returns sweep.json's content.

    Writes ``sweep.json`` (per cell: l1, dict_size, ratio, final_loss, dead latents and the held-out
    evaluation), ``sweep.png`` (heatmaps: MMCS, dead fraction, final loss; loss against dictionary
    size per L1) and ``sweep.safetensors`` (each cell's weights, keys ``l1_{i}.n_{j}.W_enc`` …).
    """
    from sae.metrics import evaluate
    from sae.runs import check_run_folder, eval_batch, run_lock
    from sae.store import save_tensors_atomic, write_json_atomic
    from sae.synthetic import make_data

    out = Path(out_dir)
    check_run_folder(out, resume=False, force=force, can_resume=False)
    config = config or TrainConfig()
    data_options = dict(data_options or {})
    source = make_data(data, seed=config.seed, **data_options)
    truth = getattr(source, "features", None)
    n_true = truth.shape[0] if truth is not None else source.shape[1]
    sizes = dict_sizes_for(list(ratios), n_true)
    with run_lock(out, clear=force):
        result = sweep(source, list(l1s), sizes, dict(sae_fields or {}), config)
        x, truth, codes = eval_batch(source, eval_samples, config.seed)
        cells, tensors = [], {}
        for i, l1 in enumerate(result.l1s):
            for j, n in enumerate(result.dict_sizes):
                sae = result.saes[i][j]
                ev = evaluate(sae, x, truth, codes)._asdict()
                cells.append({"l1": l1, "dict_size": n, "ratio": ratios[j], "final_loss": result.final_loss[i][j],
                              "dead_latents": round(ev["dead_fraction"] * n), **ev})  # fmt: skip
                tensors.update({f"l1_{i}.n_{j}.{k}": v for k, v in sae.state_dict().items()})
        record = {
            "data": {"spec": data, "options": data_options, "n_true_features": n_true if truth is not None else None},
            "l1s": result.l1s, "ratios": list(ratios), "dict_sizes": sizes, "sae": dict(sae_fields or {}), "train": asdict(config),
            "steps": result.steps, "cells": cells, "table": format_table(cells, result.l1s, sizes, truth is not None),
        }  # fmt: skip
        save_tensors_atomic(tensors, out / SWEEP_WEIGHTS)
        plot_sweep(record, out / SWEEP_PNG)
        write_json_atomic(record, out / SWEEP_JSON)
        return record


def _grid(cells: list[dict], key: str, l1s: list[float], sizes: list[int]) -> list[list[float]]:
    at = {(c["l1"], c["dict_size"]): c[key] for c in cells}
    return [[at[(l1, n)] for n in sizes] for l1 in l1s]


def format_table(cells: list[dict], l1s: list[float], sizes: list[int], with_truth: bool) -> str:
    """Rows L1, columns dictionary size; each cell 'MMCS dead-fraction final-loss' (MMCS only with ground truth)."""
    keys = (["mmcs"] if with_truth else []) + ["dead_fraction", "final_loss"]
    grids = {k: _grid(cells, k, l1s, sizes) for k in keys}
    head = "l1 \\ latents".ljust(14) + "".join(f"{n:>24}" for n in sizes)
    lines = [f"cells: {' / '.join(keys)}", head]
    for i, l1 in enumerate(l1s):
        lines.append(f"{l1:<14g}" + "".join(f"{' / '.join(f'{grids[k][i][j]:.3f}' for k in keys):>24}" for j in range(len(sizes))))
    return "\n".join(lines)


def plot_sweep(record: dict, path: str | Path) -> None:
    """Heatmaps over (L1, dictionary ratio) of MMCS (with ground truth), dead fraction and final loss,
    and the final loss against dictionary size per L1, as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from sae.store import atomic_write

    l1s, sizes, ratios, cells = record["l1s"], record["dict_sizes"], record["ratios"], record["cells"]
    keys = [k for k in ("mmcs", "dead_fraction", "final_loss") if all(c[k] == c[k] for c in cells)]  # NaN: no ground truth
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(4.2 * (len(keys) + 1), 3.8), layout="constrained")
    titles = {"mmcs": "MMCS (ground truth → learned)", "dead_fraction": "dead fraction (held out)", "final_loss": "final training loss"}
    for ax, key in zip(axes, keys):
        grid = np.array(_grid(cells, key, l1s, sizes))
        bounds = {"vmin": 0.0, "vmax": 1.0} if key != "final_loss" else {}
        im = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower", **bounds)
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < (0.5 if bounds else grid.mean()) else "k")
        ax.set_xticks(range(len(sizes)), [f"{r:g}×\n({n})" for r, n in zip(ratios, sizes)], fontsize=7)
        ax.set_yticks(range(len(l1s)), [f"{v:g}" for v in l1s], fontsize=7)
        ax.set_xlabel("dictionary size (× true features)" if record["data"]["n_true_features"] else "dictionary size (× d)")
        ax.set_ylabel("L1 coefficient")
        ax.set_title(titles[key], fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    ax = axes[-1]
    loss = np.array(_grid(cells, "final_loss", l1s, sizes))
    for i, l1 in enumerate(l1s):
        ax.plot(sizes, loss[i], marker="o", label=f"l1={l1:g}")
    if record["data"]["n_true_features"]:
        ax.axvline(record["data"]["n_true_features"], color="grey", ls="--", lw=1, label="true features")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("latents")
    ax.set_title("final loss vs dictionary size", fontsize=9)
    ax.legend(fontsize=6)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)

__all__ = ["Ensemble", "SweepResult", "dict_sizes_for", "plot_sweep", "sweep", "sweep_run"]
