"""Whole-process time of ``polylens cluster --codes FILE`` on small inputs vs scikit-learn's HDBSCAN.

What a user waits for at the terminal: each measurement is a fresh process (interpreter start,
imports, numba's cache or compilation, the clustering, writing the output), timed from outside
with time.perf_counter around ``subprocess.run``. Side by side on the same codes file:

- ``polylens cluster --codes FILE --out DIR``: labels.npy, clusters.json and report.html;
- the peer: a Python process that reads the same ``.npy``, runs
  ``sklearn.cluster.HDBSCAN(min_cluster_size=10, metric="hamming")`` (our defaults: min_samples =
  min_cluster_size) and writes labels.npy and a JSON summary (no report: the peer does less);
- references: ``python -c pass`` (the interpreter alone) and ``polylens --help``.

Codes are planted: 8 random prototypes of 64 bits, each point its prototype with 5% of its bits
flipped, as 0/1 uint8 ``[n, 64]``. Each command runs ``--repeats`` times (default 5) after one
untimed warm-up run (which fills numba's on-disk cache if it is empty: its time is printed as
"first"); the table gives the median, the spread (min-max) and the ratio peer / ours. The machine
is shared: the load average is printed before and after, compare medians taken at similar load.
``--importtime`` adds the slowest imports of one ``polylens cluster`` run (``python -X importtime``).

Run: .venv/bin/python bench/bench_startup.py [--sizes 200,2000] [--repeats 5] [--skip-sklearn] [--importtime]

Measured on the 2-CPU shared development machine, median of 5 runs (3 before), seconds; the load
average was high and changing, so compare within a row (ours vs sklearn, same minutes):

| state | load avg | 200 codes: ours / sklearn | 2,000 codes: ours / sklearn |
|---|---|---|---|
| before (fast_hdbscan, scikit-learn, torch, numba, faiss imported) | 4.5-5.9 | 11.40 / 3.34 | 11.70 / 3.70 |
| after: numpy/plain-Python route for small fits | 7.1-8.3 | 4.59 / 2.64 | 4.27 / 3.83 |
| same, later | 10.5-10.7 | 7.48 / 5.50 | 7.94 / 5.81 |
| and polylens/lens/codes.py importing torch lazily (a scratch copy) | 10.7-10.9 | 2.30 / 5.16 | 2.58 / 5.17 |
| the same, committed, on a quiet machine (2026-12-06, Intel Xeon) | 1.0-2.3 | 1.34 / 2.54 | 1.44 / 2.42 |

What is left of a run on 200 codes (torch is no longer imported): matplotlib for the report's
figures (import and first draw, about 1.3 s under a load of 10), the interpreter and numpy; the
clustering itself takes under 0.3 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
UNITS, PROTOS, FLIP = 64, 8, 0.05

PEER = """
import json, sys, numpy as np
from sklearn.cluster import HDBSCAN
codes, out = sys.argv[1], sys.argv[2]
x = np.load(codes, allow_pickle=False).astype(bool)
labels = HDBSCAN(min_cluster_size=10, metric="hamming").fit(x).labels_
np.save(out + "/labels.npy", labels)
sizes = np.bincount(labels[labels >= 0]).tolist() if (labels >= 0).any() else []
summary = {"n_points": len(x), "n_clusters": int(labels.max() + 1), "noise_frac": float((labels < 0).mean()),
           "sizes": sorted(sizes, reverse=True)}
open(out + "/clusters.json", "w").write(json.dumps(summary) + "\\n")
print(f"sklearn HDBSCAN: {summary['n_clusters']} clusters, noise {summary['noise_frac']:.3f}")
"""


def load() -> str:
    return "load avg " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def polylens_cmd() -> list[str]:
    script = Path(sys.executable).parent / "polylens"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]


def planted(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    proto = rng.random((PROTOS, UNITS)) < 0.5
    return (proto[rng.integers(0, PROTOS, n)] ^ (rng.random((n, UNITS)) < FLIP)).astype(np.uint8)


def run_once(cmd: list[str], out: Path | None) -> tuple[float, subprocess.CompletedProcess]:
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
        if "--out" not in cmd:  # the peer writes into a folder that exists
            out.mkdir()
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return seconds, proc


def measure(cmd: list[str], out: Path | None, repeats: int) -> dict:
    first, proc = run_once(cmd, out)  # warm-up: fills numba's cache and the OS file cache
    times = [run_once(cmd, out)[0] for _ in range(repeats)]
    return {"first": first, "median": statistics.median(times), "min": min(times), "max": max(times), "proc": proc}


def row(name: str, m: dict, peer: dict | None = None) -> str:
    ratio = f"{peer['median'] / m['median']:.2f}x" if peer else ""
    return (
        f"| {name} | {m['first']:.2f} | {m['median']:.2f} | {m['min']:.2f}-{m['max']:.2f} | {ratio} |"
        if m
        else f"| {name} | | | | |"
    )


def importtime(cmd_args: list[str], top: int = 12) -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cli.main", *cmd_args], capture_output=True, text=True, cwd=ROOT
    )
    if proc.returncode != 0:
        raise SystemExit(f"polylens {' '.join(cmd_args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    rows = []  # (cumulative µs, module) of the imports made at the top level, not from inside another
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if line.startswith("import time:") and len(parts) == 3 and parts[1].strip().isdigit():
            if len(parts[2]) - len(parts[2].lstrip()) == 1:
                rows.append((int(parts[1]), parts[2].strip()))
    slow = ", ".join(f"{name} {us / 1e3:.0f}" for us, name in sorted(rows, reverse=True)[:top])
    print(f"\nslowest top-level imports of one run (cumulative ms): {slow}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200,2000", help="numbers of codes (default 200,2000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs a command (default 5)")
    parser.add_argument("--skip-sklearn", action="store_true", help="leave out scikit-learn's HDBSCAN")
    parser.add_argument("--importtime", action="store_true", help="list the slowest imports of one run")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; {load()}; python {sys.version.split()[0]}; {args.repeats} timed runs a command")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out = tmp / "out"
        print("\n| command | first s | median s | min-max s | sklearn / ours |\n|---|---:|---:|---:|---:|")
        print(row("python -c pass", measure([sys.executable, "-c", "pass"], None, args.repeats)))
        print(row("polylens --help", measure([*polylens_cmd(), "--help"], None, args.repeats)))
        for n in (int(s) for s in args.sizes.split(",")):
            codes = tmp / f"codes{n}.npy"
            np.save(codes, planted(n))
            ours = measure([*polylens_cmd(), "cluster", "--codes", str(codes), "--out", str(out)], out, args.repeats)
            peer = None
            if not args.skip_sklearn:
                peer = measure([sys.executable, "-c", PEER, str(codes), str(out)], out, args.repeats)
            print(row(f"polylens cluster, {n} codes of {UNITS} bits", ours, peer))
            if peer:
                print(row(f"sklearn HDBSCAN, {n} codes of {UNITS} bits", peer))
            noise = [line for line in ours["proc"].stderr.splitlines() if line.strip()]
            if noise:
                print(f"  (polylens wrote to stderr: {noise[0][:100]!r}{' ...' if len(noise) > 1 else ''})")
        if args.importtime:
            shutil.rmtree(out, ignore_errors=True)
            importtime(["cluster", "--codes", str(tmp / f"codes{args.sizes.split(',')[0]}.npy"), "--out", str(out)])
            shutil.rmtree(out, ignore_errors=True)
    print(f"\n{load()}")


if __name__ == "__main__":
    main()
