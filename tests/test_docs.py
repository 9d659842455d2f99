"""Every command the README and docs/*.md show runs here exactly as printed, and writes what it says.

How commands are found: every line of a fenced ``bash``/``sh`` block of README.md and docs/*.md,
with ``\\`` continuations joined and trailing ``# comments`` dropped. A line holding ``[`` or ``|``
is a usage synopsis (``[--seed N]``, ``x2|superposition``) and is not a command. Each command must
be a key of ``CASES``, which says how it is run and what it must write: a command added to the docs
without an entry here fails ``test_every_documented_command_has_a_case``, and an entry whose
command left the docs fails ``test_every_case_is_documented``.

How they run: ``polylens ...`` in-process (``cli.main.main``), in a fresh folder per command, with
``$POLYLENS_SAMPLE_SCALE`` (the one knob, read in ``cli/sample_scale.py``) shrinking training
samples and steps (``--samples``, ``--steps``, ``--sae-steps``, ``--eval-samples`` and their
defaults) and nothing else; flags are never changed, except where a case says so and why:

- commands that need pretrained weights from the internet run offline: GPT-2 with ``--weights``
  naming a tiny HuggingFace GPT-2 of the same layout (12 blocks, so ``blocks.6`` exists; width 32,
  saved by ``transformers`` as a user's own checkpoint would be), InceptionV1 with
  ``--random-weights`` in place of ``--weights url``;
- ``english.txt`` is ``polylens.models.corpus.english_text()``, written as docs/trained-models.md
  writes it;
- ``corpus.txt`` and ``texts/`` are Python's own ``pydoc_data.topics`` text (for
  ``compare --model gpt2 ... --n 64`` a short ``corpus.txt``: the command takes the few contexts it
  holds, as it would from any short file); ``photos/`` holds crops of scikit-learn's two bundled photos;
- a command that reads another's output (``--data gpt2-l6``, ``--codes codes.npz``) runs after that
  command, whose outputs are linked into its folder;
- ``torchrun`` runs as a subprocess on CPU with the ``polylens`` script beside this Python; the
  8-GPU line (``--nproc_per_node 8 ... --device cuda``) cannot run without 8 GPUs, so it runs with
  ``--nproc_per_node 2`` and without ``--device cuda`` (gloo), the flags only a GPU machine needs;
- ``make demo`` and ``make test`` run as ``make -n`` (a dry run: the targets exist and their
  recipes expand), and each ``polylens`` line of the demo recipe must parse with the real parser;
  running them would set up a virtual environment and run the demo and the whole suite.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
SCALE = "0.002"  # 4 096 000 default SAE samples -> 8 192; 3000 toy steps -> 6


def documented_commands() -> dict[str, list[str]]:
    """Command (normalised: tokens joined by one space) -> the docs that show it."""
    found: dict[str, list[str]] = {}
    for path in DOCS:
        in_shell, pending = False, ""
        for line in path.read_text(encoding="utf-8").splitlines():
            fence = re.match(r"^\s*```(\w*)", line)
            if fence:
                in_shell = not in_shell and fence.group(1) in ("bash", "sh")
                continue
            if not in_shell:
                continue
            line = pending + line
            if line.rstrip().endswith("\\"):
                pending = line.rstrip()[:-1] + " "
                continue
            pending = ""
            tokens = shlex.split(line, comments=True)
            if not tokens or any("[" in t or "|" in t for t in tokens):
                continue  # blank, or a usage synopsis
            found.setdefault(" ".join(tokens), []).append(path.relative_to(ROOT).as_posix())
    return found


@dataclass(frozen=True)
class Case:
    check: Callable[[Path, str], None]
    """Called with the command's folder and its stdout once it exited 0."""
    needs: tuple[str, ...] = ()
    """Commands whose outputs this one reads (run first; their folders are linked in)."""
    extra: tuple[str, ...] = ()
    """Flags appended to every ``polylens`` call of the line, and why (see the module docstring)."""
    replace: dict[str, str] = field(default_factory=dict)
    """Substrings of the line replaced before it runs (see the module docstring)."""
    corpus: int = 20_000
    """Characters of text in the folder's ``corpus.txt`` (about 4 a token)."""


# ---- checks: what each command must write ---------------------------------------------------------


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


def _cluster_folder(folder: Path, n_points: int | None = None, labelled: bool = False) -> dict:
    report = _json(folder / "clusters.json")
    labels = np.load(folder / "labels.npy")
    assert labels.shape == (report["n_points"],)
    assert (folder / "report.html").read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")
    if n_points is not None:
        assert report["n_points"] == n_points
    assert (report["on"]["codes"]["nmi"] is not None) == labelled  # scored against labels where there are some
    return report


