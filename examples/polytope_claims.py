"""The Polytope Lens paper's claims, measured on one model (exact counting throughout).

1. Density peaks where the output class changes: over interpolation paths between inputs of
   different classes, the Pearson correlation between crossings per grid step and "the predicted
   class changes in this step", pooled over all paths' steps, against a permutation baseline:
   each path's crossing counts shifted circularly by a random offset (the same crossings, moved
   along the path; their clumping is kept), redrawn many times.
2. The shell: along scaling paths α·a(x), where crossings per unit radius peak, against the
   distribution of the real activation norms ‖a(x)‖ at that layer.
3. How much the local affine map (path space → output) changes at each crossing: ‖A₊ − A₋‖_F
   (``polylens.lens.affine_change``), split by whether the output changes in the crossing's step.
   With ``--affine-sample K`` it is computed on K crossings a path drawn at random (seeded), and the
   JSON says so; 0 computes it at every crossing.

The classes that choose the pairs: the digits' test labels for ``digits``; otherwise the trained
network's predicted class, so that ``--random-weights`` (the twin) runs on the same inputs and
pairs as the trained model and differs from it in nothing but the weights. The output change along
a path is always the model's own (the twin's predicted class for the twin).

Run: .venv/bin/python examples/polytope_claims.py [--model M] [--random-weights] [--layer L]
[--count-layers A,B] [--paths N] [--inputs N] [--shell-inputs N] [--affine-sample K] [--out F.json]
(defaults: digits, relu1, 200 paths, 100 scaling paths, every crossing's affine change.)
"""

import argparse
import json
import time

import numpy as np
import torch

from polylens.capture import capture
from polylens.lens.affine_change import affine_changes
from polylens.lens.density import boundary_density
from polylens.lens.paths import interpolation_path
from polylens.lens.shell import shell_profile
from polylens.models import load_model

STEPS, PERMUTATIONS, SEED = 100, 1000, 0

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--model", default="digits")
p.add_argument("--random-weights", action="store_true", help="the model's seeded random-weights twin")
p.add_argument("--layer", default="relu1", help="the layer whose space the paths live in")
p.add_argument("--count-layers", default=None, help="comma-separated; default: every layer at and after --layer")
p.add_argument("--paths", type=int, default=200)
p.add_argument("--inputs", type=int, default=500, help="non-digits models: default inputs the pairs are drawn from")
p.add_argument("--shell-inputs", type=int, default=100)
p.add_argument("--alpha-max", type=float, default=3.0)
p.add_argument("--affine-sample", type=int, default=0, help="crossings a path whose affine change is computed")
p.add_argument("--out", default="polytope_claims.json")
args = p.parse_args()
count = args.count_layers.split(",") if args.count_layers else None
started = time.time()

options = {"random_weights": True} if args.random_weights else {}
model = load_model(args.model, **options)
if args.model == "digits":
    from polylens.models.digits import digits_data

    data = digits_data()
    x, y = torch.from_numpy(data["x_test"]), np.asarray(data["y_test"])
    classes_from = "test labels"
else:
    x = model.default_inputs(args.inputs)
    trained = load_model(args.model) if args.random_weights else model
    with torch.no_grad():
        y = torch.cat([trained.module(x[i : i + 32]) for i in range(0, len(x), 32)]).argmax(1).numpy()
    classes_from = "the trained network's predicted class"
rng = np.random.default_rng(SEED)

# 1. interpolation paths between inputs of different classes
if len(set(y.tolist())) < 2:
    raise SystemExit("every input has the same class: no pair of different classes to interpolate between")
pairs = []
while len(pairs) < args.paths:
    i, j = rng.choice(len(y), 2, replace=False)
    if y[i] != y[j]:
        pairs.append((int(i), int(j)))
counts, changed, jumps, jump_at_change = [], [], [], []
grid = np.linspace(0.0, 1.0, STEPS + 1)
for n, (i, j) in enumerate(pairs):
    path = interpolation_path(model, x[i : i + 1], x[j : j + 1], args.layer)
    every = args.affine_sample == 0
    res = boundary_density(model, path, count_layers=count, exact=True, n_profile=STEPS, affine_change=every)
    assert res.exact
    labels = res.profile["labels"]
    step_changed = np.array([labels[k] != labels[k + 1] for k in range(STEPS)], dtype=float)
    ts = np.array([c.t for c in res.crossings])
    counts.append(np.histogram(ts, bins=grid)[0].astype(float))
    changed.append(step_changed)
    chosen = np.arange(len(res.crossings))
    if not every and len(chosen) > args.affine_sample:
        chosen = np.sort(rng.choice(len(chosen), args.affine_sample, replace=False))
    if every:
        values = [c.affine_change for c in res.crossings]
    else:
        values = affine_changes(model, model.float64_module(), path, [res.crossings[k] for k in chosen])
    steps_of = np.clip(np.searchsorted(grid, ts[chosen], side="right") - 1, 0, STEPS - 1)
    jumps.extend(values)
    jump_at_change.extend(step_changed[steps_of].astype(bool).tolist())
    if (n + 1) % 20 == 0:
        print(f"  {n + 1}/{len(pairs)} paths, {time.time() - started:.0f} s", flush=True)
counts, changed = np.array(counts), np.array(changed)


def pooled_r(c: np.ndarray) -> float | None:
    if changed.std() == 0 or c.std() == 0:
        return None  # the output never changes (or crossings are spread evenly): no correlation exists
    return float(np.corrcoef(c.ravel(), changed.ravel())[0, 1])


