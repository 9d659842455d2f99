"""Bad input through the CLI: one line on stderr naming what to do, exit code 2, no traceback,
nothing written (issue: every bad input a clear line)."""

import numpy as np
import pytest

from tests.cli_run import run

MODELS = {
    "m_raise.py": "def f():\n    raise RuntimeError('boom')\n",
    "m_syntax.py": "def f(:\n",
    "m_import.py": "import nonexistent_module_xyz\ndef f():\n    pass\n",
    "m_args.py": "def f(width):\n    pass\n",
    "m_notmodule.py": "def f():\n    return 3\n",
    "m_exit.py": "import sys\ndef f():\n    sys.exit(0)\n",
    "m_ok.py": "import torch\ndef f():\n    torch.manual_seed(0)\n"
    "    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))\n",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "notimage.png").write_text("hello")
    png = d / "real.png"
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)).save(png)
    (d / "truncated.png").write_bytes(png.read_bytes()[: len(png.read_bytes()) // 2])
    (d / "text.txt").write_text("some words")
    (d / "empty.txt").write_text("")
    np.save(d / "empty.npy", np.zeros((0,), np.float32))
    np.save(d / "int.npy", np.arange(64))
    np.save(d / "complex.npy", np.ones((10, 4), complex))
    np.save(d / "struct.npy", np.zeros(5, dtype=[("a", "f4")]))
    np.save(d / "emptysae.npy", np.zeros((0, 4), np.float32))
    np.save(d / "v6.npy", np.linspace(-1, 1, 6))  # float64, 1-D: one input of a 6-input model
    np.save(d / "w6.npy", np.linspace(1, -1, 6).astype(np.float32))
    (d / "random.npy").write_bytes(np.random.default_rng(0).bytes(300))
    for name, text in MODELS.items():
        (d / name).write_text(text)
    (d / "gpt2dir").mkdir()
    (d / "gpt2dir" / "config.json").write_text('{"model_type": "gpt2", "n_embd": 64}')
    return d


def _cases(d):
    return [
        (["density", "--layer", "relu1", "--from", d / "notimage.png"], "image PIL can read"),
        (["density", "--layer", "relu1", "--from", d / "truncated.png"], "image PIL can read"),
        (["density", "--layer", "relu1", "--from", d / "text.txt"], "image PIL can read"),
        (["density", "--layer", "relu1", "--from", d / "empty.npy"], "is empty"),
        (["density", "--layer", "relu1", "--from", d / "int.npy"], "holds integers"),
        (["density", "--layer", "relu1", "--from", d / "random.npy"], "not a readable numeric .npy"),
        (["codes", "--input", d / "complex.npy", "--out", d / "never.npz"], "complex"),
        (["codes", "--soft", "--beta", "nan", "--out", d / "never.npz"], "beta"),
        (["codes", "--soft", "--beta", "-1", "--out", d / "never.npz"], "beta"),
        (["density", "--layer", "relu1", "--smooth", "--samples", "1000000000"], "more than 10,000,000"),
        (["density", "--layer", "relu1", "--plot", "-"], "cannot go to stdout"),
        (
            [
                "density",
                "--model",
                "gpt2",
                "--random-weights",
                "--layer",
                "blocks.0.mlp.hook_pre",
                "--from",
                d / "empty.txt",
            ],
            "",
        ),
        *[
            (["codes", "--model", f"{d / name}:f", "--input", d / "w6.npy", "--out", d / "never.npz"], msg)
            for name, msg in [
                ("m_raise.py", "raised RuntimeError: boom"),
                ("m_syntax.py", "failed to import: SyntaxError"),
                ("m_import.py", "failed to import: ModuleNotFoundError"),
                ("m_args.py", "no arguments"),
                ("m_notmodule.py", "not a torch.nn.Module"),
                ("m_exit.py", "sys.exit(0)"),
            ]
        ],
        (
            ["codes", "--model", "gpt2", "--weights", d / "gpt2dir", "--out", d / "never.npz"],
            "lacks n_head, n_layer, vocab_size",
        ),
        (["sae", "train", "--data", d / "emptysae.npy", "--out", d / "never"], "non-empty"),
        (["sae", "train", "--data", d / "struct.npy", "--out", d / "never"], "structured"),
        (["sae", "train", "--data", d / "complex.npy", "--out", d / "never"], "complex"),
        (["sae", "train", "--device", "cuda:7", "--samples", "1000", "--out", d / "never"], "--device"),
        (["sae", "train", "--device", "nonsense", "--samples", "1000", "--out", d / "never"], "not a torch device"),
        (["sae", "train", "--dict-size", "100000000", "--samples", "1000", "--out", d / "never"], "GiB"),
        (["sae", "train", "--eval-samples", "10000000000", "--samples", "1000", "--out", d / "never"], "GiB"),
        (["sae", "train", "--samples", "100000000000000", "--out", d / "never"], "would not finish"),
        (
            ["sae", "train", "--data", d / "w6.npy", "--json", d / "w6.npy", "--out", d / "never", "--force"],
            "also an input",
        ),
    ]


def test_bad_input_table(files, digits, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in files.iterdir()}
    for argv, message in _cases(files):
        code, out, err = run(capsys, *argv)
        lines = err.strip().splitlines()
        assert code == 2, (argv, code, err[-500:])
        assert len(lines) == 1 and "Traceback" not in err and message in err, (argv, err)
    after = {p.name: p.stat().st_mtime_ns for p in files.iterdir()}
    assert after == before  # nothing written, nothing overwritten


def test_natural_inputs_work(files, capsys):
    # one input as a 1-D vector (shape [6] for a 6-input model), float64 as NumPy saves by default
    code, out, err = run(
        capsys,
        "density",
        "--model",
        f"{files / 'm_ok.py'}:f",
        "--layer",
        "0",
        "--from",
        files / "v6.npy",
        "--to",
        files / "w6.npy",
    )
    assert code == 0, err
