"""Run ``polylens compare`` over several seeds and print mean/min/max per setup, method and metric.

Run: .venv/bin/python examples/compare_seeds.py [n_seeds] [sae_steps]
(The results table in docs/compare.md comes from this script.)
"""

import sys

import numpy as np

from cli.experiments.compare_toys import compare
from cli.experiments.sae_methods import SAEOptions

SETUPS = {"x2": {}, "x2 (no bias)": {"bias": False}, "superposition": {}}

n_seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
sae = SAEOptions(steps=int(sys.argv[2])) if len(sys.argv) > 2 else SAEOptions()
for label, options in SETUPS.items():
    setup = label.split()[0]
    runs = [compare(setup, seed=s, sae=sae, **options).result for s in range(n_seeds)]
    gt = runs[0].ground_truth
    print(f"\n{label}: {gt['n_directions']} ground-truth directions in {gt['dim']} dims, seeds 0..{n_seeds - 1}")
    for method in runs[0].methods:
        cells = []
        for key in ("mmcs", "hungarian_mean_cos", "frac_recovered_0.9", "subspace_overlap"):
            v = np.array([r.methods[method][key] for r in runs])
            cells.append(f"{key} {v.mean():.3f} [{v.min():.3f}, {v.max():.3f}]")
        print(f"  {method:<15} " + "  ".join(cells))
