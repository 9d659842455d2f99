"""The points to cluster, as the Polytope Lens paper took them (Black et al. 2022, §3), per model.

Each protocol returns a ``LayerPoints``: the hard spline codes of one layer, the pre-activations
they come from (the same points, for clustering activations beside codes), labels where the data
has them, and what the report shows of each point (a token in its context, an image).

- ``text_points`` (GPT-2, MiniLM; ``gpt2_points`` is the same function): text from a file or a
  folder of ``.txt`` files, the model's own tokenizer, cut into sequences of ``seq_len`` tokens
  (1024, or the model's context if shorter; with the model's special tokens: GPT-2's BOS first,
  BERT's [CLS] first and [SEP] last); from each, ``per_seq`` = 6 positions evenly spaced after the
  first ``skip`` = 100: ``round(linspace(skip, L − 1, 6))`` for a sequence of L tokens before any
  trailing special token (a shorter last sequence gives its own six, and one of ``skip`` tokens or
  fewer gives none; ``notes`` say so). Code of ``blocks.L.mlp.hook_pre``.
- ``image_points`` (InceptionV1, EfficientNet-Lite0, torchvision): one vector per image of all
  channels of a layer at one spatial position (default the centre), from a folder of images or, for
  a model with them, its bundled images; labelled by the class the model predicts. A block name
  (``mixed4a``) means its output channels: the pre-activations of the branches its concatenation joins.
- ``digits_points``: the embedded CNN on all 1797 bundled digits, with their classes.
- ``array_points``: any model on inputs from an ``.npy``.
- ``codes_points``: codes already computed, from a file (no model run, so no activations).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from polylens.models.base import npy_error, read_npy

if TYPE_CHECKING:  # torch is imported where a model runs: codes from a file need none of it
    import torch

    from polylens.lens.codes import SplineCodes


@dataclass
class LayerPoints:
    """codes: ``SplineCodes`` [n]; activations: pre-activations ``[n, units]`` float32;
    labels: name → ``[n]`` int (e.g. ``class``; ``token``, ``next_token``, ``position``);
    label_names: name → id → readable string (token strings, class names), optional;
    examples: per point what a report shows: ``{"text": [str], "focus": int}`` or
    ``{"image": uint8 [h, w] or [h, w, 3]}`` or ``{"image_file": path}``; notes: what was taken."""

    model: str
    layer: str
    codes: SplineCodes
    activations: np.ndarray
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    label_names: dict[str, dict[int, str]] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _points(
    adapter,
    inputs: torch.Tensor,
    layers: list[str],
    *,
    position=None,
    batch_size: int = 64,
    progress: bool = False,
    unit: str = "input",
    outputs: list | None = None,
):
    """Codes and float activations ``[n, units]`` of ``inputs`` at ``layers``, a batch at a time
    (``outputs``: a list that gets the model's output of each batch, from the same pass)."""
    import torch

    from polylens.lens.codes import SplineCodes, layer_preactivations
    from polylens.progress import progress_bar

    bar = progress_bar(inputs.shape[0], f"{adapter.name} {','.join(layers)}", unit=unit, enabled=progress)
    parts: dict[str, list[torch.Tensor]] = {}
    for lo in range(0, inputs.shape[0], batch_size):
        names, pre = layer_preactivations(
            adapter, inputs[lo : lo + batch_size], layers, batch_size=batch_size, position=position, outputs=outputs
        )
        for n in names:
            parts.setdefault(n, []).append(pre[n])
        bar.update(min(batch_size, inputs.shape[0] - lo))
    bar.close()
    pre = {n: torch.cat(v) for n, v in parts.items()}
    kinds = {n: adapter.activation_layers[n] for n in pre}
    acts = torch.cat([z.reshape(z.shape[0], -1) for z in pre.values()], dim=1).float().numpy()
    return SplineCodes.from_preactivations(pre, kinds, provenance={"model": adapter.name, "layers": list(pre)}), acts


def _single_layer(adapter, layer: str | None, default: str | None = None) -> list[str]:
    layer = layer or default or list(adapter.activation_layers)[-1]
    adapter.check_layer(layer, allowed=list(adapter.activation_layers))
    return [layer]


def digits_points(adapter, layer: str | None = None, *, batch_size: int = 256, progress: bool = False) -> LayerPoints:
    """All 1797 bundled digits (``sklearn.datasets.load_digits``) at ``layer`` (default ``fc1``)."""
    import torch
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.from_numpy((data.images / 16.0).astype(np.float32)[:, None])
    layers = _single_layer(adapter, layer, "fc1")
    codes, acts = _points(adapter, x, layers, batch_size=batch_size, progress=progress, unit="img")
    images = (data.images / 16.0 * 255).astype(np.uint8)
    return LayerPoints(
        adapter.name,
        layers[0],
        codes,
        acts,
        labels={"class": data.target.astype(np.int64)},
        label_names={"class": {i: str(i) for i in range(10)}},
        examples=[{"image": img} for img in images],
    )


def array_points(
    adapter, layer: str | None, path: str | Path, *, batch_size: int = 64, progress: bool = False
) -> LayerPoints:
    """Inputs ``[n, ...]`` from an ``.npy`` (float; float64 is converted) at ``layer``."""
    import torch

    arr = read_npy(path, integers=True)
    if arr.ndim < 2:
        raise ValueError(
            f"input file {str(path)!r} must be shaped [n_inputs, ...] (one row an input), got shape {arr.shape}"
        )
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    layers = _single_layer(adapter, layer)
    codes, acts = _points(adapter, x, layers, batch_size=batch_size, progress=progress)
    return LayerPoints(
        adapter.name, layers[0], codes, acts, examples=[{"input": f"{Path(path).name}[{i}]"} for i in range(len(x))]
    )


def codes_points(path: str | Path, layer: str | None = None) -> LayerPoints:
    """The codes in a file: an ``.npz`` written by ``SplineCodes.save`` (``layer``: keep that
    layer's codes only) or a plain 0/1 ``.npy`` ``[n_points, n_units]``. No activations."""
    from polylens.lens.codes import LayerSlot, SplineCodes, pack_bits

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"codes file {str(path)!r}: no such file")
    if p.suffix == ".npz":
        codes = SplineCodes.load(str(p))
        if layer:
            codes = codes.layer(layer)
    elif p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"codes file {str(path)!r} is not a plain .npy array ({npy_error(err)})") from None
        if not isinstance(arr, np.ndarray):  # np.load opens a zip (an .npz) whatever the file is called
            arr.close()
            raise ValueError(f"codes file {str(path)!r} is an .npz archive, not a .npy array; give the .npz its name")
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"codes file {str(path)!r} must be shaped [n_points, n_units], got {arr.shape}")
        if arr.dtype.kind not in "biuf" or not np.isin(arr, (0, 1)).all():
            raise ValueError(
                f"codes file {str(path)!r} must hold only 0/1 values (spline codes); it holds other values "
                f"({arr.dtype})"
            )
        units = arr.shape[1]  # one ReLU layer "codes", a bit a unit, as SplineCodes.from_preactivations makes it
        layers = (LayerSlot("codes", "relu", 0, units, (units,)),)
        codes = SplineCodes(pack_bits(arr == 1), units, layers, None, {"model": f"codes file {p.name}"})
    else:
        raise ValueError(f"codes file {str(path)!r} must be a .npz written by SplineCodes.save or a 0/1 .npy")
    model = codes.provenance.get("model") or f"codes file {p.name}"
    return LayerPoints(
        model,
        ",".join(codes.layer_names),
        codes,
        None,
        examples=[{"input": i} for i in codes.provenance.get("input_ids", range(len(codes)))],
    )


