"""Hamming kernels, exact k-NN and HDBSCAN on 3072-bit spline codes vs numpy, faiss and scikit-learn.

Measures, side by side in one run (ratios are ours / peer in throughput, peer / ours in seconds):
1. distance kernel: pairs/s of ``hamming.pairwise`` (route auto, and each of our routes) vs numpy
   popcount, ``faiss.hammings`` and sklearn ``pairwise_distances(metric="hamming")``; exact check;
2. exact k-NN (k=15): ``hamming.knn`` vs ``faiss.knn_hamming``, ``IndexBinaryFlat``, numpy, sklearn
   ``NearestNeighbors(brute)``; distances checked against faiss's;
3. HDBSCAN on planted codes (ours vs ``sklearn.cluster.HDBSCAN(metric="hamming")``): seconds, ARI;
4. ours at 20k planted codes; 5. ours with ``knn="hnsw"`` at 10^6 codes (in a child process, so its
   peak RSS is its own), optionally with ``sample=`` (sample-and-assign).
Codes are random bits (1, 2) or planted: random prototypes, each point its prototype with a share of
bits flipped. Timings: time.perf_counter, median of 3 runs, or 1 run where the first took > 15 s
(the "runs" column). Warm-up (numba compilation, the route probe) is timed and reported separately.
Run: .venv/bin/python bench/bench_cluster.py [--quick] [--skip-large] [--skip-sklearn-hdbscan] [--large-runs all,100000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

from polylens.clustering import hamming
from polylens.clustering.hdbscan import HDBSCAN
from polylens.lens.codes import pack_bits, unpack_bits

UNITS, W, K = 3072, 48, 15
SLOW = 15.0  # a measurement whose first run takes longer is run once


def load() -> str:
    return "load avg " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def status_mb(field: str) -> float:  # VmHWM (this process's own peak RSS; ru_maxrss survives exec) or VmRSS
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith(field + ":")) / 1024


def timed(fn, repeats: int = 3):
    """(median seconds, runs, last result)."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        if times[0] > SLOW:
            break
    return statistics.median(times), len(times), out


def random_codes(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**64, size=(n, W), dtype=np.uint64)


def planted(n: int, n_proto: int, lo: float, hi: float, seed: int, chunk: int = 20_000):
    """n packed codes: a random prototype with each bit flipped at a per-point rate in [lo, hi]
    (rates in steps of 1/256), generated and packed chunk by chunk; and the prototype labels."""
    rng = np.random.default_rng(seed)  # bytes < thr: a flip with probability thr / 256
    proto = pack_bits(rng.random((n_proto, UNITS)) < 0.5)
    labels = rng.integers(0, n_proto, n)
    words = np.empty((n, W), np.uint64)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        thr = rng.integers(round(lo * 256), round(hi * 256) + 1, m).astype(np.uint8)
        flips = np.frombuffer(rng.bytes(m * UNITS), np.uint8).reshape(m, UNITS) < thr[:, None]
        words[s : s + m] = proto[labels[s : s + m]] ^ pack_bits(flips)
    return words, labels