observed = pooled_r(counts)
baseline = np.array(
    [pooled_r(np.stack([np.roll(row, int(rng.integers(STEPS))) for row in counts])) or 0.0 for _ in range(PERMUTATIONS)]
)
at_change = float(counts[changed.astype(bool)].mean()) if changed.any() else None
elsewhere = float(counts[~changed.astype(bool)].mean())
claim1 = {
    "n_paths": args.paths,
    "pairs_by": classes_from,
    "layer": args.layer,
    "count_layers": count,
    "steps_per_path": STEPS,
    "n_crossings": int(counts.sum()),
    "crossings_per_path": {"median": float(np.median(counts.sum(1))), "max": int(counts.sum(1).max())},
    "output_changes": int(changed.sum()),
    "pooled_correlation": observed,
    "baseline": None
    if observed is None
    else {
        "permutations": PERMUTATIONS,
        "mean": float(baseline.mean()),
        "std": float(baseline.std()),
        "p95": float(np.quantile(baseline, 0.95)),
        "p_value": float((1 + (baseline >= observed).sum()) / (1 + PERMUTATIONS)),
    },
    "crossings_per_step_where_output_changes": at_change,
    "crossings_per_step_elsewhere": elsewhere,
}

# 2. the shell: scaling paths vs the real activation norms at the layer
shell_x = x[: args.shell_inputs]
prof = shell_profile(model, shell_x, args.layer, alpha_max=args.alpha_max, n_bins=30, count_layers=count, exact=True)
edges, density = np.array(prof.bin_edges), np.array(prof.density, dtype=float)
peak = int(np.nanargmax(density))
peak_r = float(0.5 * (edges[peak] + edges[peak + 1]))
norm_x = x[: max(args.shell_inputs, min(len(x), 360))]
if args.layer == "input":
    real = norm_x
else:
    real = capture(model.module, norm_x, [args.layer], batch_size=32).activations[args.layer]
norms = real.reshape(len(norm_x), -1).double().norm(dim=1).numpy()
claim2 = {
    "n_paths": prof.n_paths,
    "layer": args.layer,
    "alpha_max": args.alpha_max,
    "n_crossings": prof.n_crossings,
    "peak_radius": peak_r,
    "peak_bin": [float(edges[peak]), float(edges[peak + 1])],
    "peak_density": float(density[peak]),
    "real_norms": {
        "n": int(len(norms)),
        "p5": float(np.quantile(norms, 0.05)),
        "median": float(np.median(norms)),
        "p95": float(np.quantile(norms, 0.95)),
    },
    "share_of_real_norms_below_peak": float((norms < peak_r).mean()),
    "density_at_median_norm": float(
        density[min(len(density) - 1, int(np.searchsorted(edges, np.median(norms), side="right") - 1))]
    ),
}

# 3. the affine map's change across each crossing (all, or the seeded sample)
jumps, jump_at_change = np.array(jumps, dtype=float), np.array(jump_at_change, dtype=bool)
claim3 = {
    "n_crossings": int(len(jumps)),
    "sampled": None if args.affine_sample == 0 else f"at most {args.affine_sample} crossings a path, seeded",
    "frobenius": None
    if not len(jumps)
    else {
        "p10": float(np.quantile(jumps, 0.1)),
        "median": float(np.median(jumps)),
        "p90": float(np.quantile(jumps, 0.9)),
        "mean": float(jumps.mean()),
    },
    "median_where_output_changes": float(np.median(jumps[jump_at_change])) if jump_at_change.any() else None,
    "median_elsewhere": float(np.median(jumps[~jump_at_change])) if (~jump_at_change).any() else None,
}

seconds = time.time() - started
result = {
    "model": model.name,
    "random_weights": args.random_weights,
    "density_vs_output_changes": claim1,
    "shell": claim2,
    "affine_change": claim3,
    "seconds": round(seconds, 1),
}
with open(args.out, "w") as fh:
    json.dump(result, fh, indent=2)


def fmt(v, spec=".3f"):
    return "n/a" if v is None else format(v, spec)


twin = " (random-weights twin)" if args.random_weights and "random" not in model.name else ""
print(f"{model.name}{twin}, paths in {args.layer}, exact counting, {seconds:.0f} s")
b = claim1["baseline"] or {}
print(
    f"1. {args.paths} interpolation paths (different classes by {classes_from}), {STEPS} steps each, "
    f"{claim1['n_crossings']} crossings, {claim1['output_changes']} output changes: corr(crossings per step, "
    f"output change) = {fmt(observed)}; shifted-crossings baseline {fmt(b.get('mean'))} ± {fmt(b.get('std'))} "
    f"(95%: {fmt(b.get('p95'))}), p = {fmt(b.get('p_value'), '.3g')}"
)
print(f"   crossings per step where the class changes {fmt(at_change, '.2f')}, elsewhere {elsewhere:.2f}")
r = claim2["real_norms"]
print(
    f"2. shell over {prof.n_paths} scaling paths ({prof.n_crossings} crossings): density peaks at radius "
    f"{peak_r:.2f} ({density[peak]:.2f} per unit radius); real norms median {r['median']:.2f} [5%: {r['p5']:.2f}, "
    f"95%: {r['p95']:.2f}], {100 * claim2['share_of_real_norms_below_peak']:.0f}% below the peak; density at the "
    f"median norm {claim2['density_at_median_norm']:.2f}"
)
m = claim3["frobenius"] or {}
print(
    f"3. ||A+ - A-||_F over {len(jumps)} crossings{' (sampled)' if claim3['sampled'] else ''}: median "
    f"{fmt(m.get('median'))} [10%: {fmt(m.get('p10'))}, 90%: {fmt(m.get('p90'))}]; median where the class "
    f"changes {fmt(claim3['median_where_output_changes'])}, elsewhere {fmt(claim3['median_elsewhere'])}"
)
print(f"wrote {args.out}")
