"""The one training engine: groups of stacked SAEs (``sae.ensemble.Ensemble``) trained over the
same batches by one loop. A single run is one group of one member; a sweep is one group per
dictionary size, its L1 coefficients the members.

Each step: the batch ``source.batch(step)`` (drawn once, read by every group), the lr schedule,
each group's gradients (kernel or autograd), the decoder projection, one Adam step per group, the
dead-latent counters; around it: the NaN/inf stop (naming the members), resampling (every
member on its own, from the same pool and generators its single run would use), the history, the
progress bar, periodic checkpoints and one on Ctrl-C. Every source of randomness is a function of
(seed, step), and a checkpoint holds the weights, Adam's moments, the counters, the thresholds and
the running loss sums, so ``Engine.resume`` ends with the same weights as an uninterrupted run
(bitwise on CPU).

Checkpoint keys: a single run stores its SAE's own ``state_dict`` (``sae.W_enc`` …, unstacked,
so ``load_sae`` and the SAELens export read it directly); several members store the stacks
(``g{j}.W_enc`` …).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from sae.config import BATCH_THRESHOLD_ARCHS, SAEConfig, TrainConfig
from sae.distributed import Context
from sae.ensemble import Ensemble, StepStats
from sae.files import CHECKPOINT, STATE, load_tensors, read_json, save_tensors_atomic, write_json_atomic
from sae.geometry import unit_rows
from sae.inits import NEEDS_DATA, initialize
from sae.model import SparseAutoencoder
from sae.sources import BatchSource

_FITTING: list[Engine] = []  # the engines whose fit() is running (in this thread)
_STOPS: list[str] = []  # stops asked for by request_stop, not yet honoured


def request_stop(reason: str = "") -> bool:
    """Ask the running ``Engine.fit`` to stop at the end of the step under way: it saves its
    checkpoint and raises ``KeyboardInterrupt(reason)`` there, so the saved weights are those of
    the step counted. Safe from a signal handler. False (nothing asked) where no fit is running:
    the caller then stops the way it would otherwise."""
    if not _FITTING:
        return False
    _STOPS.append(reason)
    return True


MAX_STEPS = 100_000_000  # beyond this a run would not end on any machine this trains on
FINAL_LOSS_SHARE = 0.1  # the final loss is the mean training loss over this last share of the steps


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then constant, then (``cfg.lr_decay``) a linear fall to 0 over the last steps."""
    lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
    if cfg.decay_start < cfg.steps and step >= cfg.decay_start:
        lr *= (cfg.steps - step) / (cfg.steps - cfg.decay_start)
    return lr


def check_device(device: str) -> torch.device:
    """``device`` as a ``torch.device``, refused in one line if it is unknown or absent here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r}: no CUDA GPU is available here (torch.cuda.is_available() is False); use cpu"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={device!r}: only cpu, cuda and mps are supported")
    return dev


def check_resources(sae_config: SAEConfig, config: TrainConfig, n_sae: int = 1, eval_samples: int = 0) -> None:
    """Refuse, before allocating anything, a run whose tensors cannot fit in memory or whose step
    count cannot finish. Estimate: per SAE 8 copies of the n×d matrices (weights, gradients, Adam's
    moments), a few [batch, n] buffers, and the evaluation's [eval, d + n]; float32."""
    dev = check_device(config.device)
    n, d, b = sae_config.dict_size, sae_config.d_in, config.batch_size
    need = 4 * (n_sae * (8 * n * d + 6 * b * n + 4 * b * d) + eval_samples * (d + n))
    if dev.type == "cuda":
        free = torch.cuda.mem_get_info(dev)[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > 0.8 * free:
        raise ValueError(
            f"this run needs about {need / 2**30:.1f} GiB ({n_sae} SAE of {n} latents x d {d}, batch {b}, "
            f"{eval_samples} evaluation samples) but {free / 2**30:.1f} GiB are free; use a smaller --dict-size, "
            "--batch-size or --eval-samples"
        )
    if config.steps > MAX_STEPS:
        raise ValueError(
            f"--samples {config.n_samples} is {config.steps:,} steps of {b}: more than {MAX_STEPS:,}, a run that "
            "would not finish; use fewer samples or a larger batch"
        )


def init_sample(sae_config: SAEConfig, config: TrainConfig, source: BatchSource) -> Tensor:
    """The data sample an initialisation reads (``config.init_samples`` rows; b_dec = their mean)."""
    if source.array is not None:
        x = source.array[: config.init_samples].float()
    elif source.store is not None:
        x = source.store.store.read(0, min(config.init_samples, source.store.store.rows))
    elif source.stream is not None:
        x = source.stream.sample(config.init_samples, source.generator(0, salt=1)).float()
    elif sae_config.init in NEEDS_DATA:
        raise ValueError(f"init={sae_config.init!r} needs array or stream data, not a list of batches or an iterable")
    else:
        x = source.batch(0).float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"the first {x.shape[0]} samples (used to initialise b_dec and the decoder) contain NaN or inf; "
            "clean the data first"
        )
    return x.cpu()


