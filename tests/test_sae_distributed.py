"""Data-parallel training under torchrun (2 processes, gloo): the same weights as one process over the
same global batches, and a rank that dies ends the others with one line instead of a hang."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sae.train import load_sae

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}


def _polylens(*args, procs=1, timeout=240):
    if procs == 1:
        cmd = [sys.executable, "-m", "cli.main", *args]
    else:
        cmd = [
            str(TORCHRUN),
            "--nproc_per_node",
            str(procs),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_port()),
            "-m",
            "cli.main",
            *args,
        ]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason=f"torchrun not found beside {sys.executable}")


@pytest.mark.parametrize(
    "arch",
    [
        ["--arch", "relu", "--l1", "0.1", "--resample-every", "40", "--dead-window", "640"],
        ["--arch", "topk", "--k", "3"],
    ],
)
def test_two_processes_end_with_the_weights_of_one(tmp_path, arch):
    common = [
        "sae",
        "train",
        "--data",
        "tms",
        "--samples",
        str(64 * 120),
        "--batch-size",
        "64",
        "--dict-size",
        "48",
        *arch,
        "--no-progress",
    ]
    one = _polylens(*common, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    two = _polylens(*common, "--out", str(tmp_path / "two"), procs=2)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = load_sae(tmp_path / "one"), load_sae(tmp_path / "two")
    for name, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[name], v, rtol=1e-4, atol=1e-5, msg=name)
    assert two.stdout.count("trained 120 steps") == 1  # rank 0 reports, once
    assert json.loads((tmp_path / "two" / "run.json").read_text())["steps"] == 120


def test_a_transcoder_under_torchrun_ends_with_the_weights_of_one(tmp_path):
    from cli.experiments.cache import cache_activations
    from polylens.models import load_model

    adapter = load_model("digits")
    cache_activations(adapter, "fc1", tmp_path / "store", adapter.default_inputs(200), pair_layer="fc2")
    common = ["sae", "train", "--data", str(tmp_path / "store"), "--transcoder", "--skip", "--arch", "topk"]
    common += ["--k", "4", "--samples", str(64 * 40), "--batch-size", "64", "--dict-size", "32", "--no-progress"]
    one = _polylens(*common, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    two = _polylens(*common, "--out", str(tmp_path / "two"), procs=2)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = load_sae(tmp_path / "one"), load_sae(tmp_path / "two")
    assert a.W_skip.shape == (10, 64) and a.W_skip.abs().sum() > 0
    for name, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[name], v, rtol=1e-4, atol=1e-5, msg=name)


def test_a_sweep_under_torchrun_matches_one_process(tmp_path):
    common = [
        "sae",
        "sweep",
        "--data",
        "tms",
        "--samples",
        str(64 * 60),
        "--batch-size",
        "64",
        "--l1s",
        "0.05,0.5",
        "--ratios",
        "1,2",
        "--no-progress",
    ]
    assert _polylens(*common, "--out", str(tmp_path / "one")).returncode == 0
    two = _polylens(*common, "--out", str(tmp_path / "two"), procs=2)
    assert two.returncode == 0, two.stderr[-2000:]
    from safetensors.torch import load_file

    a, b = (
        load_file(str(tmp_path / "one" / "sweep.safetensors")),
        load_file(str(tmp_path / "two" / "sweep.safetensors")),
    )
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


def test_a_rank_that_dies_ends_the_others_with_one_line(tmp_path):
    port = str(_port())
    dist = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2", "POLYLENS_DIST_TIMEOUT": "30"}
    dying = (
        "import os, datetime, torch.distributed as d; "
        "d.init_process_group('gloo', timeout=datetime.timedelta(seconds=30)); os._exit(1)"
    )
    peer = subprocess.Popen([sys.executable, "-c", dying], env=_env(RANK="1", **dist))
    main = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "sae",
            "train",
            "--data",
            "tms",
            "--samples",
            "12800",
            "--batch-size",
            "64",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ],
        env=_env(RANK="0", **dist),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    peer.wait(timeout=60)
    assert main.returncode == 2, main.stderr[-2000:]
    lines = main.stderr.strip().splitlines()
    assert len(lines) == 1 and "rank 0 of 2" in lines[0] and "another process probably died" in lines[0]
    assert not (tmp_path / "run").exists()
