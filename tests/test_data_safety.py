"""Nothing lost: ``--force`` replaces only a command's own earlier output, a store resumes only from
what it was begun with, one writer per store, SIGTERM saves like Ctrl-C, a refused command writes
nothing, and an activation store is read only through its validator. Every refusal is checked as a
user meets it: exit code 2, one line on stderr naming the file or flag, and no file changed."""

import functools
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli_run import run

ROOT = Path(__file__).resolve().parent.parent
MODEL = """import os
import time

import torch


class Small(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = torch.nn.Linear(6, 8)
        self.act = torch.nn.ReLU()
        self.out = torch.nn.Linear(8, 2)

    def forward(self, x):
        time.sleep(float(os.environ.get("POLYLENS_TEST_SLEEP", "0")))  # a slow model, for a kill mid-run
        return self.out(self.act(self.fc(x)))


def f():
    return Small(0)


def g():
    return Small(1)
"""


def tree(root: Path) -> dict:
    """Every entry under ``root``: a file's SHA-256, a link's target, a folder as such."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                out[str(p)] = "-> " + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[str(p)] = "dir"
    return out


def refused(capsys, root: Path, argv, *words, absent=()):
    """``polylens ARGV`` exits 2 with one line naming ``words``, and nothing under ``root`` changed."""
    before = tree(root)
    code, _, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (argv, code, err[-800:])
    for word in words:
        assert str(word) in err, (argv, word, err)
    assert tree(root) == before, argv
    for path in absent:
        assert not os.path.lexists(path), (argv, path)
    return err


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A fresh folder, the current one, with a small FILE.py model and two inputs of one shape."""
    (tmp_path / "small.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.standard_normal((600, 6)).astype(np.float32))
    np.save(tmp_path / "y.npy", rng.standard_normal((600, 6)).astype(np.float32))
    monkeypatch.chdir(tmp_path)
    return tmp_path


SMALL = ["--model", "small.py:f", "--no-progress"]


def cache(*argv):
    return ["cache", *SMALL, "--layer", "fc", *argv]


def store_files(folder: Path) -> dict:
    m = json.loads((folder / "manifest.json").read_text())
    return {s["file"]: s["sha256"] for s in m["shards"]}


def small_shards(monkeypatch, rows=64):
    """``polylens cache`` with shards of ``rows`` rows (the default is a million, too many for a test)."""
    import cli.experiments.cache as experiment

    monkeypatch.setattr(
        experiment, "cache_activations", functools.partial(experiment.cache_activations, shard_rows=rows)
    )


# 1. --force never deletes what it did not write


def test_cache_force_replaces_only_its_own_store(work, capsys):
    data = work / "data"
    data.mkdir()
    shutil.copy(work / "x.npy", data / "x.npy")
    refused(capsys, work, cache("--input", data / "x.npy", "--out", data, "--force"), "holds x.npy", "move x.npy")
    assert run(capsys, *cache("--input", "x.npy", "--out", "s"))[0] == 0
    (work / "s" / "notes.txt").write_text("mine")
    err = refused(capsys, work, cache("--input", "y.npy", "--out", "s", "--force"), "holds notes.txt")
    err = refused(capsys, work, cache("--input", "x.npy", "--out", "s"), "is complete", "give another --out")
    assert "--force" not in err  # it would be refused: the folder holds notes.txt
    other = work / "other"
    other.mkdir()
    (other / "a.txt").write_text("mine")
    err = refused(capsys, work, cache("--input", "x.npy", "--out", other), "holds a.txt and no activation store")
    assert "--force" not in err
    (other / "a.txt").unlink()
    (other / "manifest.json").write_text('{"name": "my own manifest"}')
    refused(capsys, work, cache("--input", "x.npy", "--out", other, "--force"), "holds manifest.json")
    (work / "s" / "notes.txt").unlink()
    assert run(capsys, *cache("--input", "y.npy", "--out", "s", "--force"))[0] == 0  # its own store: replaced
    m = json.loads((work / "s" / "manifest.json").read_text())
    assert m["complete"] and m["inputs"][0]["path"] == str(work / "y.npy")


def _cluster(out, *extra):
    return ["cluster", "--codes", "codes.npy", "--out", out, "--min-cluster-size", "5", *extra]


@pytest.fixture
def codes(work):
    rng = np.random.default_rng(3)
    centres = rng.integers(0, 2, (3, 40))
    bits = centres[rng.integers(0, 3, 90)] ^ (rng.random((90, 40)) < 0.03)
    np.save(work / "codes.npy", bits.astype(np.uint8))
    return work


def test_cluster_force_replaces_only_its_own_output(codes, capsys):
    work = codes
    assert run(capsys, *_cluster("o"))[0] == 0
    first = tree(work / "o")
    (work / "o" / "thesis.tex").write_text("mine")
    refused(capsys, work, _cluster("o", "--force"), "holds thesis.tex", "move thesis.tex")
    (work / "o" / "thesis.tex").unlink()
    assert tree(work / "o") == first
    assert run(capsys, *_cluster("o", "--force", "--min-cluster-size", "6"))[0] == 0  # its own output: replaced
    assert sorted(os.listdir(work / "o")) == sorted(p.split("/")[-1] for p in first)
    mine = work / "mine"
    mine.mkdir()
    (mine / "clusters.json").write_text("{}")
    (mine / "data.csv").write_text("1,2")
    refused(capsys, work, _cluster(mine, "--force"), "holds data.csv")
    (mine / "data.csv").unlink()
    (mine / "report.html").write_text("<p>an output written before the marker</p>")
    assert run(capsys, *_cluster(mine, "--force"))[0] == 0


def test_out_dot_file_or_a_parent_is_refused_before_any_work_without_advising_force(codes, capsys):
    work = codes
    (work / "sub").mkdir()
    lines = [
        (cache("--input", "x.npy", "--out", ".", "--force"), "is the current folder"),
        (cache("--input", "x.npy", "--out", "."), "is the current folder"),
        (cache("--input", "x.npy", "--out", work, "--force"), "is the current folder"),
        (cache("--input", "x.npy", "--out", "x.npy", "--force"), "x.npy is a file"),
        (cache("--input", "x.npy", "--out", "small.py"), "small.py is a file"),
        (_cluster(".", "--force"), "is the current folder"),
        (_cluster(".."), "holds the current folder"),
        (_cluster("codes.npy", "--force"), "codes.npy is a file"),
        (_cluster("codes.npy"), "codes.npy is a file"),
    ]
    for argv, words in lines:
        err = refused(capsys, work, argv, words)
        assert "--force" not in err, err
    os.chdir(work / "sub")
    refused(
        capsys,
        work,
        ["cache", "--model", "../small.py:f", "--layer", "fc", "--input", "../x.npy", "--out", ".."],
        "holds the",
    )


def test_an_out_that_is_or_is_inside_a_symbolic_link(codes, capsys):
    work = codes
    (work / "elsewhere").mkdir()
    (work / "elsewhere" / "keep.txt").write_text("mine")
    (work / "link").symlink_to(work / "elsewhere")
    refused(capsys, work, cache("--input", "x.npy", "--out", "link", "--force"), "holds keep.txt")
    refused(capsys, work, _cluster("link", "--force"), "holds keep.txt")
    assert run(capsys, *cache("--input", "x.npy", "--out", "link/store"))[0] == 0  # inside a link: written there
    assert (work / "elsewhere" / "store" / "manifest.json").is_file()
    (work / "slink").symlink_to(work / "elsewhere" / "store")
    assert run(capsys, *cache("--input", "y.npy", "--out", "slink", "--force"))[0] == 0  # a link to its own store
    assert (work / "slink").is_symlink() and json.loads((work / "slink" / "manifest.json").read_text())["complete"]
    assert run(capsys, *_cluster("link/o"))[0] == 0
    (work / "olink").symlink_to(work / "elsewhere" / "o")
    assert run(capsys, *_cluster("olink", "--force"))[0] == 0
    assert (work / "olink").is_symlink() and (work / "elsewhere" / "o" / "labels.npy").is_file()
    assert (work / "elsewhere" / "keep.txt").read_text() == "mine"


# 2. a store resumes only from what it was begun with


def test_an_interrupted_store_resumes_only_from_the_same_inputs_and_options(work, capsys, monkeypatch):
    from sae.activation_store import StoreWriter

    small_shards(monkeypatch)
    assert run(capsys, *cache("--input", "x.npy", "--out", "whole"))[0] == 0
    flushes = []
    original = StoreWriter._flush

    def stop_at_the_third(self, n):
        flushes.append(n)
        if len(flushes) == 3:
            raise KeyboardInterrupt
        original(self, n)

    monkeypatch.setattr(StoreWriter, "_flush", stop_at_the_third)
    code, _, err = run(capsys, *cache("--input", "x.npy", "--out", "cut"))
    monkeypatch.setattr(StoreWriter, "_flush", original)
    assert code == 130 and "128 rows in complete shards are kept" in err and "run the same command again" in err
    np.save(work / "same_path.npy", np.load(work / "x.npy"))
    lines = [
        (cache("--input", "y.npy", "--out", "cut"), "(--input: ", "y.npy"),
        (["cache", *SMALL, "--layer", "act", "--input", "x.npy", "--out", "cut"], "(--layer: fc there, act now"),
        (cache("--input", "x.npy", "--out", "cut", "--dtype", "float16"), "(--dtype: float32 there, float16 now"),
        (cache("--input", "x.npy", "--out", "cut", "--tokens", "500"), "(--tokens (the rows to store): 600"),
        (cache("--input", "x.npy", "--out", "cut", "--gradients", "logit"), "(--gradients: none there"),
        (["cache", "--model", "small.py:g", "--layer", "fc", "--input", "x.npy", "--out", "cut"], "(--model: "),
        (cache("--input", "x.npy", "--input", "y.npy", "--out", "cut"), "(--input: "),
    ]
    for argv, *words in lines:
        refused(capsys, work, argv, "holds another store", "finish it with the command that began it", *words)
    # the same path holding other numbers of the same shape
    np.save(work / "x.npy", np.load(work / "y.npy"))
    refused(capsys, work, cache("--input", "x.npy", "--out", "cut"), "(--input: ")
    np.save(work / "x.npy", np.load(work / "same_path.npy"))
    assert run(capsys, *cache("--input", "x.npy", "--out", "cut"))[0] == 0  # the same: resumed
    assert store_files(work / "cut") == store_files(work / "whole") and len(store_files(work / "whole")) == 10


# 3. one writer per store

HOLD = """
import sys, time
from pathlib import Path
from sae.runs import run_lock
with run_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_is_refused_naming_the_first(work, capsys, monkeypatch):
    small_shards(monkeypatch)
    for out in ("fresh", "begun"):
        (work / out).mkdir()
    code, _, _ = run(capsys, *cache("--input", "x.npy", "--out", "begun", "--tokens", "64"))
    assert code == 0
    (work / "begun" / "manifest.json").write_text(
        (work / "begun" / "manifest.json").read_text().replace('"complete": true', '"complete": false')
    )
    for out in ("fresh", "begun"):
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(work / out)], stdout=subprocess.PIPE, cwd=ROOT, text=True
        )
        try:
            assert holder.stdout.readline().strip() == "held"
            argv = cache("--input", "x.npy", "--out", out, "--tokens", "64")
            refused(capsys, work, argv, f"process {holder.pid} is writing", "holds the folder's lock")
        finally:
            holder.kill()
            holder.wait()


# 4. SIGTERM saves like Ctrl-C, and the run resumes to the same bits

WRAP = (
    "import functools, sys; import cli.experiments.cache as c; "
    "c.cache_activations = functools.partial(c.cache_activations, shard_rows=64); "
    "from cli.main import main; sys.exit(main(sys.argv[1:]))"
)


def _env(**extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}
    return env


def _wait_for(predicate, proc, timeout=60):
    end = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end
        time.sleep(0.02)


def test_sigterm_to_cache_keeps_its_complete_shards_and_the_rerun_is_bit_identical(work, capsys, monkeypatch):
    argv = [sys.executable, "-c", WRAP, *cache("--input", "x.npy", "--out", "cut")]
    proc = subprocess.Popen(argv, cwd=work, env=_env(POLYLENS_TEST_SLEEP="0.03"), stderr=subprocess.PIPE, text=True)

    def two_shards():
        try:
            return len(json.loads((work / "cut" / "manifest.json").read_text())["shards"]) >= 2
        except (OSError, ValueError):
            return False

    _wait_for(two_shards, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    m = json.loads((work / "cut" / "manifest.json").read_text())
    assert proc.returncode == 130 and not m["complete"] and 2 <= len(m["shards"]) < 10, err
    assert err.strip().splitlines()[-1] == (
        f"polylens: interrupted by SIGTERM; {m['rows']} rows in complete shards are kept in cut: "
        "run the same command again to finish the store"
    )
    done = subprocess.run(argv, cwd=work, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    small_shards(monkeypatch)
    assert run(capsys, *cache("--input", "x.npy", "--out", "whole"))[0] == 0
    assert store_files(work / "cut") == store_files(work / "whole") and len(store_files(work / "whole")) == 10


def test_sigterm_to_sae_train_saves_its_checkpoint_and_resume_is_bit_identical(work):
    np.save(work / "d.npy", np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32))
    train = [sys.executable, "-m", "cli.main", "sae", "train", "--data", "d.npy", "--no-progress"]
    sizes = ["--samples", str(64 * 800), "--batch-size", "64", "--dict-size", "32", "--eval-samples", "500"]
    whole = subprocess.Popen([*train, *sizes, "--out", "whole"], cwd=work, env=_env(), stderr=subprocess.PIPE)
    proc = subprocess.Popen([*train, *sizes, "--out", "cut"], cwd=work, env=_env(), stderr=subprocess.PIPE, text=True)
    _wait_for((work / "cut" / "run.json").is_file, proc)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        "polylens: interrupted by SIGTERM; its checkpoint is saved in cut: "
        "run the same command with --resume to continue"
    )
    step = json.loads((work / "cut" / "checkpoint.json").read_text())["step"]
    assert 0 < step < 800
    again = subprocess.run([*train, "--out", "cut", "--resume"], cwd=work, env=_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert whole.wait(timeout=120) == 0
    from safetensors.torch import load_file

    a, b = (load_file(work / name / "checkpoint.safetensors") for name in ("whole", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# 5. a refused command writes nothing


def test_a_refused_cache_writes_nothing(work, capsys, digits):
    (work / "text.txt").write_text("a few words")
    lines = [
        (cache("--input", "x.npy", "--out", "s", "--gradients", "loss"), "--gradients loss is the next-token loss"),
        (["cache", "--layer", "conv2", "--n", "20", "--gradients", "loss", "--out", "s"], "--gradients loss"),
        (["cache", *SMALL, "--layer", "nope", "--input", "x.npy", "--out", "s"], "nope"),
        (cache("--input", "missing.npy", "--out", "s"), "missing.npy"),
        (cache("--input", "text.txt", "--out", "s"), "text.txt"),
        (cache("--input", "x.npy", "--out", "s", "--tokens", "0"), "--tokens=0"),
        (cache("--input", "x.npy", "--out", "s", "--batch-size", "0"), "--batch-size=0"),
        (cache("--input", "x.npy", "--out", "s", "--json", "s/summary.json"), "s/summary.json"),
        (cache("--input", "x.npy", "--out", "no/such/s"), "does not exist"),
        (cache("--input", "x.npy", "--out", "s", "--json", "x.npy"), "also an input"),
    ]
    for argv, words in lines:
        refused(capsys, work, argv, words, absent=[work / "s", work / "no"])


# 6. an activation store is read only through its validator


@pytest.fixture
def store(tmp_path):
    from sae.activation_store import StoreWriter

    w = StoreWriter(tmp_path / "good", width=4, shard_rows=100, meta={"model": "m", "layer": "l"})
    w.add(torch.randn(250, 4))
    w.close()
    return tmp_path


def _variant(root: Path, name: str, manifest=None, shard=None) -> Path:
    """A copy of the good store with its manifest edited (``manifest(m)`` returns the new one) or
    its second shard's bytes replaced."""
    out = root / name
    shutil.copytree(root / "good", out)
    if manifest is not None:
        m = manifest(json.loads((out / "manifest.json").read_text()))
        (out / "manifest.json").write_text(m if isinstance(m, str) else json.dumps(m))
    if shard is not None:
        (out / "shard_000001.safetensors").write_bytes(shard)
    return out


def _without(m, key):
    m.pop(key)
    return m


def _edit_shard(m, **fields):
    m["shards"][1].update(fields)
    return m


def test_every_forged_or_damaged_store_is_one_line(store, capsys):
    good = (store / "good" / "shard_000001.safetensors").read_bytes()
    header = 8 + int.from_bytes(good[:8], "little")
    forged = (10**9).to_bytes(8, "little") + good[8:]  # a header length beyond the file
    passwd = Path("/etc/passwd").read_bytes() if Path("/etc/passwd").is_file() else b"root:x:0:0:root:/root:/bin/bash\n"
    (store / "outside.safetensors").write_bytes(good)
    cases = [
        (_variant(store, "list", manifest=lambda m: [m]), "a JSON list, not an object"),
        (_variant(store, "notjson", manifest=lambda m: "{not json"), "not valid JSON"),
        (_variant(store, "noshards", manifest=lambda m: _without(m, "shards")), "lacks the key 'shards'"),
        (_variant(store, "nowidth", manifest=lambda m: _without(m, "width")), "lacks the key 'width'"),
        (_variant(store, "nosha", manifest=lambda m: _without(m["shards"][1], "sha256") and m), "shard entry 1"),
        (_variant(store, "badsha", manifest=lambda m: _edit_shard(m, sha256="0" * 63)), "shard entry 1"),
        (_variant(store, "dtype", manifest=lambda m: m | {"dtype": "float64"}), "dtype is 'float64'"),
        (_variant(store, "width", manifest=lambda m: m | {"width": "4"}), "width is '4'"),
        (_variant(store, "negwidth", manifest=lambda m: m | {"width": -4}), "width is -4"),
        (_variant(store, "rows", manifest=lambda m: m | {"rows": 251}), "its shards hold 250 rows"),
        (_variant(store, "abs", manifest=lambda m: _edit_shard(m, file="/etc/passwd")), "a plain file name"),
        (_variant(store, "dots", manifest=lambda m: _edit_shard(m, file="../outside.safetensors")), "a plain file"),
        (_variant(store, "weight", manifest=lambda m: m | {"weight": "../outside.safetensors"}), "weight is"),
        (_variant(store, "incomplete", manifest=lambda m: m | {"complete": False}), "is incomplete"),
        (_variant(store, "pickle", shard=pickle.dumps({"activations": list(range(100))}, protocol=4)), "header of"),
        (_variant(store, "text", shard=b"these are words, not tensors\n" * 20), "header of"),
        (_variant(store, "passwd", shard=passwd), "shard_000001.safetensors is not a safetensors file"),
        (_variant(store, "short", shard=good[: len(good) // 2]), "do not fit"),
        (_variant(store, "forged", shard=forged), "header of 1,000,000,000 bytes"),
        (_variant(store, "tiny", shard=good[:5]), "shorter than a header"),
        (_variant(store, "garbage", shard=good[:header] + b"\0" * 7), "do not fit"),
        (_variant(store, "flipped", shard=good[:-4] + bytes(4)), "sha256 does not match"),
    ]
    for folder, words in cases:
        argv = [
            "sae",
            "train",
            "--data",
            folder,
            "--out",
            store / "run",
            "--samples",
            "256",
            "--batch-size",
            "64",
            "--no-progress",
        ]
        err = refused(capsys, store, argv, words, absent=[store / "run"])
        assert str(folder) in err or "shard" in err, err


def _sigterm_after_optimizer_step(k: int):
    """Send this process SIGTERM right after the k-th optimizer update, before the step is counted:
    the moment where an interrupt raised at once would save weights one update ahead of the step."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    calls = []

    def hook(optimizer, args, kwargs):
        calls.append(1)
        if len(calls) == k:
            os.kill(os.getpid(), signal.SIGTERM)

    return register_optimizer_step_post_hook(hook)


@pytest.mark.parametrize(
    "command",
    [
        ["sae", "train", "--dict-size", "32"],
        ["sae", "sweep", "--l1s", "0.01,0.1", "--ratios", "2"],
    ],
)
def test_sigterm_mid_step_saves_the_step_whole_and_resumes_bit_identically(work, capsys, command):
    from safetensors.torch import load_file

    np.save(work / "d.npy", np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32))
    argv = [*command, "--data", "d.npy", "--samples", str(64 * 40), "--batch-size", "64", "--no-progress"]
    argv += ["--eval-samples", "256"]
    assert run(capsys, *argv, "--out", "whole")[0] == 0
    handle = _sigterm_after_optimizer_step(15)
    try:
        code, _, err = run(capsys, *argv, "--out", "cut")
    finally:
        handle.remove()
    assert code == 130 and err.strip().splitlines()[-1].startswith("polylens: interrupted by SIGTERM; its checkpoint")
    assert json.loads((work / "cut" / "checkpoint.json").read_text())["step"] == 15
    assert run(capsys, *argv, "--out", "cut", "--resume")[0] == 0
    a, b = (load_file(work / name / "checkpoint.safetensors") for name in ("whole", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_npz_archive_named_npy_is_one_clear_error_from_the_python_api(tmp_path):
    """np.load opens a zip whatever its name: each .npy reader says what the file is, not AttributeError."""
    from polylens.clustering.points import codes_points
    from polylens.models.base import read_npy
    from sae.sources import load_array

    path = tmp_path / "renamed.npy"
    np.savez(tmp_path / "a.npz", x=np.zeros((3, 4), dtype=np.float32))
    (tmp_path / "a.npz").rename(path)
    for read in (read_npy, load_array, codes_points):
        with pytest.raises(ValueError, match=r"is an \.npz archive, not a \.npy array"):
            read(path)
