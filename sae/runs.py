"""A training run in a folder: data by name or path, checkpoint, SAELens export, evaluation.

Folder layout (``out_dir``)::

    checkpoint.safetensors, checkpoint.json   the trainer's state (``resume=True`` continues from it)
    saelens/                                  the SAE in SAELens format (cfg.json + sae_weights.safetensors)
    run.json                                  data spec, configs and the final evaluation

These are the Python equivalents of ``polylens sae train`` and ``polylens sae eval``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from sae.config import SAEConfig, TrainConfig
from sae.engine import read_checkpoint
from sae.files import CHECKPOINT, STATE, read_json, write_json_atomic
from sae.metrics import best_signed_cosines, evaluate
from sae.sources import SEED_STRIDE
from sae.synthetic import make_data
from sae.train import Trainer, load_sae

RUN = "run.json"
EXPORT = "saelens"
RUN_FILES = (CHECKPOINT, STATE, RUN, EXPORT, "sweep.json", "sweep.png", "sweep.safetensors")  # what --force clears
EVAL_SALT = 7_777_777  # evaluation samples come from a stream the training never draws from


def eval_batch(data, n_samples: int, seed: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Evaluation ``(x, truth, codes)``: fresh synthetic samples from a stream training never
    draws (with ground truth), or the first ``n_samples`` rows of an array (no ground truth; rows
    the SAE was trained on, so in-sample: hold out rows yourself for a clean estimate) or of an
    activation store (the same)."""
    if isinstance(data, Tensor):
        return data[:n_samples].float(), None, None
    if hasattr(data, "read"):  # an activation store: its first rows, in-sample as for arrays
        return data.read(0, min(n_samples, data.rows)), None, None
    g = torch.Generator(device=data.device).manual_seed(seed * SEED_STRIDE + EVAL_SALT)
    codes = data.sample_codes(n_samples, g)
    return codes @ data.features, data.features, codes


def _dim(source) -> int:
    return source.shape[1] if isinstance(source, Tensor) else source.d


def paired(source, spec):
    """A transcoder's data: the activation store ``source`` read as rows ``[x, y]`` (its paired site's
    rows after each row's own). Anything else is refused in one line."""
    if not hasattr(source, "with_pairs"):
        raise ValueError(
            f"a transcoder trains on an activation store with paired rows, and data={spec} is not a store; "
            "write one with polylens cache --layer IN --pair-layer OUT"
        )
    return source.with_pairs()


@contextmanager
def run_lock(out: Path, *, clear: bool = False) -> Iterator[None]:
    """Hold ``out``'s lock for a run: a second run into the same folder is refused at once (not
    left to overwrite this one). clear: remove the previous run's files first (``--force``), so a
    new run that fails never leaves the old checkpoint or export beside its own record."""
    import fcntl

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_RDONLY)  # the folder itself is locked: no lock file is left behind
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(
            f"another run is writing {out} now (it holds the folder's lock); wait for it to end or give another --out"
        ) from None
    try:
        if clear:
            for name in RUN_FILES:
                path = out / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        yield
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()  # a run that failed before writing anything leaves nothing
        raise
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def main_lock(out: Path, ctx, *, clear: bool = False) -> Iterator[None]:
    """``run_lock`` on rank 0 of a data-parallel run (which alone writes the folder); the other
    ranks wait for it to hold the lock, so none of them starts before a refusal, and at the end
    for it to finish writing, so that all ranks leave the process group together (a rank that
    exits while another still works can abort in gloo's teardown)."""
    if ctx.world == 1:
        with run_lock(out, clear=clear):
            yield
        return
    if ctx.main:
        with run_lock(out, clear=clear):
            ctx.barrier()
            yield
        ctx.barrier()
    else:
        ctx.barrier()
        yield
        ctx.barrier()


