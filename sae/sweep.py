"""Sweeps: a grid of L1 coefficients × dictionary sizes, trained as batched ensembles in one pass.
(For JumpReLU the swept coefficient is its L0 coefficient ``l0``: ``sae.config.sparsity_field``.)

Every member sees the same batch at every step (drawn once). Members with the same dictionary
size form one ``sae.ensemble.Ensemble`` (stacked ``[E, ...]`` tensors, one Adam); the groups
share the batch. The loop is ``sae.engine.Engine``'s, the one single runs use, so sweeps have
what single runs have: resampling, periodic checkpoints, resume, bf16, tied decoders and the
orthogonality penalty (the last three through autograd, the rest through the batched kernel).
Member (l1, n) starts from the SAE that ``train(SAEConfig(dict_size=n, l1=l1, …), config, data)``
starts from, so it ends where that single run ends up to float reassociation.

Per cell the sweep reports the held-out evaluation (MMCS and the rest with ground truth), the
dead fraction, and the final training loss: what Sharkey et al.'s dictionary-size heuristics are
read from (dead latents appear, the loss stops falling once the dictionary passes the true count).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from sae.config import SAEConfig, TrainConfig, sparsity_field
from sae.distributed import context
from sae.engine import (
    Engine,
    check_resources,
    data_scale,
    init_matrix,
    init_sample,
    initial_sae,
    read_checkpoint,
)
from sae.ensemble import Ensemble
from sae.model import SparseAutoencoder
from sae.sources import BatchSource


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


def sweep_engine(
    data,
    l1s: list[float],
    dict_sizes: list[int],
    sae_fields: dict,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    data_record: dict | None = None,
) -> Engine:
    """The engine that trains the grid (one group per dictionary size), initialised or, with
    ``resume``, restored from the checkpoint in ``out_dir``: then the grid, the SAE settings, the
    data (``data_record``) and every training setting but ``n_samples`` and ``progress`` must be
    the run's, or a ValueError names the one that differs and the run's value."""
    if not l1s or not dict_sizes:
        raise ValueError("a sweep needs at least one L1 coefficient and one dictionary size")
    ctx = context(config.device)
    source = BatchSource(data, config.batch_size, config.seed, config.device, ctx.rank, ctx.world)
    coef = sparsity_field(sae_fields.get("arch", "relu"))  # what l1s set: l1, or JumpReLU's l0
    fields = {k: v for k, v in sae_fields.items() if k not in (coef, "dict_size")}
    fields.setdefault("d_in", source.d)
    if "prefixes" in fields:  # a list, as the checkpoint's JSON gives it back (resume compares the two)
        fields["prefixes"] = list(fields["prefixes"])

    sigma = None  # the data's scale, for coefficients left to follow it (SAEConfig.resolve_scale)

    def cell(n: int, l1: float) -> SAEConfig:
        c = SAEConfig(**fields, dict_size=n, **{coef: l1})
        return c if sigma is None else c.resolve_scale(sigma)

    first = cell(dict_sizes[0], l1s[0])
    width = first.data_width  # d_in, or a transcoder's d_in + d_out
    if source.d is not None and source.d != width:
        raise ValueError(f"data dimension {source.d} does not match the SAE's rows, {width} wide")
    for n in dict_sizes:
        check_resources(cell(n, l1s[0]), config, n_sae=len(l1s))
    sample = None  # drawn once, read by every member (and on resume where σ needs it)
    if not resume or not first.scale_free:
        sample = init_sample(first, config, source)
    if not first.scale_free:
        sigma = data_scale(first, sample)
    if resume:
        groups = [Ensemble([SparseAutoencoder(cell(n, l1)).to(config.device) for l1 in l1s]) for n in dict_sizes]
    else:
        matrix = init_matrix(first, source)
        groups = [Ensemble([initial_sae(cell(n, l1), config, sample, matrix) for l1 in l1s]) for n in dict_sizes]
    labels = [[f"{coef}={l1:g} n={n}" for l1 in l1s] for n in dict_sizes]
    record = {"sweep": {"l1s": list(l1s), "dict_sizes": list(dict_sizes), "sae": fields}, "data": data_record}
    engine = Engine(groups, config, source, out_dir, labels=labels, record=record, ctx=ctx)
    if resume:
        tensors, state = read_checkpoint(out_dir)
        if "sweep" not in state:
            raise ValueError(
                f"the checkpoint in {out_dir} is a single run's, not a sweep's; "
                "resume it with polylens sae train --resume"
            )
        theirs = {
            **{f"sweep {k}": v for k, v in state["sweep"].items()},
            "data": state.get("data"),
            **{k: v for k, v in state["train"].items() if k not in ("n_samples", "progress")},
        }
        mine = {
            **{f"sweep {k}": v for k, v in record["sweep"].items()},
            "data": data_record,
            **{k: v for k, v in asdict(config).items() if k not in ("n_samples", "progress")},
        }
        for key in theirs:
            if mine.get(key) != theirs[key]:
                raise ValueError(
                    f"resuming: {key} is {mine.get(key)!r} here but {theirs[key]!r} in the run in {out_dir}; "
                    "give the run's value"
                )
        engine.restore(tensors, state)
    return engine


def sweep(
    data,
    l1s: list[float],
    dict_sizes: list[int],
    sae_fields: dict,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    data_record: dict | None = None,
) -> SweepResult:
    """Train every (l1, dictionary size) of the grid on ``data`` in one pass (see the module docstring).

    ``sae_fields``: SAEConfig fields shared by all cells (``d_in`` from the data when absent);
    ``l1s`` set each cell's ``l1``, or for JumpReLU its ``l0``.
    ``config`` as for a single run; ``out_dir`` holds the checkpoint (``resume`` continues it).
    """
    engine = sweep_engine(data, l1s, dict_sizes, sae_fields, config, out_dir, resume, data_record).fit()
    final = engine.final_loss()  # [size][l1]
    members = [g.members() for g in engine.groups]  # [size][l1]
    return SweepResult(
        list(l1s),
        list(dict_sizes),
        [[members[j][i] for j in range(len(dict_sizes))] for i in range(len(l1s))],
        [[final[j][i] for j in range(len(dict_sizes))] for i in range(len(l1s))],
        engine.step,
        engine.history,
    )


# ---- a sweep in a folder: sweep.json, sweep.png, sweep.safetensors -------------------------------
SWEEP_JSON, SWEEP_PNG, SWEEP_WEIGHTS = "sweep.json", "sweep.png", "sweep.safetensors"


def dict_sizes_for(ratios: list[float], n_true: int) -> list[int]:
    """Dictionary sizes as multiples of the true feature count (or of d for data without ground truth)."""
    sizes = [max(1, round(r * n_true)) for r in ratios]
    if len(set(sizes)) != len(sizes):
        raise ValueError(
            f"ratios {ratios} give repeated dictionary sizes {sizes} for {n_true} features; give distinct ratios"
        )
    return sizes


def sweep_run(
    out_dir,
    data: str = "sharkey",
    l1s=(0.01, 0.03, 0.1, 0.3, 1.0),
    ratios=(0.5, 1.0, 2.0, 4.0),
    sae_fields: dict | None = None,
    config: TrainConfig | None = None,
    data_options: dict | None = None,
    eval_samples: int = 20_000,
    force: bool = False,
    resume: bool = False,
    *,
    open_data=None,
) -> dict:
    """Sweep L1 × dictionary ratio on ``data`` (opened by ``open_data`` as in ``sae.runs.train_run``)
    into ``out_dir``; returns sweep.json's content.

    The sweep's checkpoint (``checkpoint.safetensors``, every ``config.checkpoint_every`` steps,
    on Ctrl-C and at the end) lets ``resume=True`` continue it with the same arguments.

    Writes ``sweep.json`` (per cell: l1, dict_size, ratio, final_loss, dead latents and the held-out
    evaluation), ``sweep.png`` (heatmaps: MMCS, dead fraction, final loss; loss against dictionary
    size per L1) and ``sweep.safetensors`` (each cell's weights, keys ``l1_{i}.n_{j}.W_enc`` …).
    """
    from sae.files import save_tensors_atomic, write_json_atomic
    from sae.metrics import evaluate
    from sae.runs import check_run_folder, eval_batch, main_lock
    from sae.synthetic import make_data

    out = Path(out_dir)
    check_run_folder(out, resume=resume, force=force)
    config = config or TrainConfig()
    data_options = dict(data_options or {})
    source = (open_data or make_data)(data, seed=config.seed, **data_options)
    truth = getattr(source, "features", None)
    n_true = truth.shape[0] if truth is not None else getattr(source, "d", None) or source.shape[1]
    sae_fields = dict(sae_fields or {})
    if sae_fields.pop("transcoder", False):  # the store read as [x, y]; ratios are of d_in
        from sae.runs import paired

        source = paired(source, data)
        sae_fields.update(d_in=n_true, d_out=source.pair_width)
    sizes = dict_sizes_for(list(ratios), n_true)
    ctx = context(config.device)
    with main_lock(out, ctx, clear=force and not resume):
        result = sweep(
            source,
            list(l1s),
            sizes,
            sae_fields,
            config,
            out,
            resume,
            {"spec": data, "options": data_options},
        )
        if not ctx.main:  # rank 0 evaluates and writes
            return {"steps": result.steps, "rank": ctx.rank}
        x, truth, codes = eval_batch(source, eval_samples, config.seed)
        cells, tensors = [], {}
        for i, l1 in enumerate(result.l1s):
            for j, n in enumerate(result.dict_sizes):
                sae = result.saes[i][j]
                ev = evaluate(sae, x, truth, codes)._asdict()
                cells.append(
                    {
                        "l1": l1,
                        "dict_size": n,
                        "ratio": ratios[j],
                        "final_loss": result.final_loss[i][j],
                        "dead_latents": round(ev["dead_fraction"] * n),
                        **ev,
                    }
                )
                tensors.update({f"l1_{i}.n_{j}.{k}": v for k, v in sae.state_dict().items()})
        record = {
            "data": {"spec": data, "options": data_options, "n_true_features": n_true if truth is not None else None},
            "l1s": result.l1s,
            "ratios": list(ratios),
            "dict_sizes": sizes,
            "sae": sae_fields,
            "train": asdict(config),
            "steps": result.steps,
            "cells": cells,
            "table": format_table(cells, result.l1s, sizes, truth is not None),
        }
        save_tensors_atomic(tensors, out / SWEEP_WEIGHTS)
        plot_sweep(record, out / SWEEP_PNG)
        write_json_atomic(record, out / SWEEP_JSON)
        return record


def _grid(cells: list[dict], key: str, l1s: list[float], sizes: list[int]) -> list[list[float]]:
    at = {(c["l1"], c["dict_size"]): c[key] for c in cells}
    return [[at[(l1, n)] for n in sizes] for l1 in l1s]


def format_table(cells: list[dict], l1s: list[float], sizes: list[int], with_truth: bool) -> str:
    """Rows L1, columns dictionary size; each cell 'MMCS dead-fraction final-loss' (MMCS only with ground truth)."""
    keys = (["mmcs_signed"] if with_truth else []) + ["dead_fraction", "final_loss"]
    grids = {k: _grid(cells, k, l1s, sizes) for k in keys}
    head = "l1 \\ latents".ljust(14) + "".join(f"{n:>24}" for n in sizes)
    lines = [f"cells: {' / '.join(keys)}", head]
    for i, l1 in enumerate(l1s):
        lines.append(
            f"{l1:<14g}"
            + "".join(f"{' / '.join(f'{grids[k][i][j]:.3f}' for k in keys):>24}" for j in range(len(sizes)))
        )
    return "\n".join(lines)


def plot_sweep(record: dict, path: str | Path) -> None:
    """Heatmaps over (L1, dictionary ratio) of MMCS (with ground truth), dead fraction and final loss,
    and the final loss against dictionary size per L1, as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from sae.files import atomic_write

    l1s, sizes, ratios, cells = record["l1s"], record["dict_sizes"], record["ratios"], record["cells"]
    keys = [
        k for k in ("mmcs_signed", "dead_fraction", "final_loss") if all(c[k] == c[k] for c in cells)
    ]  # NaN: no ground truth
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(4.2 * (len(keys) + 1), 3.8), layout="constrained")
    titles = {
        "mmcs_signed": "signed MMCS (ground truth → learned)",
        "dead_fraction": "dead fraction (held out)",
        "final_loss": "final training loss",
    }
    for ax, key in zip(axes, keys):
        grid = np.array(_grid(cells, key, l1s, sizes))
        bounds = {"vmin": 0.0, "vmax": 1.0} if key != "final_loss" else {}
        im = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower", **bounds)
        for (i, j), v in np.ndenumerate(grid):
            ax.text(
                j,
                i,
                f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="w" if v < (0.5 if bounds else grid.mean()) else "k",
            )
        ax.set_xticks(range(len(sizes)), [f"{r:g}×\n({n})" for r, n in zip(ratios, sizes)], fontsize=7)
        ax.set_yticks(range(len(l1s)), [f"{v:g}" for v in l1s], fontsize=7)
        ax.set_xlabel(
            "dictionary size (× true features)" if record["data"]["n_true_features"] else "dictionary size (× d)"
        )
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


__all__ = ["SweepResult", "dict_sizes_for", "plot_sweep", "sweep", "sweep_engine", "sweep_run"]