def block_preactivation_layers(adapter, layer: str) -> list[str]:
    """The activation layers whose signs are ``layer``'s output channels: itself if it is one;
    for an InceptionV1 block (``mixed4a``) the pre-activations of the branches it concatenates."""
    acts = list(adapter.activation_layers)
    if layer in acts:
        return [layer]
    branches = [f"{layer}_{b}_pre_relu_conv" for b in ("1x1", "3x3", "5x5", "pool_reduce")]
    if all(b in acts for b in branches):
        return branches
    if f"{layer}_pre_relu_conv" in acts:
        return [f"{layer}_pre_relu_conv"]
    adapter.check_layer(layer, allowed=acts + [n for n in adapter.space_layers if n.startswith("mixed")])
    raise ValueError(f"layer {layer!r} has no pre-activations to code; use one of {', '.join(acts[:10])}, …")


def image_points(
    adapter,
    layer: str,
    folder: str | Path | None = None,
    *,
    n: int | None = None,
    position: tuple[int, int] | None = None,
    batch_size: int = 16,
    thumb: int = 64,
    progress: bool = False,
) -> LayerPoints:
    """One vector per image: all channels of ``layer`` at ``position`` (default centre), for the
    images in ``folder``, or (``folder=None``) the model's first ``n`` bundled images (default 500).
    Labelled by the class the model predicts (``class``), named by its ``describe_output``."""
    import torch
    from PIL import Image

    from polylens.models.images import image_files

    layers = block_preactivation_layers(adapter, layer)
    if folder is not None:
        files = image_files(folder)
        x = torch.cat([adapter.prepare(str(f)) for f in files])
        names = [f.name for f in files]
        source = f"{len(files)} images"
    else:
        if adapter.default_inputs is None:
            raise ValueError(f"model {adapter.name} has no bundled images; give a folder of images")
        x = adapter.default_inputs(n or 500)
        files, names = None, [f"bundled image {i}" for i in range(x.shape[0])]
        source = f"{x.shape[0]} bundled images (photographs, then seeded crops and flips)"
    if position is None:
        from polylens.capture import capture

        shape = capture(adapter.module, x[:1], layers[:1]).activations[layers[0]].shape
        if len(shape) != 4:
            raise ValueError(f"layer {layer!r} is not a conv layer [n, C, H, W]; image points need one")
        position = (shape[2] // 2, shape[3] // 2)
    outs = [] if adapter.output_kind == "classes" else None  # the class is read in the same pass
    codes, acts = _points(
        adapter, x, layers, position=position, batch_size=batch_size, progress=progress, unit="img", outputs=outs
    )
    labels, label_names = _predicted(adapter, outs)
    examples = []
    for i, name in enumerate(names):
        if files is not None:
            with Image.open(files[i]) as img:
                img = img.convert("RGB")
                img.thumbnail((thumb, thumb))
                pixels = np.asarray(img, dtype=np.uint8)
        else:
            small = torch.nn.functional.interpolate(x[i : i + 1].float().cpu(), size=(thumb, thumb), mode="area")[0]
            pixels = (small.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        examples.append({"image": pixels, "file": name})
    return LayerPoints(
        adapter.name,
        layer,
        codes,
        acts,
        labels=labels,
        label_names=label_names,
        examples=examples,
        notes=[f"{source}; channels of {layer} at position {position[0]},{position[1]}; labels: predicted class"],
    )


def _predicted(adapter, outputs: list | None) -> tuple[dict, dict]:
    """``({"class": predicted class [n]}, {"class": id → name})`` from the model's outputs (a list of
    batches), or empty where they are not class logits."""
    import torch

    if not outputs or not all(isinstance(o, torch.Tensor) for o in outputs):
        return {}, {}
    out = torch.cat(outputs)
    if out.dim() != 2:
        return {}, {}
    pred = out.argmax(1).cpu().numpy().astype(np.int64)
    names = adapter.describe_output(out) if adapter.describe_output else [str(int(c)) for c in pred]
    return {"class": pred}, {"class": {int(c): name for c, name in zip(pred, names)}}


def text_positions(length: int, per_seq: int = 6, skip: int = 100) -> np.ndarray:
    """The token positions taken from a sequence of ``length``: ``round(linspace(skip, length−1,
    per_seq))`` (distinct), none when ``length ≤ skip``."""
    if length <= skip:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.round(np.linspace(skip, length - 1, per_seq)).astype(np.int64))


def read_texts(path: str | Path) -> list[tuple[str, str]]:
    """``[(name, text)]`` from a text file or every ``.txt`` file in a folder (sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".txt" and p.is_file())
        if not files:
            raise ValueError(f"text folder {str(path)!r} holds no .txt files")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"text input {str(path)!r} does not exist")
    texts = []
    for f in files:
        try:
            texts.append((f.name, f.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            raise ValueError(f"{f} is not UTF-8 text") from None
    if not any(t.strip() for _, t in texts):
        raise ValueError(f"{str(path)!r} holds no text (empty files)")
    return texts


def text_points(
    adapter,
    layer: str | None,
    path: str | Path,
    *,
    seq_len: int = 1024,
    per_seq: int = 6,
    skip: int = 100,
    max_sequences: int | None = None,
    batch_size: int = 4,
    context: int = 24,
    progress: bool = False,
) -> LayerPoints:
    """The paper's GPT-2 protocol on the text at ``path``, for any text model (see the module docstring)."""
    import torch

    from polylens.lens.codes import SplineCodes
    from polylens.progress import progress_bar

    n_ctx = adapter.n_ctx
    seq_len = min(seq_len, n_ctx)
    if skip >= seq_len - adapter.n_special + 1:
        raise ValueError(
            f"skip={skip} leaves nothing of sequences of {seq_len} tokens (the model's context is {n_ctx})"
        )
    n_layers = len(adapter.activation_layers)
    layers = _single_layer(adapter, layer, f"blocks.{n_layers // 2}.mlp.hook_pre")
    seqs, notes = _text_sequences(adapter, path, seq_len, per_seq, skip, max_sequences)
    parts_acts, labels, examples = [], {"token": [], "next_token": [], "position": []}, []
    bar = progress_bar(sum(len(s) for _, s, _ in seqs), f"{adapter.name} {layers[0]}", unit="tok", enabled=progress)
    for b0 in range(0, len(seqs), batch_size):
        batch = seqs[b0 : b0 + batch_size]
        bar.update(sum(len(seq) for _, seq, _ in batch))
        picked = _text_preactivations(adapter, layers[0], batch)
        for j, (name, seq, pos) in enumerate(batch):
            parts_acts.append(picked[j].float().cpu().numpy())
            _text_labels(adapter, name, seq, pos, b0 + j, context, labels, examples)
    bar.close()
    acts = np.concatenate(parts_acts)
    codes = SplineCodes.from_preactivations(
        {layers[0]: torch.from_numpy(acts)},
        {layers[0]: adapter.activation_layers[layers[0]]},
        provenance={"model": adapter.name, "layers": layers},
    )
    seen = set(labels["token"]) | (set(labels["next_token"]) - {-1})
    token_names = {t: adapter.decode([t]) for t in sorted(seen)}
    notes.insert(
        0,
        f"{len(seqs)} sequences of up to {seq_len} tokens, {len(examples)} tokens taken "
        f"(positions round(linspace({skip}, L-1, {per_seq})))",
    )
    return LayerPoints(
        adapter.name,
        layers[0],
        codes,
        acts,
        labels={k: np.asarray(v, dtype=np.int64) for k, v in labels.items()},
        label_names={"token": token_names, "next_token": token_names},
        examples=examples,
        notes=notes,
    )


gpt2_points = text_points  # the protocol's name in the paper's setting


def _text_sequences(adapter, path, seq_len: int, per_seq: int, skip: int, max_sequences: int | None):
    """``[(file name, token ids with the special tokens, positions taken)]`` and notes on short sequences."""
    seqs, notes = [], []
    trailing = adapter.n_special - 1  # special tokens after the text ([SEP]); none for GPT-2
    for name, text in read_texts(path):
        ids = adapter.tokenize(text) if text.strip() else []
        body = seq_len - adapter.n_special
        for start in range(0, len(ids), body):
            seq = adapter.wrap(ids[start : start + body])
            pos = text_positions(len(seq) - trailing, per_seq, skip)
            if len(seq) < seq_len:
                notes.append(
                    f"{name}: a sequence of {len(seq)} tokens (shorter than {seq_len}): "
                    f"took positions {pos.tolist() or 'none'}"
                )
            if len(pos):
                seqs.append((name, seq, pos))
    if max_sequences is not None:
        seqs = seqs[:max_sequences]
    if not seqs:
        raise ValueError(f"no sequence in {str(path)!r} is longer than skip={skip} tokens; give more text")
    return seqs, notes


def _text_labels(adapter, name: str, seq: list[int], pos, sequence: int, context: int, labels, examples) -> None:
    """Append the labels (token, next token, position) and the example text of each position taken."""
    for p in pos.tolist():
        labels["token"].append(seq[p])
        labels["next_token"].append(seq[p + 1] if p + 1 < len(seq) else -1)
        labels["position"].append(p)
        lo = max(1, p - context)
        text = [adapter.decode([t]) for t in seq[lo : p + 6]]
        examples.append({"text": text, "focus": p - lo, "source": name, "sequence": sequence})


def _text_preactivations(adapter, layer: str, batch) -> dict[int, torch.Tensor]:
    """Batch row → the pre-activations ``[len(positions), d_mlp]`` at its positions; sequences of
    equal length run through the model together."""
    import torch

    from polylens.lens.codes import layer_preactivations

    device = next(adapter.module.parameters()).device
    by_len: dict[int, list[int]] = {}
    for j, (_, seq, _) in enumerate(batch):
        by_len.setdefault(len(seq), []).append(j)
    picked: dict[int, torch.Tensor] = {}
    for group in by_len.values():
        x = torch.tensor([batch[j][1] for j in group], dtype=torch.long, device=device)
        _, pre = layer_preactivations(adapter, x, [layer], batch_size=len(group))
        for row, j in enumerate(group):
            picked[j] = pre[layer][row, torch.as_tensor(batch[j][2])]
    return picked
