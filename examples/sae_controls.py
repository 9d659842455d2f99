"""An SAE on a trained network's layer beside the two controls reviewers ask for: the same SAE on
the network's random-weights twin (Heap et al. 2025) and a frozen random decoder, only the encoder
trained (Korznikov et al. 2026). Each is spliced back into its network and judged at the output
(``polylens sae eval --model``), on held-out inputs the SAE never saw.

A text model (``minilm-l6``, ``gpt2``) reads ``--input TEXT`` cut into ``--context``-token contexts:
the first ``--train`` train the SAE, the next ``--eval`` judge it (a sentence encoder by the
embedding cosine kept, a language model by the CE loss recovered).

``--pair-layer P`` makes each of the three a transcoder (``--skip``: with its linear skip): it reads
``--layer``'s rows and predicts ``P``'s, and its prediction replaces ``P`` in the spliced runs (an
MLP: ``--layer blocks.1.hook_resid_mid --pair-layer blocks.1.hook_mlp_out`` on minilm-l6).

Run: .venv/bin/python examples/sae_controls.py [--model M] [--layer L] [--input TEXT] [--context N]
[--train N] [--eval N] [--dict-size N] [--k K] [--samples N] [--pair-layer P [--skip]] [--out F.json]
(defaults: efficientnet-lite0, _blocks.15._bn0 (1152 channels, 49 positions an image), 400 training
images, 100 held-out images, 4608 latents, TopK k = 32, 200,000 training rows drawn.)
"""

import argparse
import json
import time

import torch

from cli.experiments.spliced_eval import spliced_evaluation
from polylens.capture import capture
from polylens.models import load_model
from polylens.rows import rows_of
from sae.config import SAEConfig, TrainConfig
from sae.train import Trainer

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--model", default="efficientnet-lite0")
p.add_argument("--layer", default="_blocks.15._bn0")
p.add_argument("--input", default=None, help="text models: the text file cut into contexts")
p.add_argument("--context", type=int, default=128, help="text models: tokens a context, special tokens included")
p.add_argument("--train", type=int, default=400, help="inputs (bundled, or contexts) whose rows train the SAE")
p.add_argument("--eval", type=int, default=100, help="inputs after those, for the spliced evaluation")
p.add_argument("--dict-size", type=int, default=4608)
p.add_argument("--k", type=int, default=32)
p.add_argument("--samples", type=int, default=200_000)
p.add_argument("--pair-layer", default=None, help="train transcoders from --layer to this site")
p.add_argument("--skip", action="store_true", help="transcoders: with a linear skip")
p.add_argument("--out", default="sae_controls.json")
args = p.parse_args()

results = {}
for twin in (False, True):
    started = time.time()
    adapter = load_model(args.model, **({"random_weights": True} if twin else {}))
    is_text = adapter.tokenize is not None
    if is_text:
        from cli.experiments.cache import text_contexts

        inputs, labels = text_contexts(adapter, args.input, args.context, None)[: args.train + args.eval], None
        if inputs.shape[0] < args.train + args.eval:
            raise SystemExit(f"{args.input} holds {inputs.shape[0]} contexts, fewer than --train + --eval")
    else:
        inputs = adapter.default_inputs(args.train + args.eval)
        labels = adapter.default_labels(inputs.shape[0]) if adapter.default_labels is not None else None
    train_x, eval_x = inputs[: args.train], inputs[args.train :]
    sites = [args.layer] + ([args.pair_layer] if args.pair_layer else [])
    with torch.no_grad():
        got = [capture(adapter.module, train_x[i : i + 50], sites).activations for i in range(0, args.train, 50)]
        rows, ys = (torch.cat([rows_of(a[site], is_text) for a in got]) for site in (args.layer, sites[-1]))

    # Rows scaled to E‖x‖² = d for training (the twin's are ~1e-6, where Adam's steps of ~lr swamp
    # them), and the scale folded back into the weights after: the SAE then reads the raw rows.
    def unit_scale(t):
        return float((t.shape[1] / t.double().pow(2).sum(1).mean()).sqrt())

    scale, y_scale = unit_scale(rows), unit_scale(ys)
    data = (rows * scale).float() if not args.pair_layer else torch.cat([rows * scale, ys * y_scale], 1).float()
    for frozen in (False, True) if not twin else (False,):
        name = "twin" if twin else ("frozen random decoder" if frozen else "trained")
        t0 = time.time()
        sae_cfg = SAEConfig(
            d_in=rows.shape[1],
            d_out=ys.shape[1] if args.pair_layer else 0,
            skip=args.skip,
            dict_size=args.dict_size,
            arch="topk",
            k=args.k,
            freeze_decoder=frozen,
        )
        train_cfg = TrainConfig(
            n_samples=args.samples, batch_size=min(1024, rows.shape[0]), lr=1e-3, warmup_steps=20, seed=0
        )
        sae = Trainer(sae_cfg, train_cfg).fit(data).sae_
        out_scale = y_scale if args.pair_layer else scale
        with torch.no_grad():  # encode(x·c) and decode(·)/c' as one SAE on x: the TopK choice is unchanged
            sae.W_enc.mul_(scale)
            sae.W_dec.div_(out_scale)
            sae.b_dec.div_(out_scale)
            if sae.W_skip is not None:
                sae.W_skip.mul_(scale / out_scale)
        r = spliced_evaluation(
            adapter,
            args.layer,
            eval_x,
            sae,
            is_text=is_text,
            labels=None if labels is None else labels[args.train :],
            pair_layer=args.pair_layer,
        ).to_json()
        r["seconds"] = round(time.time() - t0, 1)
        r["train_rows"], r["input_scale"] = int(rows.shape[0]), scale
        results[name] = r
        g = {k: "n/a" if v is None else f"{v:.4g}" for k, v in r.items() if not isinstance(v, str)}
        kept = (
            f"cosine kept {g['cosine_kept']} (zero-ablated {g['cosine_kept_zero_ablation']})"
            if r["cosine_kept"] is not None
            else f"KL {g['kl_div']} (zero-ablated {g['kl_div_zero_ablation']}, score {g['kl_div_score']})  "
            f"top-1 kept {g['top1_kept']}  CE loss recovered {g['ce_loss_recovered']}"
        )
        print(
            f"{name:>22}: EV {g['explained_variance']}  L0 {g['l0']}  dead {g['dead_fraction']}  {kept}  "
            f"({r['seconds']} s)",
            flush=True,
        )
with open(args.out, "w") as f:
    json.dump(
        {"model": args.model, "layer": args.layer, "pair_layer": args.pair_layer, "results": results}, f, indent=2
    )
print(f"wrote {args.out}")
