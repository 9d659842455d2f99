"""SAEs on real model activations, side by side, ratios printed:

(a) writing an activation store (``polylens cache``'s code) against a plain forward pass to the
    same layer over the same token batches (tokens/s; goal ≥ 0.8×);
(b) training from the store against training from the same rows held in memory (goal ≥ 0.9×);
(c) 2 processes (``torchrun --nproc_per_node 2``) against 1, the same run (on this 2-core box the
    point is correctness; the speed is for multi-GPU machines);
(d) the sweep's real use: 16 SAEs (4 L1 × 4 dictionary sizes) on GPT-2-small's layer-6 MLP
    activations computed live every batch (a cache-free run), as one ensemble against 16
    sequential runs over the same token batches (goal ≥ 3×), and the same on the digits CNN.

GPT-2 has random weights here (offline; the same code runs pretrained ones). Every pair runs in
this one process, interleaved where it is repeated.

Run: .venv/bin/python bench/bench_sae_scale.py [--contexts 64] [--steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from cli.experiments.cache import LiveLayer, cache_activations  # noqa: E402
from polylens.capture import capture  # noqa: E402
from polylens.models import load_model  # noqa: E402
from polylens.rows import rows_of  # noqa: E402
from sae.activation_store import ActivationStore  # noqa: E402
from sae.config import SAEConfig, TrainConfig  # noqa: E402
from sae.sweep import sweep  # noqa: E402
from sae.train import Trainer  # noqa: E402

LAYER = "blocks.6.mlp.hook_pre"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_store(gpt, contexts: torch.Tensor, tmp: Path, batch: int) -> Path:
    rows = contexts.shape[0] * (contexts.shape[1] - 1)

    def forward():
        for lo in range(0, contexts.shape[0], batch):
            rows_of(capture(gpt.module, contexts[lo : lo + batch], [LAYER]).activations[LAYER], True).contiguous()

    times = {"forward": [], "store": []}
    for i in range(2):
        times["forward"].append(timed(forward))
        out = tmp / f"store{i}"
        times["store"].append(
            timed(lambda out=out: cache_activations(gpt, LAYER, out, contexts, is_text=True, batch_size=batch))
        )
    f, s = min(times["forward"]), min(times["store"])
    size = sum(p.stat().st_size for p in (tmp / "store0").iterdir()) / 2**20
    print(
        f"(a) {rows:,} tokens of {LAYER} (width 3072, float32, {size:.0f} MB): forward only {rows / f:,.0f} tokens/s, "
        f"writing the store {rows / s:,.0f} tokens/s: ratio {f / s:.2f}x (goal >= 0.8x; best of 2)"
    )
    return tmp / "store0"


def bench_from_store(store_dir: Path, steps: int) -> None:
    store = ActivationStore(store_dir)
    array = store.read(0, store.rows)
    sc = SAEConfig(d_in=store.width, dict_size=1024, l1=0.1)
    tc = TrainConfig(n_samples=steps * 256, batch_size=256, warmup_steps=10)
    runs = {"array": [], "store": []}
    for _ in range(2):
        for name, data in (("array", array), ("store", store_dir)):
            engine = Trainer(sc, tc).build(data)
            runs[name].append(timed(engine.fit))
    a, s = min(runs["array"]), min(runs["store"])
    print(
        f"(b) SAE 3072 -> 1024, batch 256, {steps} steps: from memory {steps * 256 / a:,.0f} samples/s, from the store "
        f"{steps * 256 / s:,.0f}: ratio {a / s:.2f}x (goal >= 0.9x; best of 2, interleaved)"
    )


def bench_processes(tmp: Path, threads: int) -> None:
    args = [
        "sae",
        "train",
        "--data",
        "sharkey",
        "--samples",
        str(1024 * 150),
        "--batch-size",
        "1024",
        "--dict-size",
        "1024",
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    t1 = timed(
        lambda: subprocess.run(
            [sys.executable, "-m", "cli.main", *args, "--out", str(tmp / "p1")],
            env=env,
            check=True,
            capture_output=True,
        )
    )
    env2 = {**env, "OMP_NUM_THREADS": str(max(1, threads // 2))}
    torchrun = [
        str(Path(sys.executable).with_name("torchrun")),
        "--nproc_per_node",
        "2",
        "--master_port",
        "29611",
        "-m",
        "cli.main",
    ]
    t2 = timed(
        lambda: subprocess.run([*torchrun, *args, "--out", str(tmp / "p2")], env=env2, check=True, capture_output=True)
    )
    from sae.train import load_sae

    a, b = load_sae(tmp / "p1"), load_sae(tmp / "p2")
    diff = max(float((a.state_dict()[k] - b.state_dict()[k]).abs().max()) for k in a.state_dict())
    print(
        f"(c) Sharkey stream, 256 -> 1024, global batch 1024, 150 steps, whole command with start-up: 1 process "
        f"({threads} threads) {t1:.1f} s, 2 processes ({max(1, threads // 2)} thread each, gloo) {t2:.1f} s: "
        f"ratio {t1 / t2:.2f}x; "
        f"largest weight difference {diff:.1e}"
    )


def bench_sweep(name: str, live: LiveLayer, l1s, sizes, steps: int, batch: int) -> None:
    tc = TrainConfig(n_samples=steps * batch, batch_size=batch, warmup_steps=5, init_samples=batch)
    t_seq = timed(
        lambda: [Trainer(SAEConfig(d_in=live.d, dict_size=n, l1=l1), tc).fit(live) for l1 in l1s for n in sizes]
    )
    t_ens = timed(lambda: sweep(live, list(l1s), list(sizes), {}, tc))
    t_fwd = timed(lambda: [live.sample(batch, torch.Generator().manual_seed(s)) for s in range(steps)])
    print(
        f"(d) {name}: {len(l1s) * len(sizes)} SAEs "
        f"(l1 {', '.join(f'{v:g}' for v in l1s)} x latents {', '.join(map(str, sizes))}), "
        f"width {live.d}, batch {batch}, {steps} steps, activations computed live: "
        f"sequential {t_seq:.1f} s, ensemble {t_ens:.1f} s: "
        f"ratio {t_seq / t_ens:.2f}x (goal >= 3x); the model's forward alone {t_fwd:.1f} s of the {steps} batches"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contexts", type=int, default=64, help="GPT-2 contexts of 128 tokens for (a) and (b)")
    p.add_argument("--steps", type=int, default=20, help="steps for (b) and (d)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="abcd")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    gpt = load_model("gpt2", random_weights=True)
    contexts = torch.randint(0, 50256, (args.contexts, 128), generator=torch.Generator().manual_seed(0))
    contexts[:, 0] = 50256
    print(f"GPT-2 small (random weights), {LAYER}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "a" in args.only or "b" in args.only:
            store_dir = bench_store(gpt, contexts, tmp, batch=8)
            if "b" in args.only:
                bench_from_store(store_dir, args.steps * 3)
        if "c" in args.only:
            bench_processes(tmp, args.threads)
    if "d" in args.only:
        live = LiveLayer(gpt, LAYER, contexts, is_text=True, batch_size=8)
        bench_sweep("GPT-2 small layer 6 MLP", live, (0.03, 0.1, 0.3, 1.0), (128, 256, 512, 1024), args.steps, 256)
        digits = load_model("digits")
        from polylens.models.digits import digits_data

        x = torch.from_numpy(digits_data()["x_train"])
        bench_sweep(
            "digits CNN conv2",
            LiveLayer(digits, "conv2", x, batch_size=256),
            (0.03, 0.1, 0.3, 1.0),
            (32, 64, 128, 256),
            args.steps * 5,
            256,
        )


if __name__ == "__main__":
    main()
