"""Trained network versus its random-weights twin: the same commands, inputs and seed on both.

For EfficientNet-Lite0 (ImageNet CNN, ReLU6) and all-MiniLM-L6-v2 (sentence encoder, GELU), and for
each one's seeded ``--random-weights`` twin, this runs

1. ``polylens cluster`` at two CNN depths (``_blocks.5._bn0``, ``_blocks.10._bn0``) on the bundled images;
2. ``polylens cluster`` at two MiniLM depths (``blocks.1``, ``blocks.3.mlp.hook_pre``) on English text;
3. ``polylens compare`` at the same two CNN depths and at MiniLM's ``blocks.1`` and ``blocks.4.mlp.hook_post``;

and writes ``DIR/results.json`` (every command, its wall time and its JSON), ``DIR/summary.md``
(trained | twin tables) and each command's folder and output under ``DIR``. The commands run
in this process (``cli.main.main``), one after another; wall times leave out Python's start-up.

Run: .venv/bin/python examples/trained_vs_twin.py --out DIR              # SAEs on the CNN only (default)
     .venv/bin/python examples/trained_vs_twin.py --out DIR --sae none   # no SAEs: minutes
     .venv/bin/python examples/trained_vs_twin.py --out DIR --quick      # tiny sizes, one layer each, no SAEs

One torch thread by default (``--threads``): on a shared 2-core machine, two threads that wait on
each other's cores spin, and a compare measured 1.3 s with one thread took 37 s with two.
``--resume`` keeps the commands already done in DIR (same command line) with their recorded times.
The measured tables are in docs/trained-models.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

CNN = "efficientnet-lite0"
TEXT = "minilm-l6"
CNN_LAYERS = ("_blocks.5._bn0", "_blocks.10._bn0")  # shallower, the default
TEXT_CLUSTER_LAYERS = ("blocks.1.mlp.hook_pre", "blocks.3.mlp.hook_pre")  # shallower, the default
TEXT_COMPARE_LAYERS = ("blocks.1.mlp.hook_post", "blocks.4.mlp.hook_post")
PAIR = ("trained", "twin")
SPACES = ("codes", "activations", "activations_cosine")
COMPARE_METHODS = ("activation_pca", "gradient_pca", "lib", "sae", "gradient_sae", "gsae", "random")

FULL = {"layers": 2, "images": 500, "sequences": 200, "cnn_n": 64, "text_n": 32, "context": 128, "k": 8, "chars": None}
QUICK = {"layers": 1, "images": 12, "sequences": 4, "cnn_n": 2, "text_n": 2, "context": 32, "k": 2, "chars": 12_000}


def machine() -> dict:
    import torch

    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": model,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run(argv: list[str], log: Path, threads: int) -> float:
    """Run one ``polylens`` command in this process with ``threads`` torch threads (set afresh each
    time: a library called by an earlier command may have changed them); its wall time in seconds."""
    import torch

    from cli.main import main

    torch.set_num_threads(threads)
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    seconds = time.perf_counter() - start
    log.write_text(f"$ polylens {shlex.join(argv)}\n{out.getvalue()}{err.getvalue()}", encoding="utf-8")
    if code != 0:
        raise SystemExit(f"polylens {shlex.join(argv)} exited {code}:\n{err.getvalue()[-2000:]}")
    return seconds


def commands(size: dict, text: str, sae: str) -> list[dict]:
    """Every command, trained then twin, as ``{"name", "kind", "model", "twin", "layer", "argv"}``."""
    cnn_sae = [] if sae in ("all", "cnn") else ["--no-sae"]
    text_sae = [] if sae == "all" else ["--no-sae"]
    found = []
    for twin in (False, True):
        model_flags = ["--random-weights"] if twin else []
        tag = "twin" if twin else "trained"
        for layer in CNN_LAYERS[: size["layers"]]:
            name = f"cluster-cnn-{layer.split('.')[1]}-{tag}"
            argv = ["cluster", "--model", CNN, *model_flags, "--layer", layer, "--n", str(size["images"])]
            argv += ["--out", name, "--json", f"{name}.json"]
            found.append({"name": name, "kind": "cluster", "model": CNN, "twin": twin, "layer": layer, "argv": argv})
        for layer in TEXT_CLUSTER_LAYERS[: size["layers"]]:
            name = f"cluster-text-{layer.split('.')[1]}-{tag}"
            argv = ["cluster", "--model", TEXT, *model_flags, "--layer", layer, "--input", text]
            argv += ["--max-sequences", str(size["sequences"]), "--out", name, "--json", f"{name}.json"]
            found.append({"name": name, "kind": "cluster", "model": TEXT, "twin": twin, "layer": layer, "argv": argv})
        for layer in CNN_LAYERS[: size["layers"]]:
            name = f"compare-cnn-{layer.split('.')[1]}-{tag}"
            argv = ["compare", "--model", CNN, *model_flags, "--layer", layer, "--n", str(size["cnn_n"])]
            argv += ["--k", str(size["k"]), *cnn_sae, "--json", f"{name}.json"]
            found.append({"name": name, "kind": "compare", "model": CNN, "twin": twin, "layer": layer, "argv": argv})
        for layer in TEXT_COMPARE_LAYERS[: size["layers"]]:
            name = f"compare-text-{layer.split('.')[1]}-{tag}"
            argv = ["compare", "--model", TEXT, *model_flags, "--layer", layer, "--input", text]
            argv += ["--n", str(size["text_n"]), "--context", str(size["context"]), "--k", str(size["k"]), *text_sae]
            argv += ["--json", f"{name}.json"]
            found.append({"name": name, "kind": "compare", "model": TEXT, "twin": twin, "layer": layer, "argv": argv})
    return found


def photo_scores(folder: Path, n: int) -> dict:
    """Each space's clusters scored against the photograph each bundled image was cropped from
    (image i is photo i mod the number of photos): a label that does not come from the model."""
    import numpy as np

    from polylens.clustering.analysis import score
    from polylens.models.images import bundled_photos

    truth = {"photo": np.arange(n) % len(bundled_photos())}
    files = {"codes": "labels.npy", "activations": "labels_activations.npy"}
    files["activations_cosine"] = "labels_activations_cosine.npy"
    return {space: score(np.load(folder / f), truth) for space, f in files.items() if (folder / f).exists()}


def _spread(acts) -> dict:
    """Mean |value| and mean (over units) standard deviation across inputs of ``[n, units]``."""
    return {"mean_abs": float(acts.abs().mean()), "std_over_inputs": float(acts.std(0).mean())}


def cnn_signal(twin: bool, n: int) -> dict:
    """Does the CNN's state depend on its input? Predicted-class diversity (the cluster labels),
    the spread of the logits and of each clustered layer's channels at the centre position."""
    import numpy as np
    import torch

    from polylens.capture import capture
    from polylens.models import load_model

    adapter = load_model(CNN, random_weights=twin)
    x = adapter.default_inputs(n)
    with torch.no_grad():
        logits = torch.cat([adapter.module(x[i : i + 32]) for i in range(0, n, 32)])
    _, counts = np.unique(logits.argmax(1).numpy(), return_counts=True)
    found = {
        "n": int(n),
        "distinct_classes": int(len(counts)),
        "largest_class_share": float(counts.max() / n),
        "mean_max_probability": float(logits.softmax(1).max(1).values.mean()),
        "logits": _spread(logits),
    }
    for layer in CNN_LAYERS:
        acts = torch.cat([capture(adapter.module, x[i : i + 32], [layer]).activations[layer] for i in range(0, n, 32)])
        h, w = acts.shape[2] // 2, acts.shape[3] // 2
        found[layer] = _spread(acts[:, :, h, w])
    return found