def check_run_folder(out: Path, resume: bool, force: bool, *, can_resume: bool = True) -> None:
    """Refuse, before any work, a run folder this run cannot use: a file, nothing to resume, another
    run's files (without ``force``), a folder this process cannot write, a checkpoint it cannot read."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} is a file; give a folder")
    if resume:
        check_readable(out / CHECKPOINT, "checkpoint")
        if not (out / CHECKPOINT).is_file():
            raise FileNotFoundError(f"nothing to resume: {out / CHECKPOINT} does not exist")
        check_writable(out, "run folder")
        return
    if out.is_dir() and any(out.iterdir()) and not force:
        # a run that stopped before its first step left a record but no checkpoint: nothing to resume
        hint = " or --resume to continue its run" if can_resume and (out / CHECKPOINT).is_file() else ""
        raise FileExistsError(f"output folder {out} is not empty; pass --force to overwrite it{hint}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"folder {parent} does not exist; create it first")
    check_writable(out if out.is_dir() else parent, "run folder" if out.is_dir() else "folder")


def check_writable(folder: Path, what: str = "folder") -> None:
    """A folder this process cannot write (or enter) is refused in one line before any work."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{what} {folder} is not writable by this user (permission denied); "
            "give a folder you can write, or change its permissions"
        )


def check_readable(path: Path, what: str) -> None:
    """A file (or the folder holding it) this process cannot read says so, not "does not exist"."""
    folder = path.parent
    if folder.is_dir() and not os.access(folder, os.R_OK | os.X_OK):
        raise PermissionError(f"cannot read the {what} in {folder}: permission denied on the folder")
    if path.is_file() and not os.access(path, os.R_OK):
        raise PermissionError(f"cannot read the {what} {path}: permission denied; change its permissions")


def checkpoint_state(out: Path) -> dict:
    """The state of the checkpoint in ``out``, its sections checked: the SAE's config (``sae``), the
    training's (``train``) and the step. A checkpoint without them is refused in one line."""
    check_readable(out / CHECKPOINT, "checkpoint")
    _, state = read_checkpoint(out)
    if not isinstance(state, dict):
        raise ValueError(f"the checkpoint in {out} holds no state record; it cannot be resumed or evaluated")
    missing = [k for k in ("sae", "train") if not isinstance(state.get(k), dict)]
    if missing or not isinstance(state.get("step"), int) or isinstance(state.get("step"), bool):
        what = " and ".join(f"its {k!r} section" for k in missing) or "its step"
        raise ValueError(
            f"the checkpoint in {out} lacks {what}; it is damaged or not a polylens SAE checkpoint "
            "(start a new run in another folder)"
        )
    return state


SYNTHETIC_NAMES = ("sharkey", "tms")  # data named, not read from a path: the name and options are its identity


def data_identity(spec, source=None) -> dict | None:
    """What data ``spec`` is by content, recorded with a run so that it resumes on the same data
    wherever it now lies: an activation store by its manifest (model, layer, width, dtype, rows and
    the digest of its shards' SHA-256s, which the store checks on reading), a file by its size and
    SHA-256. None for named synthetic data (the name and options say it all) or anything else."""
    import hashlib

    if not isinstance(spec, (str, Path)) or str(spec) in SYNTHETIC_NAMES:
        return None
    p = Path(spec)
    manifest = getattr(source, "manifest", None)
    if manifest is None and p.is_dir():
        from sae.activation_store import ActivationStore, is_store

        manifest = ActivationStore(p).manifest if is_store(p) else None
    if isinstance(manifest, dict):
        shards = hashlib.sha256("".join(s["sha256"] for s in manifest["shards"]).encode()).hexdigest()
        fields = {k: manifest.get(k) for k in ("model", "layer", "width", "dtype", "rows", "gradients")}
        if manifest.get("pairs"):  # (absent otherwise: a run recorded before stores held pairs resumes)
            fields["pairs"] = manifest["pairs"]
        return {"kind": "activation store", **fields, "shards_sha256": shards}
    if p.is_file():
        digest = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        return {"kind": "file", "bytes": p.stat().st_size, "sha256": digest.hexdigest()}
    return None


def check_init_matrix(sae_config: SAEConfig, source) -> None:
    """An ``init_matrix`` file whose matrix holds NaN or inf is refused in one line naming it."""
    if sae_config.init != "svd" or not sae_config.init_matrix:
        return
    from sae.engine import init_matrix

    W = init_matrix(sae_config, source)
    bad = int((~torch.isfinite(W)).sum()) if torch.is_floating_point(W) else 0
    if bad:
        raise ValueError(
            f"init_matrix={sae_config.init_matrix} holds {bad} NaN or inf entries of {W.numel()}; "
            "the 'svd' init needs a finite weight matrix"
        )