def np_pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty((len(a), len(b)), np.int32)
    step = max(1, 2**23 // (len(b) * a.shape[1]))  # ~64 MB of XOR words a block
    for s in range(0, len(a), step):
        out[s : s + step] = np.bitwise_count(a[s : s + step, None, :] ^ b[None]).sum(-1, dtype=np.int32)
    return out


def np_knn(q: np.ndarray, base: np.ndarray, k: int):
    dist, idx = np.empty((len(q), k), np.int32), np.empty((len(q), k), np.int64)
    for s in range(0, len(q), 64):
        d = np_pairwise(q[s : s + 64], base)
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(d, part, 1)
        order = np.lexsort((part, vals), axis=1)
        dist[s : s + 64], idx[s : s + 64] = np.take_along_axis(vals, order, 1), np.take_along_axis(part, order, 1)
    return dist, idx


def faiss_hammings(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import faiss

    a8, b8, out = a.view(np.uint8), b.view(np.uint8), np.empty((len(a), len(b)), np.int32)
    faiss.hammings(faiss.swig_ptr(a8), faiss.swig_ptr(b8), len(a), len(b), a8.shape[1], faiss.swig_ptr(out))
    return out


def cpu_header() -> None:
    import faiss
    import numba
    import torch

    info = {
        k.strip(): v.strip()
        for k, v in (x.split(":", 1) for x in reversed(open("/proc/cpuinfo").read().splitlines()) if ":" in x)
    }
    model, flags = info.get("model name", "?"), set(info.get("flags", "").split())  # cpu 0's (read last)
    want = ("avx2", "avx512f", "avx512bw", "avx512_vpopcntdq", "avx512_vnni", "avx_vnni")
    print(
        f"CPU: {model}; {os.cpu_count()} cpus; flags: " + " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in want)
    )
    print(
        f"torch.backends.cpu.get_cpu_capability() = {torch.backends.cpu.get_cpu_capability()}; threads: torch "
        f"{torch.get_num_threads()}, "
        f"numba {numba.get_num_threads()}, faiss {faiss.omp_get_max_threads()}; faiss {faiss.__version__}; {load()}"
    )


def warm_up() -> tuple[float, float]:
    """(route probe seconds, warm-up seconds: every route once, tiny dense / HNSW / sampled fits)."""
    probe, _, route = timed(lambda: hamming.choose_route(W), repeats=1)
    speeds = ", ".join(f"{r} {v / 1e6:.1f}M" for r, v in hamming.PROBE_TIMES[W].items())
    print(f"route probe ({probe:.2f} s): chose {route!r}; probe pairs/s: {speeds}")
    t = time.perf_counter()
    x, (w, _) = random_codes(64, 99), planted(600, 4, 0.05, 0.10, 99)
    for r in hamming._available_routes():
        hamming.pairwise(x, route=r)
        hamming.knn(x, None, 5, exclude_self=True, route=r)
    for kw in ({}, {"knn": "hnsw"}, {"knn": "hnsw", "sample": 300}):
        HDBSCAN(min_cluster_size=10, max_dense=100 if kw else 20_000, **kw).fit(w)
    return probe, time.perf_counter() - t


def table(title: str, rows: list, ours_rate: float) -> None:
    """rows: (name, seconds, runs, pairs); prints pairs/s and ours(auto) / this."""
    print(f"\n{title}\n| method | pairs | runs | median s | Mpairs/s | ours/this |\n|---|---:|---:|---:|---:|---:|")
    for name, s, r, pairs in rows:
        rate = pairs / s
        print(f"| {name} | {pairs:,} | {r} | {s:.3f} | {rate / 1e6:.2f} | {ours_rate / rate:.2f}x |")


def bench_pairwise(args) -> None:
    from sklearn.metrics import pairwise_distances

    a, b = random_codes(args.pair_n, 1), random_codes(args.pair_n, 2)
    pairs, route = len(a) * len(b), hamming.choose_route(W)
    t, r, ours = timed(lambda: hamming.pairwise(a, b))
    t_np, r_np, ref = timed(lambda: np_pairwise(a, b))
    assert np.array_equal(ours, ref), "hamming.pairwise differs from numpy popcount"
    t_fa, r_fa, fa = timed(lambda: faiss_hammings(a, b))
    n, _ = args.pair_sk, np.testing.assert_array_equal(fa, ref)
    ba, bb = unpack_bits(a[:n], UNITS), unpack_bits(b[:n], UNITS)
    t_sk, r_sk, sk = timed(lambda: pairwise_distances(ba, bb, metric="hamming"))
    assert np.array_equal(np.rint(sk * UNITS).astype(np.int32), ref[:n, :n])
    peers = [
        ("numpy bitwise_count(XOR), blockwise", t_np, r_np, pairs),
        ("faiss.hammings", t_fa, r_fa, pairs),
        (f"sklearn pairwise_distances hamming, bool [{n} x {n}]", t_sk, r_sk, n * n),
    ]
    mine = []
    for rt in hamming._available_routes():
        t1 = time.perf_counter()
        hamming.pairwise(a[:256], b, route=rt)
        rows = len(a) if (time.perf_counter() - t1) * len(a) / 256 < 3 else args.route_rows  # slow routes: a subset
        tr, rr, d = timed(lambda: hamming.pairwise(a[:rows], b, route=rt))
        assert np.array_equal(d, ref[:rows]), f"route {rt} differs from numpy"
        mine.append((f"ours, route={rt}" + (f" [{rows} x {len(b)}]" if rows < len(a) else ""), tr, rr, rows * len(b)))
    rate = pairs / t
    table(
        f"## 1. Distance kernel, {UNITS}-bit random codes, {len(a)} x {len(b)} (exact: all equal numpy)",
        [(f"**ours: hamming.pairwise, route auto -> {route}**", t, r, pairs)] + peers + mine,
        rate,
    )
    best = max(peers, key=lambda p: p[3] / p[1])
    pop = next((m for m in mine if m[0].endswith("popcount")), None)
    print(
        f"ours (auto) / fastest peer ({best[0]}): {rate / (best[3] / best[1]):.2f}x (goal >= 1.2x)"
        + (f"; route=popcount / fastest peer: {(pop[3] / pop[1]) / (best[3] / best[1]):.2f}x" if pop else "")
        + f"; {load()}"
    )


def bench_knn(args) -> None:
    import faiss
    from sklearn.neighbors import NearestNeighbors

    q, base = random_codes(args.knn_q, 3), random_codes(args.knn_base, 4)
    q8, b8 = q.view(np.uint8), base.view(np.uint8)
    pairs, route = len(q) * len(base), hamming.choose_route(W)
    t, r, ours = timed(lambda: hamming.knn(q, base, K))
    t_pc, r_pc, pc = timed(lambda: hamming.knn(q, base, K, route="popcount"))
    t_hc, r_hc, (fd, fi) = timed(lambda: faiss.knn_hamming(q8, b8, K))
    index = faiss.IndexBinaryFlat(UNITS)  # built outside the timing: the search is timed
    index.add(b8)
    t_ix, r_ix, (xd, _) = timed(lambda: index.search(q8, K))
    n, m = args.knn_np, args.knn_sk
    t_np, r_np, (nd, _) = timed(lambda: np_knn(q[:n], base, K))
    nn = NearestNeighbors(n_neighbors=K, metric="hamming", algorithm="brute").fit(unpack_bits(base, UNITS))
    qb = unpack_bits(q[:m], UNITS)
    t_sk, r_sk, (sd, _) = timed(lambda: nn.kneighbors(qb))
    same = {
        "faiss knn_hamming": np.array_equal(ours.distances, fd),
        "IndexBinaryFlat": np.array_equal(ours.distances, xd),
        "numpy": np.array_equal(ours.distances[:n], nd),
        "sklearn": np.array_equal(ours.distances[:m], np.rint(sd * UNITS)),
        "route=popcount": np.array_equal(ours.distances, pc.distances),
    }
    assert np.array_equal(ours.distances[:, -1], fd[:, -1]), "k-th distances differ from faiss"
    peers = [
        ("faiss.knn_hamming (hc)", t_hc, r_hc, pairs),
        ("faiss IndexBinaryFlat.search", t_ix, r_ix, pairs),
        (f"numpy blockwise + argpartition [{n} queries]", t_np, r_np, n * len(base)),
        (f"sklearn NearestNeighbors brute hamming, bool [{m} queries]", t_sk, r_sk, m * len(base)),
    ]
    rate = pairs / t
    table(
        f"## 2. Exact k-NN, k={K}, {len(q)} queries x {len(base)} base, {UNITS}-bit random codes",
        [(f"**ours: hamming.knn, route auto -> {route}**", t, r, pairs)]
        + peers
        + [("ours, route=popcount", t_pc, r_pc, pairs)],
        rate,
    )
    best = max(peers, key=lambda p: p[3] / p[1])
    print(
        "distances equal to ours (all k columns): "
        + ", ".join(f"{k} {v}" for k, v in same.items())
        + f"; indices equal to faiss knn_hamming: {np.mean(ours.indices == fi):.4f} of entries (ties may order "
        "differently)"
    )
    print(
        f"ours (auto) / fastest peer ({best[0]}): {rate / (best[3] / best[1]):.2f}x; route=popcount / fastest peer: "
        f"{(pairs / t_pc) / (best[3] / best[1]):.2f}x; {load()}"
    )


def describe(m, y) -> str:
    from sklearn.metrics import adjusted_rand_score

    n_clusters = len(set(m.labels_.tolist()) - {-1})
    return f"ARI {adjusted_rand_score(y, m.labels_):.4f}, {n_clusters} clusters, noise {np.mean(m.labels_ < 0):.4f}"


def bench_hdbscan(args) -> None:
    from sklearn.cluster import HDBSCAN as SkHDBSCAN
    from sklearn.metrics import adjusted_rand_score as ari

    mcs = args.min_cluster_size
    print(
        f"\n## 3-4. HDBSCAN, planted codes ({UNITS} bits, 20 prototypes, 5.1-10.2% bits flipped), "
        f"min_cluster_size={mcs}"
    )
    print("| run | n | runs | median s | route | result vs planted |\n|---|---:|---:|---:|---|---|")
    words, y = planted(args.n_hdbscan, 20, 0.05, 0.10, 5)
    X = unpack_bits(words, UNITS)
    t, r, m = timed(lambda: HDBSCAN(min_cluster_size=mcs).fit(X))
    print(f"| ours, bool input | {len(X)} | {r} | {t:.3f} | {m.route_} | {describe(m, y)} |")
    if not args.skip_sklearn_hdbscan:
        n = args.sklearn_hdbscan_n
        t_sk, _, sk = timed(lambda: SkHDBSCAN(metric="hamming", min_cluster_size=mcs, copy=True).fit(X[:n]), repeats=1)
        print(f"| sklearn.cluster.HDBSCAN(metric='hamming'), bool | {n} | 1 | {t_sk:.3f} | - | {describe(sk, y[:n])} |")
        t_o, r_o, mo = timed(lambda: HDBSCAN(min_cluster_size=mcs).fit(X[:n])) if n != len(X) else (t, r, m)
        print(
            f"speedup sklearn s / ours s at n={n}: {t_sk / t_o:.1f}x (goal >= 30x); ARI ours vs sklearn "
            f"{ari(sk.labels_, mo.labels_):.4f}"
        )
    words, y = planted(args.n_mid, 20, 0.05, 0.10, 6)
    t, r, m = timed(lambda: HDBSCAN(min_cluster_size=mcs).fit(words))
    print(f"| ours, packed input | {len(words)} | {r} | {t:.3f} | {m.route_} | {describe(m, y)} |")
    print(f"{args.n_mid} points: {t:.1f} s (goal <= 60 s); {load()}")


def large_child(args) -> None:
    """Section 5 in its own process (peak RSS is its own); prints one RESULT json line."""
    probe, warm = warm_up()
    t = time.perf_counter()
    words, y = planted(args.n_large, 50, 0.05, 0.05, 7)
    gen, rss0, start = time.perf_counter() - t, status_mb("VmHWM"), time.perf_counter()

    def monitor():
        while True:
            time.sleep(60)
            print(
                f"[large] {time.perf_counter() - start:.0f} s into fit, rss {status_mb('VmRSS'):.0f} MB (peak "
                f"{status_mb('VmHWM'):.0f} MB), "
                f"{load()}",
                file=sys.stderr,
                flush=True,
            )

    threading.Thread(target=monitor, daemon=True).start()
    m = HDBSCAN(min_cluster_size=args.min_cluster_size, knn="hnsw", sample=args.large_child or None, progress=True).fit(
        words
    )
    fit = time.perf_counter() - start
    from sklearn.metrics import adjusted_rand_score

    print(
        "RESULT "
        + json.dumps(
            dict(
                fit=fit,
                gen=gen,
                probe=probe,
                warm=warm,
                rss0=rss0,
                hwm=status_mb("VmHWM"),
                maxrss=maxrss_mb(),
                route=m.route_,
                ari=adjusted_rand_score(y, m.labels_),
                noise=float(np.mean(m.labels_ < 0)),
                clusters=m.n_clusters_,
                recall=m.knn_recall_,
                n_unique=m.n_unique_,
                notes=m.notes_,
                load=load(),
            )
        ),
        flush=True,
    )


def bench_large(args) -> None:
    print(
        f"\n## 5. HDBSCAN knn='hnsw', {args.n_large:,} planted codes ({UNITS} bits, 50 prototypes, 5.1% flipped), "
        "child process"
    )
    print(
        "| run | fit s | peak RSS MB (VmHWM) | ru_maxrss MB | peak before fit MB | route | recall | ARI | noise | "
        "clusters |\n"
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"
    )
    for sample in [0 if r == "all" else int(r) for r in args.large_runs.split(",")]:
        cmd = [
            sys.executable,
            __file__,
            "--large-child",
            str(sample),
            "--n-large",
            str(args.n_large),
            "--min-cluster-size",
            str(args.min_cluster_size),
        ]
        name = "all points" if not sample else f"sample={sample:,} + assign"
        proc, tail = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), [""]

        def pump():  # the child's progress goes on to our stderr; keep its tail for a stopped run
            for chunk in iter(lambda: proc.stderr.read(256), ""):
                sys.stderr.write(chunk)
                tail[0] = (tail[0] + chunk)[-4000:]

        threading.Thread(target=pump, daemon=True).start()
        try:
            proc.wait(timeout=args.large_timeout)
            out = proc.stdout.read()
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            seen = (
                re.findall(r"\[large\][^\n]*", tail[0])[-1:]
                + re.findall(r"(?:HNSW \w+|exact k-NN): *\d+%(?:(?!\[large)[^\r\n])*", tail[0])[-1:]
            )
            print(
                f"| {name} | > {args.large_timeout} (stopped; child wall time) | - | - | - | - | - | - | - | - |\n  "
                f"(last seen: {' / '.join(seen)})"
            )
            continue
        line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"| {name} | failed (rc {proc.returncode}): {out[-300:]!r} |")
            continue
        res = json.loads(line[7:])
        rec = "-" if res["recall"] is None else f"{res['recall']:.3f}"
        print(
            f"| {name} | {res['fit']:.1f} | {res['hwm']:.0f} | {res['maxrss']:.0f} | {res['rss0']:.0f} | "
            f"{res['route']} | {rec} | {res['ari']:.4f} "
            f"| {res['noise']:.4f} | {res['clusters']} |"
        )
        print(
            f"  (child: probe {res['probe']:.1f} s, warm-up {res['warm']:.1f} s, generation {res['gen']:.1f} s; "
            f"{res['n_unique']:,} distinct; "
            f"{res['load']}; notes: {' | '.join(res['notes'])})"
        )
    print(
        f"goal: <= 900 s, peak RSS <= 8192 MB (ru_maxrss of a child starts at the parent's peak, {maxrss_mb():.0f} MB: "
        "Linux keeps it over exec)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes everywhere (under a minute)")
    p.add_argument("--pair-n", type=int, default=4000, help="distance kernel: n x n codes")
    p.add_argument("--pair-sk", type=int, default=1000, help="sklearn pairwise subset (n x n)")
    p.add_argument(
        "--route-rows", type=int, default=500, help="rows for our routes that would take > 3 s on the full block"
    )
    p.add_argument("--knn-q", type=int, default=20_000)
    p.add_argument("--knn-base", type=int, default=20_000)
    p.add_argument("--knn-np", type=int, default=500, help="numpy k-NN: queries (subset)")
    p.add_argument("--knn-sk", type=int, default=100, help="sklearn NearestNeighbors: queries (subset)")
    p.add_argument("--n-hdbscan", type=int, default=5000)
    p.add_argument(
        "--sklearn-hdbscan-n", type=int, default=None, help="points for sklearn's HDBSCAN (default --n-hdbscan)"
    )
    p.add_argument("--skip-sklearn-hdbscan", action="store_true")
    p.add_argument("--n-mid", type=int, default=20_000)
    p.add_argument("--n-large", type=int, default=1_000_000)
    p.add_argument("--skip-large", action="store_true")
    p.add_argument(
        "--large-runs",
        default="100000",
        help="comma-separated: all (every point; may not finish within --large-timeout) and/or N "
        "(sample=N, then assign; default 100000)",
    )
    p.add_argument("--large-timeout", type=int, default=1200, help="stop a large run after this many seconds")
    p.add_argument("--min-cluster-size", type=int, default=20)
    p.add_argument("--skip", default="", help="comma-separated sections to skip: pairwise,knn,hdbscan")
    p.add_argument(
        "--large-child", type=int, default=None, help=argparse.SUPPRESS
    )  # internal: the large run (its sample, 0: all)
    args = p.parse_args()
    if args.quick:
        args.pair_n, args.pair_sk, args.knn_q, args.knn_base, args.knn_np, args.knn_sk = 1000, 200, 2000, 2000, 200, 50
        args.n_hdbscan, args.n_mid, args.n_large, args.route_rows = 800, 3000, 25_000, 200  # n_large > max_dense: HNSW
    args.sklearn_hdbscan_n = min(args.sklearn_hdbscan_n or args.n_hdbscan, args.n_hdbscan)
    if args.large_child is not None:
        return large_child(args)
    cpu_header()
    probe, warm = warm_up()
    print(
        f"warm-up (numba compile / cache load of every route, tiny dense, HNSW and sampled fits): {warm:.2f} s; "
        "excluded from timings below"
    )
    skip = set(args.skip.split(","))
    for name, fn in (("pairwise", bench_pairwise), ("knn", bench_knn), ("hdbscan", bench_hdbscan)):
        if name not in skip:
            fn(args)
    if not args.skip_large:
        bench_large(args)
    print(f"\nmax RSS of this process {maxrss_mb():.0f} MB; {load()}")


if __name__ == "__main__":
    main()