def text_signal(twin: bool, text: str, n: int, context: int) -> dict:
    """The same for MiniLM on ``n`` windows of ``context`` tokens of ``text``: the sentence
    embeddings' mean pairwise cosine and each clustered layer's spread over all tokens."""
    import torch

    from polylens.capture import capture
    from polylens.models import load_model

    adapter = load_model(TEXT, random_weights=twin)
    windows = [w for w in adapter.windows(adapter.tokenize(text), context) if len(w) == context][:n]
    x = torch.tensor(windows, dtype=torch.long)
    with torch.no_grad():
        emb = torch.nn.functional.normalize(adapter.module(x).reshape(len(windows), -1).double(), dim=1)
    cos = emb @ emb.T
    off = ~torch.eye(len(windows), dtype=torch.bool)
    found = {"n": len(windows), "context": context, "embedding_mean_pairwise_cos": float(cos[off].mean())}
    for layer in TEXT_CLUSTER_LAYERS:
        acts = capture(adapter.module, x, [layer]).activations[layer]
        found[layer] = _spread(acts.reshape(-1, acts.shape[-1]))
    return found


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 10 ** (-digits) or value == 0 else f"{value:.1e}"
    return str(value)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def pair(results: dict, kind: str, model: str, layer: str) -> tuple[dict, dict] | None:
    got = {r["twin"]: r for r in results.values() if (r["kind"], r["model"], r["layer"]) == (kind, model, layer)}
    return (got[False], got[True]) if got else None  # None: a layer --quick leaves out


