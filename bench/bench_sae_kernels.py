"""SAE training step: hand-derived loss + gradients (``sae.kernels``) vs autograd, on CPU.

Size of the throughput benchmark (bench_sae.py): d=256, 512 latents, batch 4096, fp32, Sharkey data.
(a) loss + gradients of one batch: ``sae(x).loss.backward()`` vs ``fused_backward_(sae, x)``, for
    each architecture the kernel covers; the SAE is fixed (no update), so L0 stays that of the
    setting. "relu L0≈k" shifts b_enc so each sample has about k active latents, the regime of a
    trained SAE (at initialisation about half the latents are active).
(b) the whole trainer: ``Trainer.fit()`` with ``fused=False`` vs ``True`` on the same pre-generated
    batches (Adam, decoder renormalisation and dead-latent tracking included), samples/s.
(c) the kernel's dense vs sparse path across L0 (where ``SPARSE_MAX_DENSITY`` comes from), and
    an ensemble of E SAEs in one call vs E single calls (``sae_loss_and_grads``).
Measurements interleaved, medians after warm-up. Run: .venv/bin/python bench/bench_sae_kernels.py
[--threads 2] [--steps 20]. On a 2-core machine shared with other jobs, 2 threads spin-wait on
each other: compare --threads 1 before quoting a number.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from sae.kernels import SPARSE_MAX_DENSITY, fused_backward_, sae_loss_and_grads
from sae.model import SAEConfig, SparseAutoencoder
from sae.synthetic import SharkeyConfig, SharkeyData
from sae.train import TrainConfig, Trainer

D, N, BATCH = 256, 512, 4096
SETTINGS = {  # name: (SAEConfig overrides, target L0 or None for the initial one)
    "relu unit (init)": (dict(), None),
    "relu unit L0≈20": (dict(), 20),
    "relu weighted_l1": (dict(decoder_norm="weighted_l1"), None),
    "topk k=32": (dict(arch="topk", k=32), None),
    "batchtopk k=32": (dict(arch="batchtopk", k=32), None),
}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def make_sae(overrides: dict, target_l0: int | None, x: torch.Tensor) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(d_in=D, dict_size=N, **overrides), torch.Generator().manual_seed(0)).train()
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))  # as the trainer's initialisation
        if target_l0 is not None:  # shift b_enc so that B·target_l0 pre-activations are positive
            pre = sae.encode_pre(x)
            sae.b_enc.sub_(pre.flatten().kthvalue(pre.numel() - BATCH * target_l0).values)
    return sae


def bench_loss_and_grads(batches: list[torch.Tensor], steps: int) -> None:
    print(f"(a) loss + gradients, median of {steps} interleaved steps after 3 warm-up")
    print(f"    {'setting':<20}{'L0':>7}{'autograd ms':>13}{'kernel ms':>11}{'ratio':>8}")
    for name, (overrides, target) in SETTINGS.items():
        sae = make_sae(overrides, target, batches[0])

        def autograd(x):
            sae.zero_grad(set_to_none=True)
            sae(x).loss.backward()

        def kernel(x):
            fused_backward_(sae, x)

        runs: dict[str, list[float]] = {"autograd": [], "kernel": []}
        for i in range(steps + 3):
            x = batches[i % len(batches)]
            ta, tk = timed(lambda: autograd(x)), timed(lambda: kernel(x))
            if i >= 3:
                runs["autograd"].append(ta)
                runs["kernel"].append(tk)
        l0 = float((fused_backward_(sae, batches[0]).acts != 0).float().sum(-1).mean())
        a, k = (statistics.median(runs[key]) * 1e3 for key in ("autograd", "kernel"))
        print(f"    {name:<20}{l0:>7.1f}{a:>13.1f}{k:>11.1f}{a / k:>7.2f}x")


def bench_trainer(batches: list[torch.Tensor], repeats: int) -> None:
    steps = len(batches)
    print(
        f"(b) Trainer.fit, relu+L1 defaults, {steps} steps per run from initialisation, "
        f"median of {repeats} interleaved runs"
    )

    def run(fused: bool) -> float:
        tc = TrainConfig(n_samples=steps * BATCH, batch_size=BATCH, fused=fused)
        trainer = Trainer(SAEConfig(d_in=D, dict_size=N), tc).build(list(batches))
        return timed(trainer.fit)

    run(False), run(True)  # warm-up
    runs: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for fused in (False, True):
            runs[fused].append(run(fused))
    rate = {f: steps * BATCH / statistics.median(v) for f, v in runs.items()}
    for f, label in ((False, "autograd"), (True, "kernel")):
        print(f"    {label:<9}{rate[f]:>10,.0f} samples/s  ({statistics.median(runs[f]) / steps * 1e3:.1f} ms/step)")
    print(f"    ratio kernel/autograd: {rate[True] / rate[False]:.2f}x")


def interleaved(fns: dict, steps: int, warmup: int = 2) -> dict[str, float]:
    """Median ms of each function, called in turn ``steps`` times after ``warmup`` rounds."""
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(steps + warmup):
        for name, fn in fns.items():
            t = timed(fn)
            if i >= warmup:
                runs[name].append(t)
    return {name: statistics.median(v) * 1e3 for name, v in runs.items()}


def bench_paths(x: torch.Tensor, steps: int) -> None:
    print(
        f"(c) dense vs sparse path of the kernel (sparse taken below density {SPARSE_MAX_DENSITY}), median of {steps}"
    )
    print(f"    {'setting':<20}{'density':>8}{'dense ms':>10}{'sparse ms':>11}{'dense/sparse':>14}")
    for arch, l0s in (("relu", (5, 20, 40, 60, 80, 120)), ("topk", (8, 32, 64))):
        for l0 in l0s:
            sae = make_sae(dict(arch=arch, k=l0), l0 if arch == "relu" else None, x)
            med = interleaved({sp: (lambda sp=sp: fused_backward_(sae, x, sparse=sp)) for sp in (False, True)}, steps)
            print(
                f"    {f'{arch} L0={l0}':<20}{l0 / N:>8.3f}{med[False]:>10.1f}{med[True]:>11.1f}"
                f"{med[False] / med[True]:>13.2f}x"
            )
    E = 4
    saes = [make_sae(dict(l1=l1), None, x) for l1 in (1.0, 2.0, 5.0, 10.0)]
    names = ("W_enc", "b_enc", "W_dec", "b_dec")
    stacked = [torch.stack([getattr(s, n).detach() for s in saes]) for n in names]
    l1 = torch.tensor([s.config.l1 for s in saes])
    med = interleaved(
        {
            "ensemble": lambda: sae_loss_and_grads(x, *stacked, l1=l1),
            "singles": lambda: [sae_loss_and_grads(x, *(t[e : e + 1] for t in stacked), l1=l1[e]) for e in range(E)],
        },
        max(3, steps // 4),
    )
    print(
        f"    relu ensemble E={E} (l1 1..10, at init): one call {med['ensemble']:.1f} ms, {E} single calls "
        f"{med['singles']:.1f} ms ({med['singles'] / med['ensemble']:.2f}x)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2; see the module docstring)")
    p.add_argument("--steps", type=int, default=20, help="(a) timed steps per setting (default 20)")
    p.add_argument("--trainer-steps", type=int, default=8, help="(b) steps per Trainer run (default 8)")
    p.add_argument("--repeats", type=int, default=5, help="(b) runs per mode (default 5)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = SharkeyData(SharkeyConfig(n_features=N, d=D))
    batches = [data.sample(BATCH, torch.Generator().manual_seed(i)) for i in range(max(4, args.trainer_steps))]
    print(
        f"d={D}, {N} latents, batch {BATCH}, fp32, threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    bench_loss_and_grads(batches[:4], args.steps)
    bench_trainer(batches[: args.trainer_steps], args.repeats)
    bench_paths(batches[0], max(5, args.steps // 2))
    print(f"load average now {os.getloadavg()[0]:.2f} (the machine may be shared: rerun before quoting a number)")


if __name__ == "__main__":
    main()
