"""End-to-end against reconstruction training, at the same L0: a TopK SAE trained on the
reconstruction's error (mse), the same SAE fine-tuned on the model's output (``--loss kl``, Braun et
al. 2024), and fine-tuned on the output plus the later layers (``--loss e2e+ds``); each spliced
into the model (``polylens sae eval --model``'s measure) on the inputs it trained on and on
held-out ones. TopK fixes L0 at k for all three.

The first ``--train`` inputs (bundled, or ``--context``-token contexts of ``--input TEXT`` for a
text model) are cached with ``polylens cache`` into ``--work``, the SAEs trained with ``polylens sae
train`` on that store; the next ``--eval`` inputs are held out.

Run: .venv/bin/python examples/e2e_vs_mse.py [--model M] [--layer L] [--input TEXT] [--context N]
[--train N] [--eval N] [--dict-size N] [--k K] [--samples N] [--e2e-samples N] [--random-weights] [--work DIR]
[--out F.json]
(defaults: the digits CNN's conv2, the first 200 digits and the next 160, 128 latents, k 4,
102,400 mse samples, 204,800 end-to-end samples.)
"""

import argparse
import json
import shutil
import time
from pathlib import Path

from cli.experiments.spliced_eval import spliced_evaluation
from cli.main import main
from polylens.models import load_model
from sae.train import load_sae

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--model", default="digits")
p.add_argument("--layer", default="conv2")
p.add_argument("--random-weights", action="store_true", help="the model's random-weights twin (the control)")
p.add_argument("--input", default=None, help="text models: the text file cut into contexts")
p.add_argument("--context", type=int, default=128)
p.add_argument("--train", type=int, default=200)
p.add_argument("--eval", type=int, default=160)
p.add_argument("--dict-size", type=int, default=128)
p.add_argument("--k", type=int, default=4)
p.add_argument("--samples", type=int, default=102_400, help="mse training samples (rows)")
p.add_argument("--e2e-samples", type=int, default=204_800, help="fine-tuning samples of each end-to-end loss")
p.add_argument("--batch-size", type=int, default=256)
p.add_argument("--work", default="e2e-work", help="folder for the store and the three runs (replaced)")
p.add_argument("--out", default="e2e_vs_mse.json")
args = p.parse_args()

adapter = load_model(args.model, **({"random_weights": True} if args.random_weights else {}))
is_text = adapter.tokenize is not None
if is_text:
    from cli.experiments.cache import text_contexts

    inputs = text_contexts(adapter, args.input, args.context, None)[: args.train + args.eval]
else:
    inputs = adapter.default_inputs(args.train + args.eval)
if inputs.shape[0] < args.train + args.eval:
    raise SystemExit(f"only {inputs.shape[0]} inputs, fewer than --train + --eval")
work = Path(args.work)
shutil.rmtree(work, ignore_errors=True)
work.mkdir(parents=True)


def polylens(*argv) -> None:
    code = main([str(a) for a in argv])
    if code:
        raise SystemExit(f"polylens {' '.join(map(str, argv))} exited {code}")


flags = ["--input", args.input, "--context", str(args.context)] if is_text else []
flags += ["--random-weights"] if args.random_weights else []
polylens(
    "cache",
    "--model",
    args.model,
    "--layer",
    args.layer,
    *flags,
    "--n",
    args.train,
    "--out",
    work / "store",
    "--no-progress",
)
common = ["--data", work / "store", "--batch-size", args.batch_size, "--no-progress"]
seconds = {}
t0 = time.time()
topk = ["--arch", "topk", "--k", args.k, "--dict-size", args.dict_size]
polylens("sae", "train", *common, *topk, "--samples", args.samples, "--out", work / "mse")
seconds["mse"] = time.time() - t0
for loss in ("kl", "e2e+ds"):
    t0 = time.time()
    tune = ["--finetune", work / "mse", "--loss", loss, "--samples", args.e2e_samples]
    polylens("sae", "train", *common, *tune, "--out", work / loss)
    seconds[loss] = time.time() - t0

results = {}
for name in ("mse", "kl", "e2e+ds"):
    sae = load_sae(work / name)
    row = {"seconds": round(seconds[name], 1)}
    for part, x in (("trained on", inputs[: args.train]), ("held out", inputs[args.train :])):
        r = spliced_evaluation(adapter, args.layer, x, sae, is_text=is_text).to_json()
        row[part] = {
            k: r[k]
            for k in ("explained_variance", "l0", "dead_fraction", "kl_div", "kl_div_score", "top1_kept", "cosine_kept")
        }
        row[part]["cosine_kept_zero_ablation"] = r["cosine_kept_zero_ablation"]
    results[name] = row
    for part in ("trained on", "held out"):
        r = row[part]
        out = (
            f"cosine kept {r['cosine_kept']:.5f} (zeroed {r['cosine_kept_zero_ablation']:.4f})"
            if r["cosine_kept"] is not None
            else f"KL {r['kl_div']:.5f} (score {r['kl_div_score']:.4f}), top-1 kept {r['top1_kept']:.3f}"
        )
        print(f"{name:>7} {part:>10}: EV {r['explained_variance']:.4f}  L0 {r['l0']:.1f}  {out}", flush=True)
with open(args.out, "w") as f:
    json.dump({"model": args.model, "layer": args.layer, "args": vars(args), "results": results}, f, indent=2)
print(f"wrote {args.out}")