def signal_table(signal: dict) -> str:
    cnn, text = signal[CNN], signal[TEXT]
    rows = [
        [f"{CNN}: distinct predicted classes (of {cnn['trained']['n']})", *(cnn[t]["distinct_classes"] for t in PAIR)],
        [f"{CNN}: largest predicted class's share", *(cnn[t]["largest_class_share"] for t in PAIR)],
        [f"{CNN}: mean top-1 probability", *(cnn[t]["mean_max_probability"] for t in PAIR)],
        [f"{CNN}: logits, mean std over inputs", *(cnn[t]["logits"]["std_over_inputs"] for t in PAIR)],
    ]
    for layer in CNN_LAYERS:
        rows.append([f"{CNN} `{layer}` (centre): mean abs", *(cnn[t][layer]["mean_abs"] for t in PAIR)])
        rows.append(
            [f"{CNN} `{layer}` (centre): mean std over inputs", *(cnn[t][layer]["std_over_inputs"] for t in PAIR)]
        )
    n = f"{text['trained']['n']} windows of {text['trained']['context']} tokens"
    rows.append([f"{TEXT}: embedding mean pairwise cos ({n})", *(text[t]["embedding_mean_pairwise_cos"] for t in PAIR)])
    for layer in TEXT_CLUSTER_LAYERS:
        rows.append([f"{TEXT} `{layer}`: mean abs", *(text[t][layer]["mean_abs"] for t in PAIR)])
        rows.append([f"{TEXT} `{layer}`: mean std over tokens", *(text[t][layer]["std_over_inputs"] for t in PAIR)])
    return table(["", "trained", "twin"], rows)


def cluster_tables(results: dict, model: str, layers: tuple[str, ...], labels: tuple[str, ...]) -> str:
    parts = []
    for layer in layers:
        if not pair(results, "cluster", model, layer):
            continue
        trained, twin = pair(results, "cluster", model, layer)
        a, b = trained["json"], twin["json"]
        rows = []
        for space in SPACES:
            sa, sb = a["on"].get(space), b["on"].get(space)
            if sa is None or sb is None:
                continue
            rows.append([f"{space}: clusters", sa["n_clusters"], sb["n_clusters"]])
            rows.append([f"{space}: noise fraction", sa["noise_frac"], sb["noise_frac"]])
            for label in labels:
                for metric in ("purity", "nmi", "ari"):
                    rows.append(
                        [f"{space}: {metric} ({label})", sa["by_label"][label][metric], sb["by_label"][label][metric]]
                    )
        rows.append(["ARI codes vs activations", a.get("agreement_ari"), b.get("agreement_ari")])
        rows.append(["ARI codes vs activations_cosine", a.get("agreement_ari_cosine"), b.get("agreement_ari_cosine")])
        counts = [f"{r['n_points']} / {r['n_unique_codes']}" for r in (a, b)]
        rows.append(["points / distinct codes", *counts])
        rows.append(["wall time (s)", trained["seconds"], twin["seconds"]])
        parts.append(f"**{model} `{layer}`**\n\n" + table(["", "trained", "twin"], rows))
    return "\n\n".join(parts)


def compare_tables(results: dict, model: str, layers: tuple[str, ...], change: str) -> str:
    parts = []
    for layer in layers:
        if not pair(results, "compare", model, layer):
            continue
        trained, twin = pair(results, "compare", model, layer)
        a, b = trained["json"], twin["json"]
        k = a["k"]
        rows = []
        for method in COMPARE_METHODS:
            ma, mb = a["methods"].get(method), b["methods"].get(method)
            if ma is None or mb is None:
                continue
            ca = ma["ablation"][change][-1] if ma.get("ablation") else None
            cb = mb["ablation"][change][-1] if mb.get("ablation") else None
            row = [method, ma["activation_variance"], mb["activation_variance"], ma["gradient_energy"]]
            rows.append([*row, mb["gradient_energy"], ca, cb])
        head = ["method", "act. var. trained", "twin", "grad. energy trained", "twin", f"{change}@{k} trained", "twin"]
        note = f"{a['n_inputs']} inputs, {a['n_rows']} rows of width {a['width']}, target {a['target']}"
        times = f"wall time: trained {trained['seconds']:.0f} s, twin {twin['seconds']:.0f} s"
        parts.append(f"**{model} `{layer}`** ({note}; {times})\n\n" + table(head, rows))
    return "\n\n".join(parts)


