"""Spline-code extraction at GPT-2-small layer L vs a forward pass stopped at L.

Goal (issue 4): extraction ≤ 1.1× the time of TransformerLens' ``model(tokens, stop_at_layer=L+1)``
(blocks 0..L, the least forward pass that reaches ``blocks.L.mlp.hook_pre``). Extraction is
``polylens.lens.codes.extract_codes``: capture with the forward pass aborted at the hook (so block L's
GELU, ``W_out`` and everything after are never computed) plus sign bits and bit packing.
Weights are random (offline), which does not change the cost. Same process, same inputs,
measurements interleaved, median of REPEATS. Run: .venv/bin/python bench/bench_codes.py [--threads N]

Threads default to 1: on a 2-core machine shared with other jobs, 2 torch threads spin-wait on
each other and one forward pass took 10× longer (7.5 s vs 0.74 s for 128 tokens, measured).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from polylens.capture import capture  # noqa: E402
from polylens.lens.codes import extract_codes  # noqa: E402
from polylens.models import load_model  # noqa: E402

BATCH, SEQ, REPEATS = 4, 64, 5
LAYERS = (0, 5, 11)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1; see the module docstring)")
    torch.set_num_threads(parser.parse_args().threads)
    adapter = load_model("gpt2", random_weights=True, seed=0)
    model = adapter.module
    tokens = torch.randint(0, model.cfg.d_vocab, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    print(
        f"model: {adapter.name}; input [{BATCH}, {SEQ}] tokens; threads {torch.get_num_threads()}; median of {REPEATS}"
    )
    print(
        f"{'layer':<24}{'codes s':>9}{'capture s':>11}{'stop_at s':>11}{'full s':>9}{'codes/stop_at':>15}"
        f"{'codes/full':>12}"
    )
    with torch.no_grad():
        model(tokens[:, :8])  # warm up kernels and allocator
        for L in LAYERS:
            hook = f"blocks.{L}.mlp.hook_pre"
            runs: dict[str, list[float]] = {"codes": [], "capture": [], "stop_at": [], "full": []}
            for _ in range(REPEATS):  # interleaved, so drifts in machine load hit all four alike
                runs["codes"].append(timed(lambda: extract_codes(adapter, tokens, hook, per_position=True)))
                runs["capture"].append(timed(lambda: capture(model, tokens, [hook])))
                runs["stop_at"].append(timed(lambda: model(tokens, stop_at_layer=L + 1)))
                runs["full"].append(timed(lambda: model(tokens)))
            med = {k: statistics.median(v) for k, v in runs.items()}
            f = med["full"]
            print(
                f"{hook:<24}{med['codes']:>9.3f}{med['capture']:>11.3f}{med['stop_at']:>11.3f}{f:>9.3f}"
                f"{med['codes'] / med['stop_at']:>14.2f}x{med['codes'] / f:>11.2f}x"
            )
    print("goal: codes/stop_at ≤ 1.10x (the machine may be shared: rerun before quoting a number)")


if __name__ == "__main__":
    main()
