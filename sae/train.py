"""Trainer: Adam with linear warm-up, dead-latent tracking, resampling / AuxK, atomic checkpoints.

Every source of randomness is a function of (seed, step), and the checkpoint holds the weights,
Adam's moments, the dead-latent counters and the BatchTopK threshold, so ``Trainer.resume`` ends
with the same weights as an uninterrupted run with the same seed (bitwise on CPU).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from sae.config import SAEConfig, TrainConfig
from sae.inits import NEEDS_DATA, initialize
from sae.kernels import fused_backward_, kernel_supports
from sae.model import SparseAutoencoder
from sae.store import CHECKPOINT, STATE, BatchSource, load_tensors, read_json, save_tensors_atomic, write_json_atomic


@dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) run returns."""

    sae: SparseAutoencoder
    steps: int
    history: list[dict] = field(default_factory=list)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then constant, then (``cfg.lr_decay``) a linear fall to 0 over the last steps."""
    lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
    if cfg.decay_start < cfg.steps and step >= cfg.decay_start:
        lr *= (cfg.steps - step) / (cfg.steps - cfg.decay_start)
    return lr


def init_sample(sae_config: SAEConfig, config: TrainConfig, source: BatchSource) -> Tensor:
    """The data sample an initialisation reads (``config.init_samples`` rows; b_dec = their mean)."""
    if source.array is not None:
        x = source.array[: config.init_samples].float()
    elif source.stream is not None:
        x = source.stream.sample(config.init_samples, source.generator(0, salt=1)).float()
    elif sae_config.init in NEEDS_DATA:
        raise ValueError(f"init={sae_config.init!r} needs array or stream data, not a plain iterator")
    else:
        x = source.batch(0).float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"the first {x.shape[0]} samples (used to initialise b_dec and the decoder) contain NaN or inf; clean the data first")
    return x.cpu()


def initial_sae(sae_config: SAEConfig, config: TrainConfig, source: BatchSource, sample: Tensor | None = None) -> SparseAutoencoder:
    """The SAE a run with ``config.seed`` starts from: ``sae_config.init`` applied to ``sample``
    (default ``init_sample(...)``), on ``config.device``."""
    gen = torch.Generator().manual_seed(config.seed)
    sae = SparseAutoencoder(sae_config, generator=gen)
    initialize(sae, init_sample(sae_config, config, source) if sample is None else sample, gen)
    return sae.to(config.device)


MAX_STEPS = 100_000_000  # beyond this a run would not end on any machine this trains on


def check_device(device: str) -> torch.device:
    """``device`` as a ``torch.device``, refused in one line if it is unknown or absent here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is available here (torch.cuda.is_available() is False); use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device}: only cpu, cuda and mps are supported")
    return dev