def data_scale(sae_config: SAEConfig, sample: Tensor) -> float:
    """σ, the RMS per dimension of what the SAE reconstructs (√(E‖x − mean‖² / d) over ``sample``'s
    rows; a transcoder's targets y): the unit of the scale-following defaults (``SAEConfig.resolve_scale``)."""
    c = sae_config
    x = (sample[:, c.d_in :] if c.transcoder else sample[:, : c.d_in]).double()
    return float(((x - x.mean(0)).pow(2).sum(1).mean() / x.shape[1]).sqrt())


def init_matrix(sae_config: SAEConfig, source: BatchSource) -> Tensor | None:
    """The weight matrix the 'svd' init reads: ``init_matrix`` (``FILE.safetensors:KEY``), else the
    one the activation store records; None for other inits."""
    if sae_config.init != "svd":
        return None
    if sae_config.init_matrix:
        path, sep, key = sae_config.init_matrix.rpartition(":")
        if not sep or not path or not key:
            raise ValueError(f"--init-matrix {sae_config.init_matrix!r} must be FILE.safetensors:KEY")
        tensors, _ = load_tensors(path, "--init-matrix file")
        if key not in tensors:
            raise ValueError(f"--init-matrix {path} has no tensor {key!r}; it holds {', '.join(sorted(tensors))}")
        return tensors[key]
    matrix = source.store.store.weight() if source.store is not None else None
    if matrix is None:
        where = (
            "the activation store records none (its layer has no weight matrix)"
            if source.store is not None
            else "the data is not an activation store"
        )
        raise ValueError(
            f"--init svd needs the weight matrix of the layer being interpreted and {where}; "
            "give --init-matrix FILE.safetensors:KEY"
        )
    return matrix


def initial_sae(
    sae_config: SAEConfig, config: TrainConfig, sample: Tensor, matrix: Tensor | None = None
) -> SparseAutoencoder:
    """The SAE a run with ``config.seed`` starts from: ``sae_config.init`` applied to ``sample``
    (and, for 'svd', to the layer's weight ``matrix``)."""
    gen = torch.Generator().manual_seed(config.seed)
    sae = SparseAutoencoder(sae_config, generator=gen)
    initialize(sae, sample, gen, matrix=matrix)  # a g-SAE's rows [x, J rows], a transcoder's [x, y]: its own part
    return sae.to(config.device)


def read_checkpoint(out_dir: str | Path) -> tuple[dict[str, Tensor], dict]:
    """``(tensors, state)`` of the checkpoint in ``out_dir``. The state inside the safetensors file
    is authoritative; files written before it was stored there fall back to ``checkpoint.json``,
    which must then name the same step."""
    out_dir = Path(out_dir)
    tensors, meta = load_tensors(out_dir / CHECKPOINT)
    if "state" in meta:
        try:
            return tensors, json.loads(meta["state"])
        except json.JSONDecodeError:
            raise ValueError(
                f"{out_dir / CHECKPOINT} has a corrupt state record; the checkpoint cannot be resumed"
            ) from None
    state = read_json(out_dir / STATE)
    if meta.get("step") != str(state.get("step")):
        raise ValueError(
            f"checkpoint in {out_dir} is inconsistent: "
            f"tensors at step {meta.get('step')}, JSON at step {state.get('step')}"
        )
    return tensors, state


def store_identity(source: BatchSource) -> dict | None:
    """What an activation store holds (model, layer, width, rows), recorded with a run trained on it."""
    if source.store is None:
        return None
    m = source.store.store.manifest
    return {k: m.get(k) for k in ("model", "layer", "width", "rows", "gradients")}


def check_same_store(state: dict, store: dict | None, out_dir) -> None:
    """Refuse to resume a run on another activation store than the one it was trained on."""
    theirs = state.get("store")
    if theirs is not None and store != theirs:
        got = (
            "not an activation store"
            if store is None
            else f"model {store['model']} layer {store['layer']} width {store['width']} ({store['rows']:,} rows)"
        )
        raise ValueError(
            f"the run in {out_dir} trained on the activation store of model {theirs['model']} layer {theirs['layer']} "
            f"width {theirs['width']} ({theirs['rows']:,} rows); this data is {got}: resume it on its own store"
        )


