"""The shell profile: boundary crossings per unit radius along scaling paths α·a, α ∈ [0, 3].

Run: .venv/bin/python examples/shell_profile.py [LAYER] [N] [OUT.png]
(default: relu1 of the digits CNN over 100 test images; exact counting.)
"""

import sys

import numpy as np

from polylens.lens.shell import shell_profile
from polylens.models import load_model
from polylens.plots import plot_shell_profile

layer = sys.argv[1] if len(sys.argv) > 1 else "relu1"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
out = sys.argv[3] if len(sys.argv) > 3 else "shell_profile.png"

model = load_model("digits")
prof = shell_profile(model, model.default_inputs(n), layer, alpha_max=3.0, n_bins=30)
norms = np.array(prof.norms)
edges = np.array(prof.bin_edges)
density = np.array(prof.density, dtype=float)
print(
    f"{model.name}: {prof.n_paths} scaling paths in {layer}, counting {', '.join(prof.layers)}: {prof.n_crossings} "
    f"crossings, {prof.evaluations} evaluations"
)
print(f"data norms ‖a‖: median {np.median(norms):.2f}, range [{norms.min():.2f}, {norms.max():.2f}]")
for lo, hi, d in zip(edges[:-1], edges[1:], density):
    mark = "  <- data" if ((norms >= lo) & (norms < hi)).any() else ""
    print(f"  r in [{lo:7.2f}, {hi:7.2f}): {d:8.3f} crossings per unit radius{mark}")
plot_shell_profile(prof, out)
print(f"wrote {out}")