def check_digits_clusters(d: Path, out: str) -> None:
    _cluster_folder(d / "digits-clusters", 1797, labelled=True)
    assert "1797 points" in out


def check_gpt2_clusters(d: Path, out: str) -> None:
    report = _cluster_folder(d / "gpt2-clusters", 8 * 6, labelled=True)  # labels: token, next token, position
    assert report["layer"] == "blocks.6.mlp.hook_pre"
    assert "purity" in out  # a number, or n/a where every point is noise


def check_inception_clusters(d: Path, out: str) -> None:
    report = _cluster_folder(d / "inception-clusters", 12, labelled=True)  # by predicted class
    assert report["layer"].startswith("mixed4a")


def check_trained_clusters(out_dir: str, n_points: int, layer: str) -> Callable[[Path, str], None]:
    """A trained-model (or twin) cluster run: its folder, and its --json summary agreeing with clusters.json."""

    def check(d: Path, out: str) -> None:
        report = _cluster_folder(d / out_dir, n_points, labelled=True)  # predicted class, or token and position
        assert report["layer"] == layer
        summary = _json(d / f"{out_dir}.json")
        assert summary["out"] == out_dir and {k: summary[k] for k in report if k != "clusters"} == {
            k: v for k, v in report.items() if k != "clusters"
        }

    return check


def check_big_clusters(d: Path, out: str) -> None:
    report = _cluster_folder(d / "big-clusters", 360)
    assert set(report["on"]) == {"codes"} or report["on"].get("activations") is None


def check_compare_x2(d: Path, out: str) -> None:
    _png(d / "compare_x2.png")
    for method in ("activation_pca", "gradient_pca", "lib", "sae", "gradient_sae", "gsae"):
        assert f"\n{method} " in out


def check_compare_relu2(d: Path, out: str) -> None:
    _png(d / "relu2.png")
    result = _json(d / "relu2.json")
    assert result["layer"] == "relu2" and result["n_inputs"] == 360 and result["k"] == 10
    assert set(result["methods"]) == {"activation_pca", "gradient_pca", "lib", "sae", "gradient_sae", "gsae", "random"}


def check_compare_gpt2(d: Path, out: str) -> None:
    assert "blocks.6.mlp.hook_post" in out and "target loss" in out
    assert "gradient_pca" in out and "random" in out


def check_codes(d: Path, out: str) -> None:
    from polylens.lens.codes import SplineCodes

    codes = SplineCodes.load(str(d / "codes.npz"))
    assert len(codes) == 360 and codes.layer_names == ["conv2", "fc1"]
    assert out.startswith("360 inputs")


def check_density(d: Path, out: str) -> None:
    _png(d / "density.png")
    assert "crossings (exact" in out


def _sae_run(folder: Path, d_in: int, dict_size: int) -> dict:
    run = _json(folder / "run.json")
    cfg = _json(folder / "saelens" / "cfg.json")
    assert (cfg["d_in"], cfg["d_sae"]) == (d_in, dict_size)
    assert (folder / "checkpoint.safetensors").is_file()
    return run


def check_sae_sharkey(d: Path, out: str) -> None:
    run = _sae_run(d / "sae-run", 256, 1024)
    assert 0 <= run["evaluation"]["mmcs_signed"] <= 1  # ground truth: the recovery metrics exist
    assert out.startswith("trained ")


def _store(folder: Path, width: int, gradients: bool) -> dict:
    manifest = _json(folder / "manifest.json")
    assert manifest["complete"] and manifest["width"] == width and manifest["rows"] > 0
    assert bool(manifest["gradients"]) == gradients
    return manifest


def check_digits_store(d: Path, out: str) -> None:
    manifest = _store(d / "digits-conv2", 32, gradients=True)
    assert manifest["rows"] == 360 * 4 * 4  # 360 digits, conv2's 4 x 4 positions


def check_digits_store_and_sae(d: Path, out: str) -> None:
    check_digits_store(d, out)
    _sae_run(d / "conv2-sae", 32, 128)


def check_gpt2_store(d: Path, out: str) -> None:
    manifest = _store(d / "gpt2-l6", 128, gradients=False)
    assert manifest["layer"] == "blocks.6.mlp.hook_pre" and manifest["context"] == 128


def check_gpt2_sae(d: Path, out: str) -> None:
    run = _sae_run(d / "sae-l6", 128, 24576)
    assert run["sae"]["arch"] == "topk" and run["sae"]["k"] == 32