def check_resources(sae_config: SAEConfig, config: TrainConfig, n_sae: int = 1, eval_samples: int = 0) -> None:
    """Refuse, before allocating anything, a run whose tensors cannot fit in memory or whose step
    count cannot finish. Estimate: per SAE 8 copies of the n×d matrices (weights, gradients, Adam's
    moments), a few [batch, n] buffers, and the evaluation's [eval, d + n]; float32."""
    import os

    dev = check_device(config.device)
    n, d, b = sae_config.dict_size, sae_config.d_in, config.batch_size
    need = 4 * (n_sae * (8 * n * d + 6 * b * n + 4 * b * d) + eval_samples * (d + n))
    if dev.type == "cuda":
        free = torch.cuda.mem_get_info(dev)[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > 0.8 * free:
        raise ValueError(f"this run needs about {need / 2**30:.1f} GiB ({n_sae} SAE of {n} latents x d {d}, batch {b}, "
                         f"{eval_samples} evaluation samples) but {free / 2**30:.1f} GiB are free; use a smaller --dict-size, "
                         "--batch-size or --eval-samples")
    if config.steps > MAX_STEPS:
        raise ValueError(f"--samples {config.n_samples} is {config.steps:,} steps of {b}: more than {MAX_STEPS:,}, a run that "
                         "would not finish; use fewer samples or a larger batch")


class Trainer:
    """Train ``SparseAutoencoder(sae_config)`` on ``data`` (tensor, array, path, stream or iterable)."""

    def __init__(self, sae_config: SAEConfig, config: TrainConfig, data, out_dir: str | Path | None = None, eval_samples: int = 0):
        check_resources(sae_config, config, eval_samples=eval_samples)
        self.sae_config, self.config = sae_config, config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.source = BatchSource(data, config.batch_size, config.seed, config.device)
        if self.source.d is not None and self.source.d != sae_config.d_in:
            raise ValueError(f"data dimension {self.source.d} does not match the SAE's d_in={sae_config.d_in}")
        self.sae = initial_sae(sae_config, config, self.source)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=config.lr, foreach=False)
        self.since_fired = torch.zeros(sae_config.dict_size, dtype=torch.long, device=config.device)
        self.step = 0
        self.history: list[dict] = []
        self.last_checkpoint: int | None = None

    # ---- checkpoints ---------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        t = {f"sae.{k}": v for k, v in self.sae.state_dict().items()}
        names = dict(self.sae.named_parameters())
        for name, p in names.items():
            st = self.opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    t[f"adam.{name}.{key}"] = st[key]
            if "step" in st:
                t[f"adam.{name}.step"] = torch.as_tensor(st["step"]).reshape(1).float()
        t["since_fired"] = self.since_fired
        return t

    def save_checkpoint(self) -> None:
        """One file holds the whole checkpoint: the tensors and, in the safetensors metadata, the
        state (step, configs, history), written to a temporary name and renamed, so a kill at any
        moment leaves the previous checkpoint or the new one, never a mix. ``checkpoint.json``
        (the same state, for people and tools) follows it."""
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {"step": self.step, "sae": asdict(self.sae_config), "train": asdict(self.config), "history": self.history}
        save_tensors_atomic(self.state_tensors(), self.out_dir / CHECKPOINT, {"step": str(self.step), "state": json.dumps(state)})
        write_json_atomic(state, self.out_dir / STATE)
        self.last_checkpoint = self.step

    @classmethod
    def resume(cls, out_dir: str | Path, data, n_samples: int | None = None, progress: bool | None = None) -> Trainer:
        """Rebuild a trainer from ``out_dir`` (optionally with a larger ``n_samples``) to continue."""
        out_dir = Path(out_dir)
        tensors, state = read_checkpoint(out_dir)
        try:
            sae_cfg = SAEConfig(**state["sae"])
            train = dict(state["train"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"{out_dir / CHECKPOINT} is not a polylens SAE checkpoint ({err})") from None
        if n_samples is not None:
            train["n_samples"] = n_samples
        if progress is not None:
            train["progress"] = progress
        self = cls(sae_cfg, TrainConfig(**train), data, out_dir)
        self.load_state(tensors)
        self.step, self.history, self.last_checkpoint = state["step"], state.get("history", []), state["step"]
        return self

    def load_state(self, t: dict[str, Tensor]) -> None:
        dev = self.config.device
        try:
            self.sae.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("sae.")})
        except RuntimeError as err:
            raise ValueError(f"checkpoint weights do not fit the SAE config: {str(err).splitlines()[0]}") from None
        for name, p in self.sae.named_parameters():
            if f"adam.{name}.exp_avg" in t:
                self.opt.state[p] = {
                    "step": t[f"adam.{name}.step"].reshape(()).clone(),
                    "exp_avg": t[f"adam.{name}.exp_avg"].to(dev).clone(),
                    "exp_avg_sq": t[f"adam.{name}.exp_avg_sq"].to(dev).clone(),
                }
        self.since_fired = t["since_fired"].to(dev).clone()

    # ---- dead latents --------------------------------------------------------------------------
    def dead_mask(self) -> Tensor:
        return self.since_fired >= self.config.dead_window

    def resample_pool(self, x: Tensor) -> Tensor:
        """``config.resample_samples`` inputs to pick resampling targets from (a function of seed and
        step); a plain iterator gives the current batch ``x``."""
        n, g = self.config.resample_samples, self.source.generator(self.step, salt=3)
        if self.source.stream is not None:
            return self.source.stream.sample(n, g)
        if self.source.array is not None:
            rows = torch.randint(0, self.source.array.shape[0], (n,), generator=g, device=g.device)
            return self.source.array[rows.cpu()].to(self.config.device, torch.float32)
        return x

    @torch.no_grad()
    def resample(self, x: Tensor) -> dict[str, int]:
        """Re-initialise dead latents (ReLU) and, with ``config.resample_duplicates``, one latent of
        each near-parallel pair; returns how many of each."""
        sae, c = self.sae, self.config
        dead = self.dead_mask() if self.sae_config.arch == "relu" else torch.zeros_like(self.dead_mask())
        dup = torch.zeros_like(dead)
        if not bool(dead.any()) and not c.resample_duplicates:
            return {"dead": 0, "duplicates": 0}
        pool = self.resample_pool(x)
        sae.eval()
        out = sae(pool)
        sae.train()
        if c.resample_duplicates:
            W = sae.decoder / sae.decoder.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            i, j = torch.triu((W @ W.T).abs(), diagonal=1).gt(c.resample_duplicates).nonzero(as_tuple=True)
            mass = out.acts.sum(0)
            dup[torch.where(mass[i] < mass[j], i, j)] = True
            dup &= ~dead
        residual = pool - out.recon
        err = residual.pow(2).sum(-1).double() + 1e-12
        g = self.source.generator(self.step, salt=2)
        # Dead latents point at badly reconstructed inputs (Anthropic) or their residuals, duplicates at the residuals.
        dead_targets = residual if c.resample_dead_towards == "residual" else pool - sae.b_dec
        for latents, targets in ((dead, dead_targets), (dup, residual)):
            idx = latents.nonzero().squeeze(-1)
            if idx.numel():
                pick = torch.multinomial(err, idx.numel(), replacement=idx.numel() > err.numel(), generator=g)
                self._reinit_(idx, targets[pick])
        return {"dead": int(dead.sum()), "duplicates": int(dup.sum())}

    def _reinit_(self, latents: Tensor, directions: Tensor) -> None:
        """Decoder rows = the unit ``directions``, encoder columns the same at 0.2 × the mean norm of
        the other encoder columns, b_enc 0; their Adam moments and dead counters reset."""
        sae = self.sae
        v = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [k, d]
        others = torch.ones(sae.config.dict_size, dtype=torch.bool, device=v.device)
        others[latents] = False
        enc_norm = sae.W_enc[:, others].norm(dim=0).mean() if others.any() else torch.tensor(1.0)
        if sae.W_dec is not None:
            sae.W_dec[latents] = v
            sae.W_enc[:, latents] = (v * 0.2 * enc_norm).T
        else:
            sae.W_enc[:, latents] = v.T
        sae.b_enc[latents] = 0
        for p, cols in ((sae.W_enc, (slice(None), latents)), (sae.b_enc, (latents,)), (sae.W_dec, (latents,))):
            if p is not None and p in self.opt.state:
                self.opt.state[p]["exp_avg"][cols] = 0
                self.opt.state[p]["exp_avg_sq"][cols] = 0
        self.since_fired[latents] = 0

    # ---- loop ----------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        c, sae = self.config, self.sae
        sae.train()
        if self.step == 0:  # (not on resume: renormalising unit rows again would change their last bits)
            sae.normalize_decoder_()
        bar = None
        if c.progress:
            from tqdm import tqdm

            bar = tqdm(total=c.steps, initial=self.step, file=sys.stderr, unit="step", dynamic_ncols=True)
        dev_type = torch.device(c.device).type
        fused = c.fused and not c.bf16 and kernel_supports(self.sae_config)
        try:
            while self.step < c.steps:
                x = self.source.batch(self.step)
                if x.shape[-1] != self.sae_config.d_in:
                    raise ValueError(f"batch at step {self.step} has dimension {x.shape[-1]}, the SAE's d_in is {self.sae_config.d_in}")
                for group in self.opt.param_groups:
                    group["lr"] = lr_at(self.step, c)
                if fused:
                    out = fused_backward_(sae, x, dead=self.dead_mask())  # sets every .grad, no graph
                else:
                    with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=c.bf16):
                        out = sae(x, dead=self.dead_mask())
                loss = out.loss.float()
                if not bool(torch.isfinite(loss)):  # a NaN/inf in x always gets here (err contains −x)
                    if not bool(torch.isfinite(x).all()):
                        self._stop(f"batch at step {self.step} contains NaN or inf")
                    self._stop(f"loss became {float(loss)} at step {self.step}")
                if not fused:
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                sae.remove_parallel_grad_()
                self.opt.step()
                sae.normalize_decoder_()
                with torch.no_grad():
                    fired = out.fired if fused else (out.acts != 0).any(0)  # the same mask (acts >= 0)
                    self.since_fired = torch.where(fired, torch.zeros_like(self.since_fired), self.since_fired + x.shape[0])
                self.step += 1
                if c.resample_every and self.step % c.resample_every == 0 and self.step < c.decay_start:
                    self.resample(x)
                if self.step % c.log_every == 0 or self.step == c.steps:
                    rec = {
                        "step": self.step,
                        "loss": float(loss.detach()),
                        "mse": float(out.mse.detach()),
                        "l0": float((out.acts != 0).float().sum(-1).mean()),
                        "dead_fraction": float(self.dead_mask().float().mean()),
                    }
                    self.history.append(rec)
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec['loss']:.4g}", l0=f"{rec['l0']:.1f}", dead=f"{rec['dead_fraction']:.2f}")
                if bar is not None:
                    bar.update(1)
                if c.checkpoint_every and self.step % c.checkpoint_every == 0:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            if self.out_dir is not None and self.step > 0 and self.last_checkpoint != self.step:
                self.save_checkpoint()  # Ctrl-C keeps the run: --resume continues from here
            raise
        finally:
            if bar is not None:
                bar.close()
        if self.last_checkpoint != self.step:
            self.save_checkpoint()
        sae.eval()
        return TrainResult(sae, self.step, self.history)

    def _stop(self, what: str) -> None:
        where = f"the last good checkpoint (step {self.last_checkpoint}) is kept in {self.out_dir}" if self.last_checkpoint is not None else "no checkpoint was written"
        raise ValueError(f"{what}; training stopped, {where}")


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
            raise ValueError(f"{out_dir / CHECKPOINT} has a corrupt state record; the checkpoint cannot be resumed") from None
    state = read_json(out_dir / STATE)
    if meta.get("step") != str(state.get("step")):
        raise ValueError(f"checkpoint in {out_dir} is inconsistent: tensors at step {meta.get('step')}, JSON at step {state.get('step')}")
    return tensors, state


def load_sae(out_dir: str | Path) -> SparseAutoencoder:
    """The SAE stored in a training folder (checkpoint.safetensors + checkpoint.json), in eval mode."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"SAE folder {out_dir} does not exist")
    tensors, state = read_checkpoint(out_dir)
    try:
        cfg = SAEConfig(**state["sae"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"{out_dir / CHECKPOINT} is not a polylens SAE checkpoint ({err})") from None
    sae = SparseAutoencoder(cfg)
    try:
        sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
    except RuntimeError as err:
        raise ValueError(f"checkpoint weights in {out_dir} do not fit its config: {str(err).splitlines()[0]}") from None
    return sae.eval()


def train(sae_config: SAEConfig, config: TrainConfig, data, out_dir=None) -> TrainResult:
    """One call: build a Trainer and fit."""
    return Trainer(sae_config, config, data, out_dir).fit()


__all__ = ["TrainConfig", "TrainResult", "Trainer", "load_sae", "train"]