def change_key(result: dict) -> str:
    """The ablation's output-change field: KL for class logits, 1 - cos for a sentence encoder."""
    ablation = next(m["ablation"] for m in result["methods"].values() if m.get("ablation"))
    return next(key for key in ablation if key not in ("k", "activation_variance", "gradient_energy", "accuracy_drop"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one layer each, no SAEs: a smoke test")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine, threads that wait on each other's cores spin)",
    )
    parser.add_argument(
        "--sae",
        choices=("all", "cnn", "none"),
        default="cnn",
        help="which compare runs train the three SAEs (default cnn: on MiniLM's 1536-wide layers they took "
        "over 45 min a run on one thread, so MiniLM runs --no-sae); --quick: none",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep each command whose JSON and logs/NAME.run.json (same command) are already in --out",
    )
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if (out / "results.json").exists() and not args.resume:
        raise SystemExit(f"{out / 'results.json'} exists; give a fresh --out (or --resume)")
    size = QUICK if args.quick else FULL
    sae = "none" if args.quick else args.sae

    from polylens.models.corpus import english_text

    text = english_text()
    if size["chars"]:
        text = text[: size["chars"]]
    (out / "english.txt").write_text(text, encoding="utf-8")

    import torch

    torch.set_num_threads(args.threads)
    info = {"machine": machine(), "size": size, "sae": sae, "runs": {}}
    os.chdir(out)
    (out / "logs").mkdir(exist_ok=True)
    for cmd in commands(size, "english.txt", sae):
        cmd["command"] = "polylens " + shlex.join(cmd["argv"])
        meta = out / "logs" / f"{cmd['name']}.run.json"
        kept = json.loads(meta.read_text()) if args.resume and meta.exists() else {}
        if kept.get("command") == cmd["command"] and Path(f"{cmd['name']}.json").exists():
            cmd["seconds"], cmd["threads"] = kept["seconds"], kept["threads"]
        else:
            log = out / "logs" / f"{cmd['name']}.txt"
            cmd["seconds"] = run([*cmd["argv"], "--no-progress", "--force"], log, args.threads)
            cmd["threads"] = args.threads
            meta.write_text(json.dumps({k: cmd[k] for k in ("command", "seconds", "threads")}), encoding="utf-8")
        cmd["json"] = json.loads(Path(f"{cmd['name']}.json").read_text())
        if cmd["kind"] == "cluster" and cmd["model"] == CNN:
            for space, scores in photo_scores(out / cmd["name"], size["images"]).items():
                cmd["json"]["on"][space]["by_label"].update(scores)
        info["runs"][cmd["name"]] = cmd
        print(f"{cmd['seconds']:7.1f} s  {cmd['command']}", flush=True)
    info["signal"] = {
        CNN: {tag: cnn_signal(twin, size["images"]) for tag, twin in (("trained", False), ("twin", True))},
        TEXT: {
            tag: text_signal(twin, text, size["text_n"], size["context"])
            for tag, twin in (("trained", False), ("twin", True))
        },
    }
    (out / "results.json").write_text(json.dumps(info, indent=1), encoding="utf-8")

    runs = info["runs"]
    cnn_change = change_key(next(r["json"] for r in runs.values() if r["kind"] == "compare" and r["model"] == CNN))
    text_change = change_key(next(r["json"] for r in runs.values() if r["kind"] == "compare" and r["model"] == TEXT))
    m = info["machine"]
    summary = "\n\n".join(
        [
            f"Machine: {m['nproc']} CPUs ({m['cpu']}), torch {m['torch']} with {m['torch_threads']} threads, "
            f"Python {m['python']}. Sizes: {json.dumps(size)}; SAE: {info['sae']}.",
            "## Does the state depend on the input?",
            signal_table(info["signal"]),
            "## CNN clustering (labels: predicted class; source photograph, scored here from the saved labels)",
            cluster_tables(runs, CNN, CNN_LAYERS, ("class", "photo")),
            "## MiniLM clustering (labels: token, next token, position)",
            cluster_tables(runs, TEXT, TEXT_CLUSTER_LAYERS, ("token", "next_token", "position")),
            "## CNN compare",
            compare_tables(runs, CNN, CNN_LAYERS, cnn_change),
            "## MiniLM compare",
            compare_tables(runs, TEXT, TEXT_COMPARE_LAYERS, text_change),
        ]
    )
    (out / "summary.md").write_text(summary + "\n", encoding="utf-8")
    print(summary)
    print(f"\n-> {out / 'results.json'}, {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