def check_spliced(name: str, d_in: int, dict_size: int, kind: str) -> Callable[[Path, str], None]:
    def check(d: Path, out: str) -> None:
        r = _json(d / name)
        assert (r["d_in"], r["dict_size"], r["output_kind"]) == (d_in, dict_size, kind) and r["n_rows"] > 0
        # a few hundred samples under the docs tests' scale: the SAE is barely trained, its EV may be < 0
        assert r["kl_div"] >= 0 and r["kl_div_zero_ablation"] > 0 and r["explained_variance"] <= 1 + 1e-9
        assert (r["ce_loss_recovered"] is not None) == (kind == "next_token")
        assert (r["accuracy_clean"] is not None) == (kind == "classes")  # the digits carry labels
        assert "spliced into" in out

    return check


def check_digits_kl(d: Path, out: str) -> None:
    run = _sae_run(d / "conv2-sae-kl", 32, 128)
    assert run["train"]["loss"] == "kl" and run["data"]["start"].endswith("conv2-sae")
    assert "end to end (kl)" in out


def check_minilm_pairs(d: Path, out: str) -> None:
    manifest = _store(d / "minilm-mlp1", 384, gradients=False)
    assert manifest["pairs"] == {"layer": "blocks.1.hook_mlp_out", "width": 384} and manifest["rows"] == 50_000
    assert "paired with blocks.1.hook_mlp_out" in out


def check_minilm_transcoder(d: Path, out: str) -> None:
    run = _sae_run(d / "minilm-tc1", 384, 3072)
    cfg = _json(d / "minilm-tc1" / "saelens" / "cfg.json")
    assert cfg["architecture"] == "jumprelu_skip_transcoder" and cfg["d_out"] == 384
    assert run["sae"]["d_out"] == 384 and run["sae"]["skip"] and run["evaluation"]["l0"] > 0


def check_minilm_transcoder_spliced(d: Path, out: str) -> None:
    r = _json(d / "minilm-tc1.json")
    assert (r["layer"], r["pair_layer"], r["d_in"], r["d_out"]) == (
        "blocks.1.hook_resid_mid",
        "blocks.1.hook_mlp_out",
        384,
        384,
    )
    assert r["n_inputs"] == 50 and 0 < r["cosine_kept_zero_ablation"] < 1 and r["cosine_kept"] <= 1 + 1e-9
    assert "transcoder" in out and "-> blocks.1.hook_mlp_out" in out


def check_gpt2_sweep(l1s: int, ratios: tuple[int, ...]) -> Callable[[Path, str], None]:
    def check(d: Path, out: str) -> None:
        sweep = _json(d / "sweep-l6" / "sweep.json")
        assert len(sweep["cells"]) == l1s * len(ratios)
        assert sorted({c["dict_size"] for c in sweep["cells"]}) == [128 * r for r in ratios]  # ratios x width 128
        assert (d / "sweep-l6" / "sweep.png").is_file()

    return check


def check_make_demo(d: Path, out: str) -> None:
    from cli.main import build_parser

    lines = [line for line in out.splitlines() if "/polylens " in line]
    assert len(lines) >= 2, out
    for line in lines:
        build_parser().parse_args(shlex.split(line)[1:])  # a flag the parser refuses exits here


def check_make_test(d: Path, out: str) -> None:
    assert "pytest" in out


GPT2 = ("--weights", "{gpt2}")
CACHE_GPT2 = (
    "polylens cache --model gpt2 --layer blocks.6.mlp.hook_pre --input corpus.txt --tokens 10000000 --out gpt2-l6"
)
CODES = "polylens codes --layer conv2,fc1 --n 360 --out codes.npz"
DIGITS_SAE = (
    "polylens cache --layer conv2 --gradients logit --out digits-conv2 && "
    "polylens sae train --data digits-conv2 --dict-size 128 --samples 200000 --out conv2-sae"
)
SAE_L6 = "polylens sae train --data gpt2-l6 --arch topk --k 32 --dict-size 24576 --out sae-l6"
DIGITS_KL = "polylens sae train --data digits-conv2 --finetune conv2-sae --loss kl --samples 200000 --out conv2-sae-kl"
CACHE_PAIRS = (
    "polylens cache --model minilm-l6 --layer blocks.1.hook_resid_mid --pair-layer blocks.1.hook_mlp_out "
    "--input corpus:english --tokens 50000 --out minilm-mlp1"
)
TRANSCODER = (
    "polylens sae train --data minilm-mlp1 --transcoder --skip --arch batchtopk --k 32 --dict-size 3072 "
    "--out minilm-tc1"
)