def check_data_file(spec) -> None:
    """A data file named ``.npy`` that is a zip archive (an ``.npz``, or a ``torch.save`` file
    renamed), which NumPy would open as a dict of arrays, is refused in one line naming it."""
    if not isinstance(spec, (str, Path)) or Path(spec).suffix != ".npy" or not Path(spec).is_file():
        return
    with open(spec, "rb") as fh:
        if fh.read(4) == b"PK\x03\x04":
            raise ValueError(
                f"data={spec} is a zip archive (an .npz or a torch.save file), not a .npy array; "
                "save the array itself with numpy.save"
            )


def _describe(identity: dict) -> str:
    if identity.get("kind") == "activation store":
        return (
            f"the activation store of {identity['model']} {identity['layer']} "
            f"({identity['rows']:,} rows, shards {identity['shards_sha256'][:12]})"
        )
    return f"a file of {identity['bytes']:,} bytes (sha256 {identity['sha256'][:12]})"


def check_same_data(out: Path, recorded: dict, spec, source) -> dict | None:
    """The identity of ``spec`` (opened as ``source``), refused where it is not the data the run
    in ``out`` recorded: a run resumes by what its data is, not by where it lies or how it is spelled."""
    ours = data_identity(spec, source)
    theirs = recorded.get("identity")
    if theirs is None and recorded.get("spec") is not None and str(recorded["spec"]) != str(spec):
        if str(recorded["spec"]) in SYNTHETIC_NAMES or str(spec) in SYNTHETIC_NAMES or ours is None:
            raise ValueError(
                f"data={spec} is not the data the run in {out} trained on ({recorded['spec']}); "
                "resume it on its own data, or start a new run with another folder"
            )
        old = Path(recorded["spec"])
        if not old.exists():
            raise ValueError(
                f"the run in {out} recorded its data only by path ({old}, now gone), so data={spec} cannot "
                "be checked to be the same; move the data back there, or start a new run"
            )
        theirs = data_identity(old)
    if theirs is not None and ours != theirs:
        now = "not a file or store" if ours is None else _describe(ours)
        raise ValueError(
            f"data={spec} is {now}, but the run in {out} trained on {_describe(theirs)}; "
            "resume it on the data it was trained on"
        )
    return ours


def train_run(
    out_dir: str | Path,
    data: str = "sharkey",
    sae_config: SAEConfig | dict | None = None,
    train_config: TrainConfig | None = None,
    data_options: dict | None = None,
    eval_samples: int = 20_000,
    force: bool = False,
    *,
    open_data=None,
    open_objective=None,
    start: str | Path | None = None,
) -> dict:
    """Train a new run in ``out_dir``, export it for SAELens, evaluate it; returns run.json's content.

    ``data``: ``'sharkey'``, a ``.npy``/``.safetensors`` path or an activation store; ``data_options``:
    fields of the synthetic data's config. ``open_data(spec, seed=..., **options)`` opens ``data``
    (default ``sae.synthetic.make_data``; the CLI's also opens ``'tms'``); the run records the spec
    and options, and resuming or evaluating it opens them the same way. ``sae_config`` as a dict:
    SAEConfig fields, with ``d_in`` taken from the data and ``dict_size`` defaulting to twice the
    true feature count (synthetic data) or 2·d_in (a file). ``force`` empties nothing: files of the
    same names are replaced, others stay.

    End-to-end training (``train_config.loss`` 'kl' / 'e2e+ds'): ``open_objective(store, train_config,
    sae_config)`` builds the objective that runs the model the activation store ``data`` names
    (``sae.engine.Engine``; the CLI's is ``cli.experiments.e2e.open_objective``). ``start``: a run
    folder (or SAELens folder) whose SAE this run starts from and whose configuration it takes
    (fine-tuning), in place of a fresh initialisation.
    """
    out = Path(out_dir)
    check_run_folder(out, resume=False, force=force)
    train_config = train_config or TrainConfig()
    started = None
    if start is not None:
        started, _ = load_run_sae(start)
        sae_config = started.config
    data_options = dict(data_options or {})
    check_data_file(data)
    source = (open_data or make_data)(data, seed=train_config.seed, **data_options)
    if sae_config is None or isinstance(sae_config, dict):
        fields = dict(sae_config or {})
        d = _dim(source)
        n_true = source.features.shape[0] if hasattr(source, "features") else d
        if fields.pop("transcoder", False):  # d_in and d_out from the store's two sites
            source = paired(source, data)
            fields.setdefault("d_out", source.pair_width)
        sae_config = SAEConfig(**{"d_in": d, "dict_size": 2 * n_true, **fields})
    elif sae_config.transcoder:
        source = paired(source, data)
    check_init_matrix(sae_config, source)
    objective = _objective(open_objective, source, data, train_config, sae_config)
    trainer = Trainer(sae_config, train_config, out, eval_samples=eval_samples, objective=objective, start=started)
    engine = trainer.build(source)  # checks sizes, data and init before the folder is touched
    record = {"spec": data, "options": data_options, "identity": data_identity(data, source)}
    if start is not None:
        record["start"] = str(Path(start).resolve())
    with main_lock(out, engine.ctx, clear=force):
        return _fit_export_evaluate(trainer, engine, out, record, source, eval_samples)


