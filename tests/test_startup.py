"""Start-up of a command on a small input: what it imports, what it prints, and that the routes
taken for small fits (pure-Python hierarchy, numpy Prim, numpy Hamming) give what the compiled
ones give. No timings here: bench/bench_startup.py measures them."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs ``polylens cluster --codes`` in a fresh interpreter, then reports the modules it had imported.
CHILD = """
import contextlib, io, json, sys
from cli.main import main
err = io.StringIO()
codes = []
with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    for i, path in enumerate(sys.argv[2:]):
        codes.append(main(["cluster", "--codes", path, "--out", f"{sys.argv[1]}/out{i}"]))
print(json.dumps({"codes": codes, "stderr": err.getvalue(), "modules": sorted(sys.modules)}))
"""
HEAVY = ("transformer_lens", "transformers", "sklearn", "fast_hdbscan", "numba", "faiss", "scipy")


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    """A fresh process clustering unlabelled codes: planted clusters, random (mostly noise), all alike."""
    tmp = tmp_path_factory.mktemp("startup")
    rng = np.random.default_rng(0)
    proto = rng.random((4, 64)) < 0.5
    files = {
        "planted": proto[rng.integers(0, 4, 300)] ^ (rng.random((300, 64)) < 0.05),
        "random": rng.random((200, 64)) < 0.5,
        "alike": np.zeros((40, 64), dtype=bool),  # one distinct code: every point is noise, no cluster drawn
    }
    paths = []
    for name, bits in files.items():
        np.save(tmp / f"{name}.npy", bits.astype(np.uint8))
        paths.append(str(tmp / f"{name}.npy"))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp), *paths], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_stderr"] = proc.stderr
    return result


def test_clustering_codes_from_a_file_imports_no_model_or_compiler_library(child):
    assert child["codes"] == [0, 0, 0]
    loaded = {m.split(".")[0] for m in child["modules"]}
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_clustering_codes_from_a_file_imports_no_torch(child):
    assert "torch" not in {m.split(".")[0] for m in child["modules"]}


def test_no_library_warning_reaches_the_terminal_on_unlabelled_codes(child):
    for text in (child["stderr"], child["process_stderr"]):
        assert "Warning" not in text and "warn" not in text.lower(), text
        assert all(line.startswith("polylens:") for line in text.splitlines() if line.strip()), text


def test_help_imports_nothing_heavy():
    code = "import sys\nfrom cli.main import build_parser\nbuild_parser()\nprint(' '.join(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = {m.split(".")[0] for m in proc.stdout.split()}
    assert loaded.isdisjoint((*HEAVY, "torch", "matplotlib")), sorted(loaded & {*HEAVY, "torch", "matplotlib"})


def test_plots_draw_no_legend_without_labelled_artists(tmp_path):
    from polylens.plots import plot_density_path

    result = {  # a path with no counted layer and no profile: nothing carries a label
        "layers": [],
        "crossings": [],
        "output_changes": [],
        "exact": True,
        "model": "m",
        "n_crossings": 0,
        "space_layer": "x",
        "profile": {},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_density_path(result, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 0


def _random_trees(rng, count):
    """Spanning trees of mutual reachability of random points (rounded, for ties and zero distances)."""
    from polylens.clustering.mst import core_distances, dense_sorted_neighbours, prim_mst

    for trial in range(count):
        n, d, k = int(rng.integers(2, 300)), int(rng.integers(1, 5)), int(rng.integers(1, 6))
        x = rng.normal(size=(k, d))[rng.integers(0, k, n)] * rng.uniform(0, 8) + rng.normal(size=(n, d))
        x = np.round(x) if trial % 3 == 0 else x
        dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        ms = int(rng.integers(1, min(n, 12) + 1))
        core = core_distances(*dense_sorted_neighbours(dist, ms), np.ones(n, np.int64), ms)
        mst = prim_mst(dist, core)
        yield mst, int(rng.integers(2, max(3, min(n, 25))))


def test_small_hierarchy_equals_fast_hdbscan():
    from fast_hdbscan.hdbscan import clusters_from_spanning_tree as compiled

    from polylens.clustering.hierarchy import clusters_from_spanning_tree as port

    rng = np.random.default_rng(1)
    trees = list(_random_trees(rng, 60))
    bridged = trees[0][0].copy()
    bridged[len(bridged) // 2, 2] = np.inf  # a bridge between components, as the k-NN graph route adds
    trees.append((bridged, 3))
    for mst, mcs in trees:
        for method in ("eom", "leaf"):
            for single in (False, True):
                options = dict(min_cluster_size=mcs, cluster_selection_method=method, allow_single_cluster=single)
                lab, strength, _, tree, _ = compiled(mst, **options)
                lab2, strength2, tree2 = port(mst, **options)
                assert np.array_equal(lab, lab2) and np.array_equal(strength, strength2), options
                for field in tree2._fields:
                    assert np.array_equal(np.asarray(getattr(tree, field)), getattr(tree2, field)), field


def test_numpy_prim_equals_the_compiled_one(monkeypatch):
    from polylens.clustering import mst

    rng = np.random.default_rng(3)
    for _ in range(30):
        n = int(rng.integers(2, 150))
        bits = rng.integers(0, 2, (n, int(rng.integers(1, 12))))
        dist = (bits[:, None] != bits[None]).sum(-1).astype(np.int32)  # many ties
        core = np.sort(dist, axis=1)[:, int(rng.integers(0, min(n, 4)))].astype(np.float64)
        small = mst.prim_mst(dist, core)
        monkeypatch.setattr(mst, "PRIM_NUMPY_MAX", 0)
        assert np.array_equal(small, mst.prim_mst(dist, core))
        monkeypatch.setattr(mst, "PRIM_NUMPY_MAX", 3000)


def test_small_hamming_jobs_take_numpy_and_agree_with_popcount(monkeypatch):
    from polylens.clustering import hamming

    monkeypatch.setattr(hamming, "_CHOSEN", {})
    words = np.random.default_rng(5).integers(0, 2**63, size=(300, 2), dtype=np.uint64)
    assert hamming._route_fn("auto", 2, 300 * 300 * 2)[0] == "numpy" and not hamming._CHOSEN  # no probe
    assert np.array_equal(hamming.pairwise(words), hamming.pairwise(words, route="popcount"))
    got, want = (
        hamming.knn(words, None, 7, exclude_self=True),
        hamming.knn(words, None, 7, route="popcount", exclude_self=True),
    )
    assert np.array_equal(got.distances, want.distances) and np.array_equal(got.indices, want.indices)