CASES: dict[str, Case] = {
    "make demo": Case(check_make_demo),
    "make test": Case(check_make_test),
    "polylens cluster --out digits-clusters": Case(check_digits_clusters),
    "polylens cluster --model gpt2 --layer blocks.6.mlp.hook_pre --input texts/ --out gpt2-clusters": Case(
        check_gpt2_clusters, extra=GPT2
    ),
    "polylens cluster --model inceptionv1 --weights url --layer mixed4a --input photos/ --out inception-clusters": Case(
        check_inception_clusters, replace={"--weights url": "--random-weights"}
    ),
    # docs/trained-models.md: the trained networks and their twins, at the sizes printed
    **{
        f"polylens cluster --model efficientnet-lite0{twin} --layer _blocks.10._bn0 --n 500 "
        f"--out cluster-cnn-10-{name} --json cluster-cnn-10-{name}.json": Case(
            check_trained_clusters(f"cluster-cnn-10-{name}", 500, "_blocks.10._bn0")
        )
        for twin, name in (("", "trained"), (" --random-weights", "twin"))
    },
    **{
        f"polylens cluster --model minilm-l6{twin} --layer blocks.3.mlp.hook_pre --input english.txt "
        f"--max-sequences 200 --out cluster-text-3-{name} --json cluster-text-3-{name}.json": Case(
            check_trained_clusters(f"cluster-text-3-{name}", 1200, "blocks.3.mlp.hook_pre")
        )
        for twin, name in (("", "trained"), (" --random-weights", "twin"))
    },
    "polylens cluster --codes codes.npz --on codes --sample 50000 --out big-clusters": Case(
        check_big_clusters, needs=(CODES,)
    ),
    "polylens compare --setup x2 --plot compare_x2.png": Case(check_compare_x2),
    "polylens compare --model digits --layer relu2 --json relu2.json --plot relu2.png": Case(check_compare_relu2),
    # a short corpus.txt: each of GPT-2's outputs is a 50 257-way distribution and the ablations score
    # dozens of them, so `--n 64` takes the 1 or 2 contexts this text holds
    "polylens compare --model gpt2 --layer blocks.6.mlp.hook_post --input corpus.txt --n 64 --target loss": Case(
        check_compare_gpt2, extra=GPT2, corpus=800
    ),
    CODES: Case(check_codes),
    "polylens density --layer relu1 --from 0 --to 5 --plot density.png": Case(check_density),
    "polylens sae train --dict-size 1024 --samples 1500000 --out sae-run": Case(check_sae_sharkey),
    "polylens cache --layer conv2 --gradients logit --out digits-conv2": Case(check_digits_store),
    DIGITS_SAE: Case(check_digits_store_and_sae),
    "polylens sae eval conv2-sae --model digits --layer conv2 --json conv2-spliced.json": Case(
        check_spliced("conv2-spliced.json", 32, 128, "classes"), needs=(DIGITS_SAE,)
    ),
    CACHE_GPT2: Case(check_gpt2_store, extra=GPT2),
    DIGITS_KL: Case(check_digits_kl, needs=(DIGITS_SAE,)),
    "polylens sae eval conv2-sae-kl --model digits --layer conv2 --json conv2-kl-spliced.json": Case(
        check_spliced("conv2-kl-spliced.json", 32, 128, "classes"), needs=(DIGITS_KL,)
    ),
    CACHE_PAIRS: Case(check_minilm_pairs),
    TRANSCODER: Case(check_minilm_transcoder, needs=(CACHE_PAIRS,)),
    "polylens sae eval minilm-tc1 --model minilm-l6 --layer blocks.1.hook_resid_mid --input corpus:english --n 50 "
    "--json minilm-tc1.json": Case(check_minilm_transcoder_spliced, needs=(TRANSCODER,)),
    SAE_L6: Case(check_gpt2_sae, needs=(CACHE_GPT2,)),
    "polylens sae eval sae-l6 --model gpt2 --layer blocks.6.mlp.hook_pre --input corpus.txt --n 64 "
    "--json sae-l6-spliced.json": Case(
        check_spliced("sae-l6-spliced.json", 128, 24576, "next_token"), needs=(SAE_L6,), extra=GPT2, corpus=800
    ),
    "polylens sae sweep --data gpt2-l6 --l1s 0.3,1,3 --ratios 2,4,8 --out sweep-l6": Case(
        check_gpt2_sweep(3, (2, 4, 8)), needs=(CACHE_GPT2,)
    ),
    "torchrun --nproc_per_node 8 .venv/bin/polylens sae train --data gpt2-l6 --arch topk --k 32 --dict-size 24576 "
    "--batch-size 4096 --device cuda --out sae-l6": Case(
        check_gpt2_sae,
        needs=(CACHE_GPT2,),
        replace={"--nproc_per_node 8": "--nproc_per_node 2", " --device cuda": ""},
    ),
    "torchrun --nproc_per_node 2 .venv/bin/polylens sae sweep --data gpt2-l6 --l1s 0.3,1,3 --ratios 2,4 "
    "--out sweep-l6": Case(check_gpt2_sweep(3, (2, 4)), needs=(CACHE_GPT2,)),
}


