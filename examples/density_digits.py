"""Boundary density along an interpolation between two digit classes, output class drawn under it.

Run: .venv/bin/python examples/density_digits.py [LAYER] [OUT.png]
(LAYER: input, relu1, relu2, relu3; default relu1. The CNN trains on first use, a few seconds.)
"""

import sys

from polylens.lens.density import boundary_density
from polylens.lens.paths import interpolation_path
from polylens.models import load_model
from polylens.plots import plot_density_path

layer = sys.argv[1] if len(sys.argv) > 1 else "relu1"
out = sys.argv[2] if len(sys.argv) > 2 else "density_digits.png"

model = load_model("digits")
x = model.default_inputs(100)
labels = model.describe_output(model.module(x))
a = labels.index("3")
b = labels.index("8")
path = interpolation_path(model, x[a : a + 1], x[b : b + 1], layer)
result = boundary_density(model, path, n_profile=200)

print(f"{model.name}: test images {a} (class 3) -> {b} (class 8), path in {layer}, length {path.length:.3f}")
print(
    f"{result.n_crossings} crossings ({'exact' if result.exact else 'sampled'}, {result.evaluations} forward "
    "evaluations)"
)
for name, count in result.crossings_per_layer.items():
    print(f"  {name:<8} {count}")
print(f"output changes at t = {[round(t, 3) for t in result.output_changes]}")
print(f"correlation(crossings per step, output change) = {result.peak_output_correlation}")
plot_density_path(result, out, title=f"digits CNN: 3 -> 8 in {layer}")
print(f"wrote {out}")
