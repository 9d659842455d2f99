"""``polylens compare --model digits`` on several layers and seeds: which methods' top-10
directions matter most to the output, against random ones (the table in docs/compare.md).

Run: .venv/bin/python examples/compare_digits_layers.py [n_seeds] [sae_steps] [layer ...]
"""

import sys

import numpy as np

from cli.experiments.compare_layer import compare_layer
from cli.experiments.sae_methods import LayerSAEOptions
from polylens.models import load_model

n_seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
steps = int(sys.argv[2]) if len(sys.argv) > 2 else LayerSAEOptions.steps
layers = sys.argv[3:] or ["relu2", "fc1", "relu3"]
adapter = load_model("digits")
inputs, labels = adapter.default_inputs(360), adapter.default_labels(360)
for layer in layers:
    runs = [
        compare_layer(
            adapter, layer, inputs, target="logits", k=10, labels=labels, seed=s, sae=LayerSAEOptions(steps=steps)
        ).to_json()
        for s in range(n_seeds)
    ]
    r0 = runs[0]
    print(
        f"\n{layer}: width {r0['width']}, {r0['n_rows']:,} rows, top-10 directions, mean-ablated, "
        f"seeds 0..{n_seeds - 1} (mean [min, max])"
    )
    print(f"  {'method':<15}{'act. variance':>24}{'grad. energy':>24}{'KL@10':>24}{'acc. drop@10':>24}{'KL@1':>10}")
    for name in r0["methods"]:
        cells = []
        for get in (
            lambda m: m["activation_variance"],
            lambda m: m["gradient_energy"],
            lambda m: m["ablation"]["kl"][-1],
            lambda m: m["ablation"]["accuracy_drop"][-1],
        ):
            v = np.array([get(r["methods"][name]) for r in runs])
            cells.append(f"{v.mean():.3f} [{v.min():.3f}, {v.max():.3f}]")
        kl1 = np.mean([r["methods"][name]["ablation"]["kl"][0] for r in runs])
        print(f"  {name:<15}" + "".join(f"{c:>24}" for c in cells) + f"{kl1:>10.3f}")
    names = r0["agreement"]["methods"]
    M = np.mean([np.array(r["agreement"]["mmcs"]) for r in runs], axis=0)
    print("  agreement (mean max |cos|, row vs column): " + " ".join(f"{n[:8]:>8}" for n in names))
    for n, row in zip(names, M):
        print(f"    {n:<15}" + " ".join(f"{v:8.2f}" for v in row))