def test_every_documented_command_has_a_case():
    missing = {cmd: where for cmd, where in documented_commands().items() if cmd not in CASES}
    assert not missing, f"documented commands with no case in tests/test_docs.py: {missing}"


def test_every_case_is_documented():
    assert set(CASES) <= set(documented_commands())


# ---- running them ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, digits):
    """corpus.txt, texts/, photos/ and the tiny GPT-2 folder, made once."""
    import pydoc_data.topics

    import torch
    from PIL import Image
    from transformers import GPT2Config, GPT2LMHeadModel

    from polylens.models.images import sample_images

    root = tmp_path_factory.mktemp("doc-inputs")
    text = "\n\n".join(pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics))
    (root / "text.txt").write_text(text, encoding="utf-8")
    (root / "texts").mkdir()
    for i in range(4):
        (root / "texts" / f"part{i}.txt").write_text(text[6000 * i : 6000 * (i + 1)], encoding="utf-8")
    from polylens.models.corpus import english_text

    (root / "english.txt").write_text(english_text(), encoding="utf-8")  # as docs/trained-models.md writes it
    (root / "photos").mkdir()
    crops = sample_images(6)
    for i, img in enumerate([*crops, *crops.flip(-1)]):  # 12 images: HDBSCAN's smallest cluster is 10
        pixels = (img.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / "photos" / f"crop{i:02d}.png")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=12, n_embd=32, n_head=2, n_positions=1024, vocab_size=50257)
    GPT2LMHeadModel(config).eval().save_pretrained(root / "gpt2-tiny")
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_line(line: str, case: Case, folder: Path, inputs: Path, capsys) -> str:
    """Run one documented line in ``folder``; its stdout (every step must exit 0)."""
    from cli.main import main

    for old, new in case.replace.items():
        assert old in line, (old, line)
        line = line.replace(old, new)
    if line.startswith("make "):
        done = subprocess.run(["make", "-n", *shlex.split(line)[1:]], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout
    extra = [flag.format(gpt2=inputs / "gpt2-tiny") for flag in case.extra]
    outs = []
    for step in line.split(" && "):
        tokens = shlex.split(step)
        if tokens[0] == "torchrun":
            tokens = [
                str(BIN / "torchrun"),
                *[str(BIN / "polylens") if t == ".venv/bin/polylens" else t for t in tokens[1:]],
            ]
            env = {
                **os.environ,
                "OMP_NUM_THREADS": "1",
                "PET_MASTER_ADDR": "127.0.0.1",  # torchrun's own flags, by environment: the line stays as printed
                "PET_MASTER_PORT": str(_free_port()),
            }
            done = subprocess.run([*tokens, *extra], cwd=folder, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            outs.append(done.stdout)
            continue
        assert tokens[0] == "polylens", step
        cwd = os.getcwd()
        os.chdir(folder)
        try:
            code = main([*tokens[1:], *extra])
        finally:
            os.chdir(cwd)
        captured = capsys.readouterr()
        assert code == 0, captured.err[-3000:]
        outs.append(captured.out)
    return "".join(outs)


_done: dict[str, Path] = {}


def _run_case(line: str, inputs: Path, tmp_path_factory, capsys) -> tuple[Path, str]:
    case = CASES[line]
    folder = tmp_path_factory.mktemp("doc-run")
    for name in ("texts", "photos", "english.txt"):
        (folder / name).symlink_to(inputs / name)
    (folder / "corpus.txt").write_text(
        (inputs / "text.txt").read_text(encoding="utf-8")[: case.corpus], encoding="utf-8"
    )
    for need in case.needs:
        if need not in _done:
            _run_case(need, inputs, tmp_path_factory, capsys)
        for item in _done[need].iterdir():
            if not (folder / item.name).exists():
                (folder / item.name).symlink_to(item)
    out = _run_line(line, case, folder, inputs, capsys)
    _done[line] = folder
    return folder, out


@pytest.mark.parametrize("line", list(CASES))
def test_documented_command_runs(line, inputs, tmp_path_factory, capsys, monkeypatch):
    monkeypatch.setenv("POLYLENS_SAMPLE_SCALE", SCALE)
    folder, out = _run_case(line, inputs, tmp_path_factory, capsys)
    CASES[line].check(folder, out)