class Engine:
    """Train ``groups`` (ensembles) on ``source`` with ``config`` (see the module docstring).

    labels: one name per member per group, for messages (``[["l1=0.1 n=512", ...], ...]``);
    record: what the checkpoint's state records beside the step (the configs), and what
    ``resume`` hands back to rebuild the groups. objective: end-to-end training
    (``TrainConfig.loss`` 'kl' / 'e2e+ds'): ``objective.batch(step)`` is step's batch (model inputs,
    a function of the seed and the step) and ``objective(forward, batch)`` its ``SAEOutput``, the
    model run with the SAE spliced in; ``source`` then gives only the rows the initialisation reads.
    """

    def __init__(
        self,
        groups: list[Ensemble],
        config: TrainConfig,
        source: BatchSource,
        out_dir: str | Path | None = None,
        labels: list[list[str]] | None = None,
        record: dict | None = None,
        ctx: Context | None = None,
        objective=None,
    ):
        self.groups, self.config, self.source = groups, config, source
        self.objective = objective
        if (config.loss != "mse") != (objective is not None):
            raise ValueError(
                f"loss={config.loss!r} needs a model to run the SAE in (an objective)"
                if objective is None
                else "an objective replaces the reconstruction loss: set loss='kl' or 'e2e+ds'"
            )
        self.ctx = ctx or Context()
        """Data-parallel place (``sae.distributed``): ranks train on slices of each global batch."""
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.labels = labels or [[f"member {e}" for e in range(g.size)] for g in groups]
        self.record = dict(record or {})
        if config.resample_every and any(g.config.freeze_decoder for g in groups):
            raise ValueError("resample_every re-initialises decoder rows; a frozen decoder (freeze_decoder) takes 0")
        if objective is not None and (config.resample_every or self.ctx.world > 1):
            raise ValueError(
                f"--loss {config.loss} runs the model in one process and does not resample: "
                "drop --resample-every and torchrun"
            )
        if config.resample_every and any(g.config.transcoder for g in groups):
            raise ValueError("resample_every points latents at inputs an SAE reconstructs; a transcoder takes 0")
        self.opts = [torch.optim.Adam(g.parameters(), lr=config.lr, foreach=False) for g in groups]
        self.single = len(groups) == 1 and groups[0].size == 1
        self.step = 0
        self.history: list[dict] = []
        self.last_checkpoint: int | None = None
        self.loss_tail = [torch.zeros(g.size, dtype=torch.float64, device=config.device) for g in groups]
        self.tail_from = config.steps - max(1, math.ceil(FINAL_LOSS_SHARE * config.steps))
        """The first step whose loss counts towards the final loss (``loss_tail`` sums from it)."""

    def final_loss(self) -> list[list[float]]:
        """Mean training loss per member over the last ``FINAL_LOSS_SHARE`` of the steps (from
        the resumed step on, where a run resumed to a new length was already past that share)."""
        n = self.config.steps - self.tail_from
        return [(s / n).tolist() for s in self.loss_tail]

    # ---- the loop ------------------------------------------------------------------------------
    def fit(self) -> Engine:
        c = self.config
        for g in self.groups:
            g.train()
            if self.step == 0:  # (not on resume: renormalising unit rows again would change their last bits)
                g.project_(before_step=False, initial=True)
                self.ctx.broadcast_([getattr(g, n).data for n in g.names])  # one start on every rank
        bar = None
        if c.progress and self.ctx.main:
            from tqdm import tqdm

            n = sum(g.size for g in self.groups)
            bar = tqdm(
                total=c.steps,
                initial=self.step,
                file=sys.stderr,
                unit="step",
                dynamic_ncols=True,
                desc=None if self.single else f"{n} SAEs",
            )
        d_in = self.groups[0].config.data_width  # a g-SAE's rows: [x, J rows]
        _FITTING.append(self)
        try:
            while self.step < c.steps:
                if _STOPS:  # a stop asked for (SIGTERM, Ctrl-C): here, between steps, the state is whole
                    raise KeyboardInterrupt(_STOPS.pop())
                x = self.source.batch(self.step) if self.objective is None else self.objective.batch(self.step)
                if self.objective is None and x.shape[-1] != d_in:
                    raise ValueError(f"batch at step {self.step} has dimension {x.shape[-1]}, the SAE's d_in is {d_in}")
                stats = []
                logged = (self.step + 1) % c.log_every == 0 or self.step + 1 == c.steps
                for j, (g, opt) in enumerate(zip(self.groups, self.opts)):
                    for group in opt.param_groups:
                        group["lr"] = lr_at(self.step, c)
                    window = c.window(g.config.arch)
                    grads = g.step_grads_(x, window, fused=c.fused, bf16=c.bf16, l0=logged, objective=self.objective)
                    s = self._synced(g, grads, x.shape[0] if self.objective is None else self.objective.rows)
                    if not bool(torch.isfinite(s.loss).all()):  # a NaN/inf in x always gets here (err contains −x)
                        self._stop(
                            x,
                            [self.labels[j][e] for e in (~torch.isfinite(s.loss)).nonzero().flatten().tolist()],
                            s.loss,
                        )
                    g.project_(before_step=True)
                    opt.step()
                    g.project_(before_step=False)
                    if self.step >= self.tail_from:
                        self.loss_tail[j] += s.loss.double()
                    stats.append(s)
                self.step += 1
                if c.resample_every and self.step % c.resample_every == 0 and self.step < c.decay_start:
                    self.resample(x)
                if self.step % c.log_every == 0 or self.step == c.steps:
                    self._log(stats, bar)
                if bar is not None:
                    bar.update(1)
                if c.checkpoint_every and self.step % c.checkpoint_every == 0:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            if self.out_dir is not None and self.step > 0 and self.last_checkpoint != self.step:
                self.save_checkpoint()  # Ctrl-C keeps the run: --resume continues from here
            raise
        finally:
            _FITTING.remove(self)
            if bar is not None:
                bar.close()
        if self.out_dir is not None and self.last_checkpoint != self.step:
            self.save_checkpoint()
        if _STOPS:  # asked during the last step: the run is complete and saved, and stops as asked
            raise KeyboardInterrupt(_STOPS.pop())
        for g in self.groups:
            g.eval()
        return self

    def _synced(self, g: Ensemble, s, rows: int):
        """Agree across ranks (no-op alone): mean gradients, losses and BatchTopK thresholds, the
        union of the fired latents; then the dead-latent counters advance by the global batch."""
        if self.ctx.world > 1:
            self.ctx.mean_([*g.grads(), *([g.threshold] if g.config.arch in BATCH_THRESHOLD_ARCHS else [])])
            numbers = torch.stack([s.loss.float(), s.mse.float(), s.l0.float()])
            self.ctx.mean_([numbers])
            s = StepStats(numbers[0], numbers[1], numbers[2], self.ctx.any_(s.fired))
        g.count_fired_(s.fired, rows * self.ctx.world)
        return s

    def _log(self, stats, bar) -> None:
        per = {
            "loss": [s.loss.tolist() for s in stats],
            "mse": [s.mse.tolist() for s in stats],
            "l0": [s.l0.tolist() for s in stats],
            "dead_fraction": [
                g.dead_mask(self.config.window(g.config.arch)).float().mean(1).tolist() for g in self.groups
            ],
        }
        rec = {"step": self.step, **({k: v[0][0] for k, v in per.items()} if self.single else per)}
        self.history.append(rec)
        if bar is not None and self.single:
            bar.set_postfix(loss=f"{rec['loss']:.4g}", l0=f"{rec['l0']:.1f}", dead=f"{rec['dead_fraction']:.2f}")
        elif bar is not None:
            dead = [v for row in per["dead_fraction"] for v in row]
            bar.set_postfix(dead=f"{min(dead):.2f}-{max(dead):.2f}")

    def _stop(self, x: Tensor, members: list[str], loss: Tensor) -> None:
        if not bool(torch.isfinite(x).all()):
            what = f"batch at step {self.step} contains NaN or inf"
        else:
            bad = loss[~torch.isfinite(loss)]
            what = f"loss became {float(bad[0])} at step {self.step}" + (
                "" if self.single else f" for {', '.join(members)}"
            )
        where = (
            f"the last good checkpoint (step {self.last_checkpoint}) is kept in {self.out_dir}"
            if self.last_checkpoint is not None
            else "no checkpoint was written"
        )
        raise ValueError(f"{what}; training stopped, {where}")

    # ---- dead and duplicated latents -------------------------------------------------------------
    def resample_pool(self, x: Tensor) -> Tensor:
        """``config.resample_samples`` inputs to pick resampling targets from (a function of seed and
        step); a list of batches or an iterable gives the current batch ``x``."""
        n, g = self.config.resample_samples, self.source.generator(self.step, salt=3)
        if self.source.stream is not None:
            return self.source.stream.sample(n, g)
        if self.source.array is not None:
            rows = torch.randint(0, self.source.array.shape[0], (n,), generator=g, device=g.device)
            return self.source.array[rows.cpu()].to(self.config.device, torch.float32)
        if self.source.store is not None:
            seed = int(torch.randint(2**62, (1,), generator=g, device=g.device))
            return self.source.store.sample(n, torch.Generator().manual_seed(seed)).to(self.config.device)
        return x

    @torch.no_grad()
    def resample(self, x: Tensor) -> list[list[dict[str, int]]]:
        """Re-initialise dead latents (ReLU) and, with ``config.resample_duplicates``, one latent of
        each near-parallel pair, member by member; returns how many of each, per member."""
        c = self.config
        pool = None
        done = []
        for g, opt in zip(self.groups, self.opts):
            row = []
            for e in range(g.size):
                dead = (
                    g.dead_mask(c.window("relu"))[e]
                    if g.config.arch == "relu"
                    else torch.zeros_like(g.since_fired[e], dtype=torch.bool)
                )
                if not bool(dead.any()) and not c.resample_duplicates:
                    row.append({"dead": 0, "duplicates": 0})
                    continue
                pool = self.resample_pool(x) if pool is None else pool
                row.append(self._resample_member(g, opt, e, pool, dead))
            done.append(row)
            if self.ctx.world > 1:  # rank 0's result everywhere (an iterable's pool is each rank's own batch)
                moments = [
                    st[k]
                    for p in g.parameters()
                    if p in opt.state
                    for st in (opt.state[p],)
                    for k in ("exp_avg", "exp_avg_sq")
                ]
                self.ctx.broadcast_([*(getattr(g, n).data for n in g.names), g.since_fired, *moments])
        return done

    def _resample_member(self, g: Ensemble, opt, e: int, pool: Tensor, dead: Tensor) -> dict[str, int]:
        c = self.config
        out = g.member_forward(e, pool, train=False)
        dup = torch.zeros_like(dead)
        decoder = g.decoders()[e]
        if c.resample_duplicates:
            W = unit_rows(decoder)
            i, j = torch.triu((W @ W.T).abs(), diagonal=1).gt(c.resample_duplicates).nonzero(as_tuple=True)
            mass = out.acts.sum(0)
            dup[torch.where(mass[i] < mass[j], i, j)] = True
            dup &= ~dead
        pool = pool[:, : g.config.d_in]  # a g-SAE's rows carry the Jacobian after x
        residual = pool - out.recon
        err = residual.pow(2).sum(-1).double() + 1e-12
        gen = self.source.generator(self.step, salt=2)  # each member draws what its single run would draw
        # Dead latents point at badly reconstructed inputs (Anthropic) or their residuals, duplicates at the residuals.
        dead_targets = residual if c.resample_dead_towards == "residual" else pool - g.b_dec[e]
        for latents, targets in ((dead, dead_targets), (dup, residual)):
            idx = latents.nonzero().squeeze(-1)
            if idx.numel():
                pick = torch.multinomial(err, idx.numel(), replacement=idx.numel() > err.numel(), generator=gen)
                self._reinit_(g, opt, e, idx, targets[pick])
        return {"dead": int(dead.sum()), "duplicates": int(dup.sum())}

    def _reinit_(self, g: Ensemble, opt, e: int, latents: Tensor, directions: Tensor) -> None:
        """Decoder rows = the unit ``directions``, encoder columns the same at 0.2 × the mean norm of
        the other encoder columns, b_enc 0 (JumpReLU's threshold and the gated magnitude path back
        at their initial values); their Adam moments and dead counters reset."""
        v = unit_rows(directions)  # [k, d]
        W_enc = g.W_enc[e]
        others = torch.ones(g.config.dict_size, dtype=torch.bool, device=v.device)
        others[latents] = False
        enc_norm = W_enc[:, others].norm(dim=0).mean() if others.any() else torch.tensor(1.0)
        if g.W_dec is not None:
            g.W_dec[e][latents] = v
            W_enc[:, latents] = (v * 0.2 * enc_norm).T
        else:
            W_enc[:, latents] = v.T
        g.b_enc[e][latents] = 0
        if g.log_threshold is not None:
            g.log_threshold[e][latents] = math.log(g.config.threshold_init)
        for p in (g.r_mag, g.b_mag):
            if p is not None:
                p[e][latents] = 0
        per_latent = tuple((p, (e, latents)) for p in (g.b_enc, g.log_threshold, g.r_mag, g.b_mag))
        for p, cols in ((g.W_enc, (e, slice(None), latents)), *per_latent, (g.W_dec, (e, latents))):
            if p is not None and p in opt.state:
                opt.state[p]["exp_avg"][cols] = 0
                opt.state[p]["exp_avg_sq"][cols] = 0
        g.since_fired[e, latents] = 0

    # ---- checkpoints -----------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for j, (g, opt) in enumerate(zip(self.groups, self.opts)):
            unstack = (lambda t: t[0]) if self.single else (lambda t: t)  # noqa: E731
            prefix = "" if self.single else f"g{j}."
            for name in g.names:
                out[f"{prefix}sae.{name}"] = unstack(getattr(g, name))
            out[f"{prefix}sae.threshold"] = unstack(g.threshold)
            for name in g.names:
                st = opt.state.get(getattr(g, name), {})
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in st:
                        out[f"{prefix}adam.{name}.{key}"] = unstack(st[key])
                if "step" in st:
                    out[f"{prefix}adam.{name}.step"] = torch.as_tensor(st["step"]).reshape(1).float()
            out[f"{prefix}since_fired"] = unstack(g.since_fired)
            out[f"{prefix}loss_tail"] = self.loss_tail[j]
        return out

    def load_state(self, t: dict[str, Tensor]) -> None:
        dev = self.config.device
        for j, (g, opt) in enumerate(zip(self.groups, self.opts)):
            prefix = "" if self.single else f"g{j}."
            stack = (lambda v: v.unsqueeze(0)) if self.single else (lambda v: v)  # noqa: E731
            try:
                with torch.no_grad():
                    for name in (*g.names, "threshold"):
                        getattr(g, name).copy_(stack(t[f"{prefix}sae.{name}"]))
                    g.since_fired.copy_(stack(t[f"{prefix}since_fired"]))
            except (KeyError, RuntimeError) as err:
                raise ValueError(f"checkpoint tensors do not fit the run's SAEs ({str(err).splitlines()[0]})") from None
            for name in g.names:
                if f"{prefix}adam.{name}.exp_avg" in t:
                    opt.state[getattr(g, name)] = {
                        "step": t[f"{prefix}adam.{name}.step"].reshape(()).clone(),
                        "exp_avg": stack(t[f"{prefix}adam.{name}.exp_avg"]).to(dev).clone(),
                        "exp_avg_sq": stack(t[f"{prefix}adam.{name}.exp_avg_sq"]).to(dev).clone(),
                    }
            if f"{prefix}loss_tail" in t:
                self.loss_tail[j] = t[f"{prefix}loss_tail"].to(dev, torch.float64).clone()

    def save_checkpoint(self) -> None:
        """One file holds the whole checkpoint: the tensors and, in the safetensors metadata, the
        state (step, configs, history), written to a temporary name and renamed, so a kill at any
        moment leaves the previous checkpoint or the new one, never a mix. ``checkpoint.json``
        (the same state, for people and tools) follows it."""
        if self.out_dir is None:
            return
        if not self.ctx.main:  # rank 0 writes; the others know it is written
            self.last_checkpoint = self.step
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.step,
            **self.record,
            "train": asdict(self.config),
            "tail_from": self.tail_from,
            "history": self.history,
        }
        save_tensors_atomic(
            self.state_tensors(), self.out_dir / CHECKPOINT, {"step": str(self.step), "state": json.dumps(state)}
        )
        write_json_atomic(state, self.out_dir / STATE)
        self.last_checkpoint = self.step

    def restore(self, tensors: dict[str, Tensor], state: dict) -> Engine:
        """Continue from a checkpoint read by ``read_checkpoint`` (weights, moments, step, history)."""
        self.load_state(tensors)
        self.step, self.history, self.last_checkpoint = state["step"], state.get("history", []), state["step"]
        if state.get("tail_from") != self.tail_from:  # resumed to another length: its loss sums are of other steps
            self.loss_tail = [torch.zeros_like(t) for t in self.loss_tail]
            self.tail_from = max(self.tail_from, self.step)
        if self.step > self.config.steps:
            raise ValueError(
                f"the run in {self.out_dir} has done {self.step} steps, more than the {self.config.steps} asked for; "
                "give at least as many samples as it has trained on"
            )
        return self
