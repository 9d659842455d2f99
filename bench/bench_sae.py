"""Our SAE trainer vs SAELens on Sharkey et al. toy data: throughput, samples to recover the features, sweeps.

(i)   Throughput: a standard ReLU+L1 SAE (d=256, 512 latents, batch 4096, fp32, CPU), our
      ``sae.train.Trainer`` vs SAELens's ``SAETrainer`` + ``StandardTrainingSAE``, each fed the same
      pre-generated Sharkey batches (generated once, outside the timing). Each library runs with its
      own default hyper-parameters; the timed region is ``fit()`` alone. Interleaved, median of
      --repeats after one warm-up each. Goal: ours >= 1.6x SAELens's samples/s.
(ii)  Samples to MMCS(ground truth -> decoder rows) >= 0.99 on default Sharkey data (512 features in
      256 dims) with 1024 latents (--recovery-dict-size): our default SAEConfig/TrainConfig (l1 0.1,
      lr 1e-3, warm-up 100) vs SAELens's defaults
      (StandardTrainingSAEConfig: l1_coefficient 1, decoder rows at norm 0.1; SAETrainerConfig: lr 3e-4).
      Both at batch 256 (the Sharkey replication's; --recovery-batch), on the same batches (a pool
      generated once, cycled). MMCS is checked every --eval-every steps, so a count is exact to that
      resolution; a run ends at the target, after --patience checks without progress, or at
      --budget-samples, and says which. --ours-l1/--saelens-l1 try other L1 coefficients.
(iii) Sweep: an ensemble of 16 SAEs in one pass (``sae.sweep``) vs the same 16 trained one after
      another, on the stream and on one pre-generated array, --sweep-steps each (default 200: past
      the first ~75 steps, in which every member is dense whatever its L1). Goal: >= 3x.
(iv)  SAELens on its own ground: data from ``sae_lens.synthetic`` (a FeatureDictionary and an
      ActivationGenerator with Zipfian firing) on two configurations (``SUITE``; one with 8
      features a dimension), our SAE trained from it (as a stream, its defaults; for TopK also two
      variants) and theirs (``train_toy_sae`` with its defaults) at the same sample budget,
      dictionary and architecture (``--suite-archs``: relu = their Standard, topk, batchtopk,
      jumprelu, gated, matryoshka), both scored by their ``eval_sae_on_synthetic_data``: MCC,
      uniqueness, dead latents, classification F1, explained variance, shrinkage.

(v)   TopK throughput at d 384 and 768 (--topk-dims), 16,384 latents, k 32, fp32, batch 1024:
      our engine (a sparse decode of the k active latents and their gradients) vs SAELens's
      ``TopKTrainingSAE`` under its ``SAETrainer`` (which decodes densely), same pre-generated
      Gaussian batches, timed as in (i). Goal: ours >= 2x.

SAELens is fed without a language model: ``SAETrainer(cfg, sae, data_provider)`` takes any iterator of
``[batch, d_in]`` tensors (this is what ``sae_lens.synthetic.train_toy_sae`` does); wandb, evals and
checkpoints are off. Run: .venv/bin/python bench/bench_sae.py [--threads 2] [--help for sizes].
On a 2-core machine shared with other jobs, 1 thread ran 4x faster than 2 (spin-waiting threads;
126 vs 500 ms per batch-4096 step, measured at load average 7): compare --threads 1 before quoting.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")  # SAETrainer.fit always opens a progress bar

import torch  # noqa: E402

from sae.kernels import SPARSE_MAX_DENSITY  # noqa: E402
from sae.metrics import mmcs_signed  # noqa: E402
from sae.model import SAEConfig  # noqa: E402
from sae.synthetic import SharkeyConfig, SharkeyData  # noqa: E402
from sae.train import TrainConfig, Trainer  # noqa: E402

SAELENS_LR = 3e-4  # SAETrainerConfig's default lr; lr_end must be given explicitly (train_toy_sae does the same)


def sharkey_batches(data: SharkeyData, n_batches: int, batch: int, seed: int = 0) -> list[torch.Tensor]:
    return [data.sample(batch, torch.Generator().manual_seed(seed * 1_000_003 + i)) for i in range(n_batches)]


# ---- the two trainers, built outside any timed region -------------------------------------------
def ours(d: int, n: int, batch: int, n_samples: int, data, **fields):
    """Our engine for one SAE (``fields``: SAEConfig's, e.g. arch, k, l1), built (initialised) but not trained."""
    return Trainer(SAEConfig(d_in=d, dict_size=n, **fields), TrainConfig(n_samples=n_samples, batch_size=batch)).build(
        data
    )


def saelens_trainer(sae, batch: int, n_samples: int, data):
    """SAELens's ``SAETrainer`` for ``sae`` on the batches ``data`` (lr and lr_end its default; wandb,
    evals and checkpoints off)."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    cfg = SAETrainerConfig(
        total_training_samples=n_samples,
        train_batch_size_samples=batch,
        lr=SAELENS_LR,
        lr_end=SAELENS_LR,
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
    )
    return SAETrainer(cfg=cfg, sae=sae, data_provider=iter(data))


def saelens(d: int, n: int, batch: int, n_samples: int, data):
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig

    torch.manual_seed(0)  # SAELens initialises from the global generator
    return saelens_trainer(StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=n)), batch, n_samples, data)


def timed_fit(trainer) -> float:
    start = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - start


# ---- (i) throughput -----------------------------------------------------------------------------
def bench_throughput(args, data: SharkeyData) -> None:
    d, n, b, steps = data.d, args.dict_size, args.batch, args.steps
    t0 = time.perf_counter()
    batches = sharkey_batches(data, steps, b, seed=1)
    print(
        f"(i) throughput: relu+L1, d={d}, {n} latents, batch {b}, fp32, {steps} steps per run, "
        f"median of {args.repeats} (batches generated once in {time.perf_counter() - t0:.1f} s, not timed)"
    )
    warm = batches[:2]
    timed_fit(ours(d, n, b, 2 * b, list(warm)))
    timed_fit(saelens(d, n, b, 2 * b, warm))
    runs: dict[str, list[float]] = {"ours": [], "saelens": []}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both alike
        runs["ours"].append(timed_fit(ours(d, n, b, steps * b, list(batches))))
        runs["saelens"].append(timed_fit(saelens(d, n, b, steps * b, batches)))
    rate = {k: steps * b / statistics.median(v) for k, v in runs.items()}
    for k, v in runs.items():
        print(
            f"    {k:<8} {rate[k]:>10,.0f} samples/s   ({statistics.median(v) / steps * 1e3:.0f} ms/step; "
            f"runs {', '.join(f'{t:.2f}' for t in v)} s)"
        )
    print(f"    ratio ours/SAELens: {rate['ours'] / rate['saelens']:.2f}x   (goal >= 1.6x)")


def bench_topk_throughput(args, data: SharkeyData) -> None:
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig

    n, k, b, steps = args.topk_latents, args.topk_k, args.topk_batch, args.steps
    print(
        f"\n(v) TopK throughput: {n} latents, k {k}, batch {b}, fp32, {steps} steps per run, median of {args.repeats}"
    )
    for d in (int(v) for v in args.topk_dims.split(",")):
        g = torch.Generator().manual_seed(d)
        batches = [torch.randn(b, d, generator=g) for _ in range(steps)]

        def ours_topk(n_samples, data):
            return ours(d, n, b, n_samples, list(data), arch="topk", k=k)

        def saelens_topk(n_samples, data):
            torch.manual_seed(0)  # SAELens initialises from the global generator
            return saelens_trainer(TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=n, k=k)), b, n_samples, data)

        timed_fit(ours_topk(2 * b, batches[:2]))
        timed_fit(saelens_topk(2 * b, batches[:2]))
        runs: dict[str, list[float]] = {"ours": [], "saelens": []}
        for _ in range(args.repeats):
            runs["ours"].append(timed_fit(ours_topk(steps * b, batches)))
            runs["saelens"].append(timed_fit(saelens_topk(steps * b, batches)))
        rate = {key: steps * b / statistics.median(v) for key, v in runs.items()}
        print(
            f"    d={d}: ours {rate['ours']:,.0f} samples/s, SAELens {rate['saelens']:,.0f} samples/s; "
            f"ratio {rate['ours'] / rate['saelens']:.2f}x (goal >= 2x)"
        )


# ---- (ii) samples to recover the ground truth ---------------------------------------------------
class Stop(Exception):
    """Raised from the data stream to end a run: the target was reached, or MMCS stopped improving."""


class Watched:
    """Cycles through ``batches``; before handing out batch i (i steps done), every ``every`` steps it
    scores ``decoder()`` against ``truth`` and raises ``Stop`` at ``target`` or after ``patience``
    checks without a gain of ``min_delta`` (both trainers pull batches from an iterator, so this
    ends either run without touching its internals)."""

    def __init__(self, batches, truth, every: int, target: float, patience: int, min_delta: float):
        self.batches, self.truth, self.every = batches, truth, every
        self.target, self.patience, self.min_delta = target, patience, min_delta
        self.decoder = None
        self.trace: list[tuple[int, float]] = []

    def score(self, step: int) -> float:
        s = mmcs_signed(self.truth, self.decoder().detach())
        self.trace.append((step, s))
        return s

    def plateaued(self) -> bool:
        if len(self.trace) <= self.patience:
            return False
        before = max(m for _, m in self.trace[: -self.patience])
        return max(m for _, m in self.trace[-self.patience :]) < before + self.min_delta

    def __iter__(self):
        for i in itertools.count():
            if i and i % self.every == 0:
                if self.score(i) >= self.target:
                    raise Stop(i, "reached")
                if self.patience and self.plateaued():
                    raise Stop(i, "plateau")
            yield self.batches[i % len(self.batches)]


def bench_recovery(args, data: SharkeyData) -> None:
    d, n, b = data.d, args.recovery_dict_size, args.recovery_batch
    t0 = time.perf_counter()
    pool = torch.cat(sharkey_batches(data, -(-args.pool_samples // 4096), 4096, seed=2))[: args.pool_samples]
    batches = list(pool.split(b))[: args.pool_samples // b]
    held_out = data.sample(8192, torch.Generator().manual_seed(99))
    budget = args.budget_samples // b * b
    print(
        f"\n(ii) samples to MMCS >= {args.target} on default Sharkey data ({data.config.n_features} features, d={d}); "
        f"{n} latents, batch {b} for both, each library's default SAE/optimiser settings unless overridden; "
        f"MMCS every {args.eval_every} steps ({args.eval_every * b:,} samples); budget {budget:,} samples; "
        f"stop after {args.patience} checks without a gain of {args.min_delta}; pool of {len(batches) * b:,} samples "
        f"cycled (generated in {time.perf_counter() - t0:.1f} s)"
    )
    for name, build, l1 in (("ours", ours, args.ours_l1), ("saelens", saelens, args.saelens_l1)):
        watch = Watched(batches, data.features, args.eval_every, args.target, args.patience, args.min_delta)
        trainer = build(d, n, b, budget, watch, l1)
        watch.decoder = (
            (lambda g=trainer.groups[0]: g.decoders()[0]) if name == "ours" else (lambda s=trainer.sae: s.W_dec)
        )
        start = time.perf_counter()
        try:
            trainer.fit()
            steps, how = budget // b, "budget"
            if watch.score(steps) >= args.target:
                how = "reached"
        except Stop as stop:
            steps, how = stop.args
        except ValueError as err:  # the trainer stopped itself (e.g. a NaN loss): say so, go on
            steps, how = (watch.trace[-1][0] if watch.trace else 0), f"training failed ({err})"
        wall = time.perf_counter() - start
        sae = trainer.groups[0].members()[0] if name == "ours" else trainer.sae
        with torch.no_grad():
            sae.eval()
            fired = sae.encode(held_out) != 0  # [8192, n]
        stats = f"L0 {fired.float().sum(-1).mean():.1f}, dead {(~fired.any(0)).float().mean():.0%} on held-out data"
        if not all(bool(torch.isfinite(p).all()) for p in sae.parameters()):
            stats = "weights not finite"
        setting = f"l1={l1}" if l1 is not None else "defaults"
        if how == "reached":
            print(
                f"    {name:<8} ({setting}) reached MMCS {watch.trace[-1][1]:.4f} after {steps * b:,} samples "
                f"({steps} steps, {wall:.0f} s); {stats}"
            )
        elif how.startswith("training failed"):
            print(f"    {name:<8} ({setting}) NOT reached: {how} ({wall:.0f} s); {stats}")
        else:
            best = max(watch.trace, key=lambda t: t[1])
            why = {"plateau": "MMCS stopped improving", "budget": "budget spent"}.get(how, how)
            print(
                f"    {name:<8} ({setting}) NOT reached: {why} after {steps * b:,} samples ({wall:.0f} s); "
                f"best MMCS {best[1]:.4f} at {best[0] * b:,}; {stats}"
            )
        if not watch.trace:
            continue
        shown = sorted({*range(0, len(watch.trace), max(1, len(watch.trace) // 6)), len(watch.trace) - 1})
        print(
            "             MMCS by samples: "
            + ", ".join(f"{watch.trace[i][0] * b / 1e6:.2f}M {watch.trace[i][1]:.3f}" for i in shown)
        )


# ---- (iii) sweeps -------------------------------------------------------------------------------
def bench_sweep(args, data: SharkeyData) -> None:
    """16 L1 coefficients at one dictionary size: ``sae.sweep.sweep`` (one batched ensemble, one
    pass) vs 16 ``Trainer`` runs one after another, each timed from construction (initialisation
    included) to the end of ``fit``. Twice: on the Sharkey stream (each sequential run draws its own
    batches, as 16 separate jobs would; the ensemble draws each batch once) and on one pre-generated
    array (identical batches for all: training compute alone)."""
    from sae.sweep import sweep

    d, n, b, steps, E = data.d, args.dict_size, args.batch, args.sweep_steps, args.members
    l1s = [float(v) for v in torch.logspace(-2, 0, E)]
    config = TrainConfig(n_samples=steps * b, batch_size=b)
    t0 = time.perf_counter()
    pool = torch.cat(sharkey_batches(data, steps, b, seed=3))
    print(
        f"\n(iii) sweep: {E} relu SAEs (l1 {l1s[0]:g}..{l1s[-1]:g}), d={d}, {n} latents, batch {b}, {steps} steps each "
        f"(array of {pool.shape[0]:,} samples generated in {time.perf_counter() - t0:.1f} s)"
    )
    for label, source in (("Sharkey stream", data), ("pre-generated array", pool)):
        t0 = time.perf_counter()
        for l1 in l1s:
            Trainer(SAEConfig(d_in=d, dict_size=n, l1=l1), config).fit(source)
        seq = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = sweep(source, l1s, [n], {}, config)
        ens = time.perf_counter() - t0
        total = E * steps * b
        print(
            f"    {label:<20} sequential {seq:6.1f} s ({total / seq:>9,.0f} SAE-samples/s)   ensemble {ens:6.1f} s "
            f"({total / ens:>9,.0f})   ratio {seq / ens:.2f}x  (goal >= 3x)"
        )
    with torch.no_grad():  # which kernel path each member ended on (sae.kernels.SPARSE_MAX_DENSITY)
        density = [float((row[0].encode(pool[:4096]) != 0).float().mean()) for row in result.saes]
    print(
        f"    active share per member at the end (l1 ascending): {' '.join(f'{v:.3f}' for v in density)}; "
        f"{sum(v < SPARSE_MAX_DENSITY for v in density)} of {E} on the sparse path"
    )


# ---- (iv) SAELens's own synthetic suite ------------------------------------------------------------
SUITE = {
    # name: (features, dims, latents, k, firing: Zipfian max / min probability)
    "superposed": (1024, 128, 1024, 4, 0.3, 0.003),  # 8 features a dimension
    "moderate": (512, 128, 512, 4, 0.3, 0.01),  # 4 a dimension
}


class TheirStream:
    """SAELens's generator as one of our streams: ``sample(n, generator)`` seeds the global RNG their
    ``ActivationGenerator`` draws from with a number from ``generator``, so each of our steps gets
    a fixed batch of their data."""

    def __init__(self, feature_dict, activations):
        self.feature_dict, self.activations = feature_dict, activations
        self.d = feature_dict.feature_vectors.shape[1]
        self.features = feature_dict.feature_vectors.detach()

    @torch.no_grad()
    def sample(self, n, generator=None):
        if generator is not None:
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        return self.feature_dict(self.activations.sample(n))


def their_sae(arch: str, d: int, n: int, k: int):
    """SAELens's training SAE of ``arch`` with its own defaults (ours' prefixes for Matryoshka)."""
    import sae_lens as sl

    from sae.config import default_prefixes

    if arch == "relu":
        return sl.StandardTrainingSAE(sl.StandardTrainingSAEConfig(d_in=d, d_sae=n))
    if arch == "topk":
        return sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(d_in=d, d_sae=n, k=k))
    if arch == "batchtopk":
        from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d, d_sae=n, k=k))
    if arch == "jumprelu":
        return sl.JumpReLUTrainingSAE(sl.JumpReLUTrainingSAEConfig(d_in=d, d_sae=n))
    if arch == "gated":
        return sl.GatedTrainingSAE(sl.GatedTrainingSAEConfig(d_in=d, d_sae=n))
    if arch == "matryoshka":
        widths = list(default_prefixes(n))
        return sl.MatryoshkaBatchTopKTrainingSAE(
            sl.MatryoshkaBatchTopKTrainingSAEConfig(d_in=d, d_sae=n, k=k, matryoshka_widths=widths)
        )
    raise ValueError(f"no SAELens counterpart for {arch!r}")


def bench_synthetic_suite(args, data=None) -> None:
    from sae_lens.synthetic import (
        ActivationGenerator,
        FeatureDictionary,
        eval_sae_on_synthetic_data,
        train_toy_sae,
        zipfian_firing_probabilities,
    )

    archs = args.suite_archs.split(",")
    print(
        f"\n(iv) SAELens's synthetic suite (FeatureDictionary, ActivationGenerator with Zipfian firing), "
        f"{', '.join(archs)}, {args.suite_samples:,} training samples each, "
        "scored by sae_lens.synthetic.eval_sae_on_synthetic_data on 100,000 samples"
    )
    suite = {name: SUITE[name] for name in args.suite_configs.split(",")}
    for (name, (n_feat, dim, latents, k, pmax, pmin)), arch in itertools.product(suite.items(), archs):
        torch.manual_seed(0)
        fd = FeatureDictionary(num_features=n_feat, hidden_dim=dim, seed=0)
        gen = ActivationGenerator(
            num_features=n_feat,
            firing_probabilities=zipfian_firing_probabilities(n_feat, max_prob=pmax, min_prob=pmin),
            std_firing_magnitudes=0.0,
            mean_firing_magnitudes=1.0,
        )
        rows = {}
        variants = {"ours (defaults)": dict()}
        if arch == "topk":
            variants = {
                "ours (defaults: dead window 100k for topk)": dict(),
                "ours, dead window 1M (the default before)": dict(train=dict(dead_window=1_000_000)),
                "ours, also init enc_dec_transpose": dict(sae=dict(init="enc_dec_transpose")),
            }
        for label, opts in variants.items():
            sc = SAEConfig(d_in=dim, dict_size=latents, arch=arch, k=k, **opts.get("sae", {}))
            tc = TrainConfig(n_samples=args.suite_samples, **opts.get("train", {}))
            t0 = time.perf_counter()
            sae = Trainer(sc, tc).fit(TheirStream(fd, gen)).sae_
            seconds = time.perf_counter() - t0
            torch.manual_seed(123)
            rows[label] = (eval_sae_on_synthetic_data(sae, fd, gen, num_samples=100_000), seconds)
        torch.manual_seed(0)
        theirs = their_sae(arch, dim, latents, k)
        t0 = time.perf_counter()
        train_toy_sae(theirs, fd, gen, training_samples=args.suite_samples)
        seconds = time.perf_counter() - t0
        torch.manual_seed(123)
        rows["SAELens (train_toy_sae defaults)"] = (
            eval_sae_on_synthetic_data(theirs, fd, gen, num_samples=100_000),
            seconds,
        )
        true_l0 = next(iter(rows.values()))[0].true_l0
        print(
            f"  {arch}, {name}: {n_feat} features in {dim} dims ({n_feat / dim:g} a dimension), "
            f"Zipfian firing {pmin}..{pmax} (true L0 {true_l0:.2f}), "
            f"{latents} latents, k = {k}"
        )
        for label, (r, sec) in rows.items():
            print(
                f"    {label:<50} MCC {r.mcc:.3f}  uniqueness {r.uniqueness:.3f}  "
                f"dead {r.dead_latents:>4} of {latents}  "
                f"F1 {r.classification.f1_score:.3f}  EV {r.explained_variance:.3f}  shrinkage {r.shrinkage:.3f}  "
                f"L0 {r.sae_l0:.2f}  ({sec:.0f} s)"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--dict-size", type=int, default=512, help="latents (default 512)")
    p.add_argument("--batch", type=int, default=4096, help="samples per step (default 4096)")
    p.add_argument("--steps", type=int, default=8, help="(i) steps per timed run (default 8)")
    p.add_argument("--repeats", type=int, default=3, help="(i) timed runs per trainer (default 3)")
    p.add_argument("--target", type=float, default=0.99, help="(ii) MMCS to reach (default 0.99)")
    p.add_argument(
        "--recovery-dict-size", type=int, default=1024, help="(ii) latents (default 1024: 2x the true features)"
    )
    p.add_argument(
        "--recovery-batch",
        type=int,
        default=256,
        help="(ii) batch size for both (default 256, the Sharkey replication's)",
    )
    p.add_argument(
        "--budget-samples", type=int, default=4_000_000, help="(ii) samples per trainer at most (default 4M)"
    )
    p.add_argument("--eval-every", type=int, default=250, help="(ii) steps between MMCS checks (default 250)")
    p.add_argument(
        "--patience", type=int, default=4, help="(ii) stop after this many checks without a gain (0: never; default 4)"
    )
    p.add_argument(
        "--min-delta", type=float, default=0.002, help="(ii) MMCS gain that counts as progress (default 0.002)"
    )
    p.add_argument(
        "--pool-samples", type=int, default=524_288, help="(ii) pre-generated samples, cycled (default 524,288)"
    )
    p.add_argument("--ours-l1", type=float, help="(ii) our L1 coefficient instead of the default")
    p.add_argument("--saelens-l1", type=float, help="(ii) SAELens's l1_coefficient instead of its default")
    p.add_argument("--members", type=int, default=16, help="(iii) SAEs in the sweep (default 16)")
    p.add_argument("--sweep-steps", type=int, default=200, help="(iii) steps per SAE (default 200)")
    p.add_argument("--suite-samples", type=int, default=2_000_000, help="(iv) training samples per SAE (default 2M)")
    p.add_argument(
        "--suite-archs", default="topk", help="(iv) comma-separated: relu,topk,batchtopk,jumprelu,gated,matryoshka"
    )
    p.add_argument("--suite-configs", default=",".join(SUITE), help=f"(iv) of {', '.join(SUITE)} (default both)")
    p.add_argument("--topk-dims", default="384,768", help="(v) input widths (default 384,768)")
    p.add_argument("--topk-latents", type=int, default=16384, help="(v) latents (default 16384)")
    p.add_argument("--topk-k", type=int, default=32, help="(v) k (default 32)")
    p.add_argument("--topk-batch", type=int, default=1024, help="(v) samples per step (default 1024)")
    p.add_argument("--only", choices=("i", "ii", "iii", "iv", "v"), help="run one part")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import sae_lens
    except ImportError:
        raise SystemExit("bench_sae needs SAELens: install the bench extra (pip install -e '.[bench]')") from None
    data = SharkeyData(SharkeyConfig())
    print(
        f"sae-lens {sae_lens.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    start = time.perf_counter()
    for part, fn in (
        ("i", bench_throughput),
        ("ii", bench_recovery),
        ("iii", bench_sweep),
        ("iv", bench_synthetic_suite),
        ("v", bench_topk_throughput),
    ):
        if args.only in (None, part):
            fn(args, data)
    print(
        f"\ntotal {time.perf_counter() - start:.0f} s; load average now {os.getloadavg()[0]:.2f} "
        "(the machine may be shared: rerun before quoting a number)"
    )


if __name__ == "__main__":
    main()
