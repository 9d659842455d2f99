"""The single-SAE estimator, in scikit-learn's contract: ``Trainer(sae_config, config, out_dir)``
stores, ``fit(data)`` trains and returns self, the learned state is in ``sae_`` (the trained
``SparseAutoencoder``), ``history_`` and ``steps_``.

Training is ``sae.engine.Engine``'s, the one loop sweeps use too: a single SAE is an ensemble of
one. ``Trainer.resume(out_dir)`` continues a stopped run and ends with the same weights as an
uninterrupted one (bitwise on CPU).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from sae.config import SAEConfig, TrainConfig
from sae.distributed import context
from sae.engine import (
    Engine,
    check_resources,
    check_same_store,
    data_scale,
    init_matrix,
    init_sample,
    initial_sae,
    read_checkpoint,
    store_identity,
)
from sae.ensemble import Ensemble
from sae.files import CHECKPOINT
from sae.model import SparseAutoencoder
from sae.sources import BatchSource


class Trainer:
    """Train ``SparseAutoencoder(sae_config)`` with ``config``; checkpoints in ``out_dir`` if given.

    ``fit(data)``: data is a tensor, an array, a ``.npy``/``.safetensors`` path, a synthetic stream,
    a list of batches or a re-iterable (``sae.sources``); returns self with ``sae_``, ``history_``,
    ``steps_``. ``build(data)`` gives the engine without training it (to inspect or drive it).
    """

    def __init__(
        self,
        sae_config: SAEConfig,
        config: TrainConfig,
        out_dir: str | Path | None = None,
        eval_samples: int = 0,
        *,
        objective=None,
        start: SparseAutoencoder | None = None,
    ):
        self.sae_config, self.config = sae_config, config
        self.out_dir = out_dir
        self.eval_samples = eval_samples
        self.objective = objective
        """End-to-end training's model objective (``Engine``), for ``config.loss`` 'kl' / 'e2e+ds'."""
        self.start = start
        """An SAE to start from instead of a fresh initialisation (fine-tuning; its config is ours)."""
        self._checkpoint: tuple[dict, dict] | None = None

    @classmethod
    def resume(
        cls, out_dir: str | Path, n_samples: int | None = None, progress: bool | None = None, objective=None
    ) -> Trainer:
        """The trainer of the run in ``out_dir`` (optionally to a larger ``n_samples``); ``fit(data)``
        continues it from its checkpoint (an end-to-end run with its ``objective`` rebuilt)."""
        tensors, state = read_checkpoint(out_dir)
        try:
            sae_cfg = SAEConfig(**state["sae"])
            train = dict(state["train"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"{Path(out_dir) / CHECKPOINT} is not a polylens SAE checkpoint ({err})") from None
        if n_samples is not None:
            train["n_samples"] = n_samples
        if progress is not None:
            train["progress"] = progress
        self = cls(sae_cfg, TrainConfig(**train), out_dir, objective=objective)
        self._checkpoint = (tensors, state)
        return self

    def build(self, data) -> Engine:
        """The engine for ``data``: one ensemble of one, initialised (or restored from the checkpoint)."""
        check_resources(self.sae_config, self.config, eval_samples=self.eval_samples)
        ctx = context(self.config.device)
        source = BatchSource(data, self.config.batch_size, self.config.seed, self.config.device, ctx.rank, ctx.world)
        if source.d is not None and source.d != self.sae_config.data_width:
            rows = (
                ""
                if self.sae_config.data_width == self.sae_config.d_in
                else f" (a g-SAE's rows are [x, J rows], {self.sae_config.data_width} wide)"
            )
            raise ValueError(f"data dimension {source.d} does not match the SAE's d_in={self.sae_config.d_in}{rows}")
        if self._checkpoint is None and self.start is None and not self.sae_config.scale_free:
            sample = init_sample(self.sae_config, self.config, source)
            self.sae_config = self.sae_config.resolve_scale(data_scale(self.sae_config, sample))
        if self._checkpoint is None and self.start is not None:
            if self.start.config != self.sae_config:
                raise ValueError("the SAE to start from has another configuration than the run's")
            sae = SparseAutoencoder(self.sae_config).to(self.config.device)
            sae.load_state_dict(self.start.state_dict())
        elif self._checkpoint is None:
            sae = initial_sae(
                self.sae_config,
                self.config,
                init_sample(self.sae_config, self.config, source),
                init_matrix(self.sae_config, source),
            )
        else:
            sae = SparseAutoencoder(self.sae_config).to(self.config.device)  # weights come from the checkpoint
        record = {"sae": asdict(self.sae_config), "store": store_identity(source)}
        engine = Engine(
            [Ensemble([sae])], self.config, source, self.out_dir, record=record, ctx=ctx, objective=self.objective
        )
        if self._checkpoint is not None:
            check_same_store(self._checkpoint[1], record["store"], self.out_dir)
            engine.restore(*self._checkpoint)
        return engine

    def fit(self, data) -> Trainer:
        engine = self.build(data).fit()
        self.sae_ = engine.groups[0].members()[0]
        self.history_, self.steps_ = engine.history, engine.step
        return self


def load_sae(out_dir: str | Path) -> SparseAutoencoder:
    """The SAE stored in a training folder (checkpoint.safetensors + checkpoint.json), in eval mode."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(
            f"SAE folder {out_dir} {'is a file, not a run folder' if out_dir.exists() else 'does not exist'}"
        )
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


def train(sae_config: SAEConfig, config: TrainConfig, data, out_dir=None) -> Trainer:
    """One call: ``Trainer(sae_config, config, out_dir).fit(data)`` (the SAE is its ``sae_``)."""
    return Trainer(sae_config, config, out_dir).fit(data)


__all__ = ["TrainConfig", "Trainer", "load_sae", "train"]
