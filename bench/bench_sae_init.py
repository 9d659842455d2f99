"""SAE initialisations side by side on the digits CNN's activations: samples to a fixed explained
variance for ``svd`` (the layer's weight matrix, from the activation store) against ``kaiming``,
``orthogonal``, ``data`` and ``pca``.

For each layer the activations of all 1797 digits are cached (``polylens cache``'s code) into an
activation store; each init trains a ReLU + L1 SAE from it (same seed, same batches; only the
init differs) and the explained variance is measured every ``--every`` steps on the store's first
4096 rows (in-sample, as for every store run). Printed: the samples each init needed to reach each
target (median over seeds; ``>`` = not within the budget) and the ratio to kaiming's.

Run: .venv/bin/python bench/bench_sae_init.py [--layers conv1,conv2,fc1] [--seeds 3] [--budget 600000]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cli.experiments.cache import cache_activations  # noqa: E402
from polylens.models import load_model  # noqa: E402
from polylens.models.digits import digits_data  # noqa: E402
from sae.activation_store import ActivationStore  # noqa: E402
from sae.config import SAEConfig, TrainConfig  # noqa: E402
from sae.metrics import evaluate  # noqa: E402
from sae.train import Trainer  # noqa: E402

INITS = ("kaiming", "orthogonal", "data", "pca", "svd")


def samples_to(
    store_dir: Path, init: str, seed: int, args, x_eval: torch.Tensor, width: int
) -> dict[float, int | None]:
    """Samples until explained variance first reaches each target (None: not within the budget)."""
    sc = SAEConfig(d_in=width, dict_size=args.ratio * width, l1=args.l1, init=init)
    config = TrainConfig(n_samples=args.budget, batch_size=args.batch, seed=seed)
    engine = Trainer(sc, dataclasses.replace(config, n_samples=args.every * args.batch)).build(store_dir)
    reached: dict[float, int | None] = {t: None for t in args.targets}
    step = 0
    while step * args.batch < args.budget and any(v is None for v in reached.values()):
        step += args.every
        engine.config = dataclasses.replace(config, n_samples=step * args.batch)  # the same run, continued
        engine.fit()
        ev = evaluate(engine.groups[0].members()[0], x_eval).explained_variance
        for t in args.targets:
            if reached[t] is None and ev >= t:
                reached[t] = step * args.batch
    return reached


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="conv1,conv2,fc1")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget", type=int, default=600_000, help="training samples at most per run")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--every", type=int, default=25, help="steps between measurements")
    p.add_argument("--ratio", type=int, default=4, help="latents per dimension")
    p.add_argument("--l1", type=float, default=0.1)
    p.add_argument("--targets", default="0.9,0.95")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    args.targets = [float(v) for v in args.targets.split(",")]
    torch.set_num_threads(args.threads)
    model = load_model("digits")
    data = digits_data()
    x = torch.from_numpy(__import__("numpy").concatenate([data["x_train"], data["x_test"]]))
    print(
        f"digits CNN ({model.name}), all {len(x)} digits; ReLU + L1 {args.l1}, {args.ratio}x latents, "
        f"batch {args.batch}, "
        f"budget {args.budget:,} samples, explained variance every {args.every} steps on 4096 stored rows; "
        f"seeds 0..{args.seeds - 1}; {torch.get_num_threads()} threads"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for layer in args.layers.split(","):
            t0 = time.perf_counter()
            store_dir = Path(tmp) / layer
            cache_activations(model, layer, store_dir, x, batch_size=256)
            store = ActivationStore(store_dir)
            x_eval = store.read(0, min(4096, store.rows))
            print(
                f"\n{layer}: {store.rows:,} rows of width {store.width} (cached in {time.perf_counter() - t0:.1f} s), "
                f"weight matrix {tuple(store.weight().shape)}"
            )
            runs = {
                init: [samples_to(store_dir, init, s, args, x_eval, store.width) for s in range(args.seeds)]
                for init in INITS
            }
            for t in args.targets:
                cells = {}
                for init, rs in runs.items():
                    got = [r[t] for r in rs]
                    cells[init] = statistics.median(v if v is not None else float("inf") for v in got)
                base = cells["kaiming"]
                row = []
                for init in INITS:
                    v = cells[init]
                    shown = f">{args.budget:,}" if v == float("inf") else f"{int(v):,}"
                    ratio = "" if v == float("inf") or base == float("inf") else f" ({v / base:.2f}x)"
                    row.append(f"{init} {shown}{ratio}")
                print(f"  EV >= {t}: " + "; ".join(row))


if __name__ == "__main__":
    main()