def _objective(open_objective, source, spec, train_config: TrainConfig, sae_config: SAEConfig):
    """End-to-end training's objective (None for the reconstruction loss), refused in one line where
    the data names no model or nothing can build it."""
    if train_config.loss == "mse":
        return None
    if not hasattr(source, "manifest"):
        raise ValueError(
            f"--loss {train_config.loss} trains against the model an activation store names (its manifest); "
            f"data={spec} is not a store: write one with polylens cache"
        )
    if sae_config.transcoder:
        raise ValueError(f"--loss {train_config.loss} splices an SAE into its layer; transcoders train on mse only")
    if open_objective is None:
        raise ValueError(f"--loss {train_config.loss} needs open_objective= (a model to run); the CLI passes its own")
    return open_objective(source, train_config, sae_config)


def resume_run(
    out_dir: str | Path,
    n_samples: int | None = None,
    data: str | None = None,
    data_options: dict | None = None,
    eval_samples: int = 20_000,
    progress: bool | None = None,
    *,
    open_data=None,
    open_objective=None,
) -> dict:
    """Continue the run in ``out_dir`` (to ``n_samples`` in total, default its own) on the data it
    recorded (or ``data``): the same weights as one uninterrupted run. Returns run.json's content.
    ``open_data`` as for ``train_run``."""
    out = Path(out_dir)
    check_run_folder(out, resume=True, force=False)
    state = checkpoint_state(out)
    run = read_json(out / RUN) if (out / RUN).is_file() else {}
    recorded = run.get("data", {}) if isinstance(run, dict) else {}
    if data is None:
        data, data_options = recorded.get("spec"), recorded.get("options", {})
        if data is None:
            raise ValueError(f"{out} does not record its data; pass the data again")
        if recorded.get("identity") is not None and not Path(data).exists():  # a file or store, moved
            raise FileNotFoundError(
                f"the data the run in {out} trained on, {data}, is not there any more; if it moved, pass "
                "data=NEW_PATH (it is checked to be the same data)"
            )
    data_options = dict(data_options or {})
    check_data_file(data)
    source = (open_data or make_data)(data, seed=state["train"]["seed"], **data_options)
    identity = check_same_data(out, recorded, data, source)
    if state["sae"].get("d_out"):
        source = paired(source, data)
    trainer = Trainer.resume(out, n_samples=n_samples, progress=progress)
    trainer.objective = _objective(open_objective, source, data, trainer.config, trainer.sae_config)
    engine = trainer.build(source)
    record = {"spec": data, "options": data_options, "identity": identity}
    if recorded.get("start"):
        record["start"] = recorded["start"]
    with main_lock(out, engine.ctx):
        return _fit_export_evaluate(trainer, engine, out, record, source, eval_samples)


