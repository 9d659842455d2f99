"""Every script in examples/ runs, with small arguments, so a shipped example cannot break unseen."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL_ARGS = {
    "compare_seeds.py": ["1", "300"],
    "compare_digits_layers.py": ["1", "100", "relu3"],
    "density_digits.py": ["relu1", "density.png"],
    "sae_sharkey.py": ["64", "0.1", "20000"],
    "polytope_claims.py": ["--paths", "6", "--shell-inputs", "4", "--affine-sample", "5", "--out", "claims.json"],
    "shell_profile.py": ["relu1", "3", "shell.png"],
    "x2_gradient_vs_activation_pca.py": [],
    "trained_vs_twin.py": ["--out", "twin", "--quick"],
    "sae_controls.py": ["--model", "digits", "--layer", "conv2", "--train", "60", "--eval", "30", "--dict-size", "64"]
    + ["--k", "4", "--samples", "4096", "--out", "controls.json"],
    "e2e_vs_mse.py": ["--train", "60", "--eval", "30", "--dict-size", "64", "--samples", "4096"]
    + ["--e2e-samples", "2048", "--out", "e2e.json"],
}


def test_every_example_is_listed():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(SMALL_ARGS)


@pytest.mark.parametrize("script", sorted(SMALL_ARGS))
def test_example_runs(script, tmp_path, digits, polylens_cache):
    env = {**os.environ, "POLYLENS_CACHE": str(polylens_cache), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *SMALL_ARGS[script]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip(), "an example prints what it found"