def _fit_export_evaluate(trainer: Trainer, engine, out: Path, data: dict, source, eval_samples: int) -> dict:
    from sae.export import SAELENS_TRANSCODERS, export_saelens

    record = {"data": data, "sae": asdict(trainer.sae_config), "train": asdict(trainer.config)}
    if not engine.ctx.main:  # rank 0 records, exports and evaluates
        engine.fit()
        return {**record, "steps": engine.step, "rank": engine.ctx.rank}
    write_json_atomic(record, out / RUN)  # names the data before training, so a stopped run can resume
    engine.fit()
    sae = engine.groups[0].members()[0]
    c = sae.config
    if c.transcoder and c.arch not in SAELENS_TRANSCODERS:  # the checkpoint holds it; SAELens has no class for it
        record["export"] = f"none: SAELens has no {c.arch} transcoder"
    else:
        export_saelens(sae, out / EXPORT, overwrite=True)
    x, truth, codes = eval_batch(source, eval_samples, trainer.config.seed)
    record.update(
        steps=engine.step,
        eval_samples=eval_samples,
        evaluation=evaluate(sae, x, truth, codes)._asdict(),
        synthsaebench=_synth_bench(sae, x, truth, codes),
        best_signed_cos=None if truth is None else best_signed_cosines(truth, sae.decoder),
        history_tail=engine.history[-5:],
    )
    write_json_atomic(record, out / RUN)
    return record


def load_run_sae(out_dir: str | Path):
    """``(sae, run record)`` from a training folder (its checkpoint) or a SAELens folder (cfg.json;
    the record is then empty)."""
    out = Path(out_dir)
    if not out.is_dir():
        raise FileNotFoundError(
            f"SAE folder {out} {'is a file, not a run folder' if out.exists() else 'does not exist'}"
        )
    run = read_json(out / RUN) if (out / RUN).is_file() else {}
    check_readable(out / CHECKPOINT, "checkpoint")
    if (out / CHECKPOINT).is_file():
        return load_sae(out), run
    if (out / "cfg.json").is_file():
        from sae.export import import_saelens

        return import_saelens(out), run
    raise ValueError(f"{out} holds neither a polylens checkpoint ({CHECKPOINT}) nor a SAELens export (cfg.json)")


def eval_run(
    out_dir: str | Path,
    data: str | None = None,
    data_options: dict | None = None,
    eval_samples: int | None = None,
    seed: int | None = None,
    *,
    open_data=None,
) -> dict:
    """Evaluate the SAE in ``out_dir`` (a training folder, or a SAELens folder with cfg.json) on
    ``data`` (default: the data its run recorded), with ground-truth metrics for synthetic data.
    ``eval_samples`` and ``seed`` default to the run's (else 20,000 and 0): then the numbers are
    the ones ``train_run`` reported. ``open_data`` as for ``train_run``."""
    out = Path(out_dir)
    sae, run = load_run_sae(out)
    if data is None:
        recorded = run.get("data", {})
        data, data_options = recorded.get("spec"), recorded.get("options", {})
        if data is None:
            raise ValueError(f"{out} does not record its data; give data= (sharkey, tms or a .npy/.safetensors file)")
    seed = run.get("train", {}).get("seed", 0) if seed is None else seed
    eval_samples = eval_samples or run.get("eval_samples", 20_000)
    check_data_file(data)
    source = (open_data or make_data)(data, seed=seed, **(data_options or {}))
    if sae.config.transcoder:
        source = paired(source, data)
    d = _dim(source)
    if d != sae.config.data_width:
        what = f"d_in + d_out = {sae.config.data_width}" if sae.config.transcoder else f"d_in={sae.config.d_in}"
        raise ValueError(f"data dimension {d} does not match the SAE's {what}")
    x, truth, codes = eval_batch(source, eval_samples, seed)
    return {
        "sae": asdict(sae.config),
        "data": {"spec": data, "options": data_options or {}},
        "evaluation": evaluate(sae, x, truth, codes)._asdict(),
        "synthsaebench": _synth_bench(sae, x, truth, codes),
        "best_signed_cos": None if truth is None else best_signed_cosines(truth, sae.decoder),
    }  # per feature: the distribution behind mmcs_signed


def _synth_bench(sae, x, truth, codes) -> dict | None:
    """SynthSAEBench's metrics as SAELens computes them, where the data has ground truth."""
    from sae.metrics import synth_bench

    return None if truth is None or codes is None else synth_bench(sae, x, truth, codes)._asdict()


__all__ = ["EXPORT", "RUN", "run_lock", "eval_batch", "eval_run", "load_run_sae", "resume_run", "train_run"]
