"""Write a model layer's activations (and on request their gradients) into an on-disk activation
store (``sae.activation_store``), and the same rows computed live for a cache-free run.

Rows: one per token position for a language model (every position of each context but the BOS),
one per spatial position for a conv layer (its channel vector), one per input otherwise
(``polylens.rows``). Re-run on an interrupted store, it resumes after the last complete shard.
"""

from __future__ import annotations

from pathlib import Path

from polylens.rows import rows_of

GRADIENT_TARGETS = {
    "loss": "the next-token loss summed over the context (GPT-2)",
    "logit": "the logit of the predicted class (classifiers)",
}


def layer_weight(adapter, layer: str):
    """The weight matrix ``[width, fan_in]`` that produces ``layer``'s output, or None: a linear or
    conv module's own weight, or for a TransformerLens ``mlp.hook_pre`` the block's ``W_in``."""
    modules = dict(adapter.module.named_modules())
    module = modules.get(layer)
    weight = getattr(module, "weight", None)
    if weight is None and layer.endswith("mlp.hook_pre"):
        parent = modules.get(layer.rsplit(".", 1)[0])
        w_in = getattr(parent, "W_in", None)
        inner = getattr(parent, "inner", None)  # polylens.models.bert's MLP: nn.Linear [d_mlp, d_model]
        if w_in is None and inner is not None:
            return inner.weight.detach()
        return None if w_in is None else w_in.detach().T.contiguous()  # [d_mlp, d_model]
    if weight is None or weight.dim() < 2:
        return None
    return weight.detach().reshape(weight.shape[0], -1)


def text_contexts(adapter, path: str, context: int, tokens: int | None):
    """Token contexts ``[n, context]`` cut from the text file at ``path``, each ``adapter.wrap``ped
    (GPT-2: BOS first; BERT: [CLS] first, [SEP] last)."""
    import torch

    n_ctx, extra = adapter.n_ctx, adapter.n_special
    if context < extra + 1 or context > n_ctx:
        raise ValueError(f"--context {context} must be between {extra + 1} and the model's context of {n_ctx} tokens")
    ids = adapter.tokenize(input_text(path))
    step = context - extra
    if len(ids) < step:
        raise ValueError(
            f"--input {path} holds {len(ids)} tokens, fewer than one context of {context} "
            f"({extra} special + {step}); give more text or a smaller --context"
        )
    n = len(ids) // step
    if tokens is not None:
        n = min(n, -(-tokens // step))
    return torch.tensor([adapter.wrap(ids[i * step : (i + 1) * step]) for i in range(n)], dtype=torch.long)


def input_text(path: str) -> str:
    """The text of a UTF-8 file, or of the English corpus that ships with Python (``corpus:english``,
    ``polylens.models.corpus``) where no file of that name exists."""
    from polylens.models import corpus
    from polylens.models.base import read_text

    if str(path) == corpus.NAME and not Path(path).exists():
        return corpus.english_text()
    return read_text(path)


def input_identity(paths) -> list[dict]:
    """What each input is, for a store's manifest: a file's absolute path, size and SHA-256, or the
    built-in corpus's source and the SHA-256 of its text."""
    import hashlib

    from polylens.models import corpus

    out = []
    for path in paths:
        if str(path) == corpus.NAME and not Path(path).exists():
            text = corpus.english_text().encode()
            out.append({"source": corpus.SOURCE, "name": corpus.NAME, "sha256": hashlib.sha256(text).hexdigest()})
            continue
        p = Path(path)
        digest = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        out.append({"path": str(p.resolve()), "bytes": p.stat().st_size, "sha256": digest.hexdigest()})
    return out


def _target(kind: str, is_text: bool, tokens):
    from polylens.targets import Target

    if kind == "loss" and not is_text:
        raise ValueError(
            "--gradients loss is the next-token loss of a language model; for a classifier use --gradients logit"
        )
    if kind == "logit" and is_text:
        raise ValueError("--gradients logit is for classifiers; for GPT-2 use --gradients loss")
    return Target("loss" if kind == "loss" else "predicted", 0, is_text).fn(tokens=tokens)


# what each recorded field is, in the words of the flags that set it (a resume names the first that differs)
CHANGED = {
    "inputs": "--input",
    "model_spec": "--model",
    "model_file": "the --model file",
    "weights_path": "--weights",
    "random_weights": "--random-weights",
    "model": "the model",
    "model_sha256": "the model's weights",
    "layer": "--layer",
    "tokens": "--tokens (the rows to store)",
    "n": "--n (the inputs read)",
    "context": "--context",
    "dtype": "--dtype",
    "gradients": "--gradients",
    "pairs": "--pair-layer",
    "device": "--device",
    "inputs_sha256": "the model's inputs (the tokenizer, or how the inputs are read)",
    "width": "the layer's width",
}


def module_sha256(module) -> str:
    """SHA-256 of a module's state (every parameter and buffer: names, dtypes, shapes, bytes)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(f"{name} {tensor_sha256(t)}\n".encode())
    return h.hexdigest()


def _show(key: str, value) -> str:
    if key == "model_file" and isinstance(value, dict):
        value = [value]
    if key in ("inputs", "model_file") and isinstance(value, list):
        if not value:
            return "the model's bundled inputs"
        return ", ".join(f"{i.get('path') or i.get('name')} (sha256 {str(i.get('sha256'))[:12]}…)" for i in value)
    if isinstance(value, str) and len(value) == 64:
        return value[:12] + "…"
    return "none" if value is None else str(value)


def check_same_store(out: Path, manifest: dict, fields: dict, *, replace: str) -> None:
    """Refuse to resume the store at ``out`` with rows made otherwise than its own: one line naming
    the first recorded field (input, model, option) that differs."""
    keys = [*CHANGED, *(k for k in fields if k not in CHANGED)]
    for key in keys:
        if key in fields and manifest.get(key) != fields[key]:
            what = CHANGED.get(key, key)
            raise ValueError(
                f"--out {out} holds another store ({what}: {_show(key, manifest.get(key))} there, "
                f"{_show(key, fields[key])} now); "
                + ("" if manifest.get("complete") else "finish it with the command that began it, or ")
                + replace
            )


def check_store_folder(folder: Path, shown, force: bool, fields: dict | None = None) -> None:
    """Refuse (nothing written) what may not be done to the store folder ``folder`` (``--out
    shown``) as it is now: with ``force``, a folder that holds anything but a store; without, a
    folder that holds no store, and, given the new store's ``fields``, a store begun otherwise or
    complete."""
    from sae.activation_store import MANIFEST, foreign_file, read_manifest

    name = foreign_file(folder) if folder.exists() else None
    if force:
        if name is not None:
            raise ValueError(
                f"--out {shown} holds {name}, which is not part of an activation store; --force replaces "
                f"only a store: give a new folder, or move {name} out of it"
            )
        return
    if name is not None and (name == MANIFEST or not (folder / MANIFEST).is_file()):
        raise FileExistsError(f"--out {shown} holds {name} and no activation store; give an empty or new folder")
    if fields is not None and (folder / MANIFEST).is_file():
        replace = "give another --out" if name is not None else "give another --out, or --force to replace it"
        manifest = read_manifest(folder)
        check_same_store(shown, manifest, fields, replace=replace)
        if manifest["complete"]:
            hint = "give another --out" if name is not None else "pass --force to write it again"
            raise FileExistsError(f"the store {shown} is complete; {hint}")


def tensor_sha256(t) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    import hashlib

    import torch

    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype} {tuple(t.shape)}\n".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, not a copy
    return h.hexdigest()


def cache_activations(
    adapter,
    layer: str,
    out: str | Path,
    inputs,
    *,
    is_text: bool = False,
    dtype: str = "float32",
    gradients: str | None = None,
    tokens: int | None = None,
    batch_size: int = 16,
    shard_rows: int | None = None,
    progress: bool = False,
    force: bool = False,
    meta: dict | None = None,
    pair_layer: str | None = None,
) -> dict:
    """Run ``adapter`` on ``inputs`` (a batch at a time) up to ``layer`` and write the rows into the
    store at ``out`` (resuming an incomplete one begun from the same inputs, model and options;
    ``force``: replacing a store there, but never a folder that holds anything else); returns the
    manifest. ``pair_layer``: the rows of this second site too, from the same forward pass, one per
    row of ``layer`` (a transcoder's targets: an MLP's output beside its input). Everything is
    checked before the first byte is written, and the folder is locked while it is written (a
    second writer is refused)."""
    import os
    import time

    import torch

    from polylens.capture import capture
    from sae.activation_store import DTYPES, FORMAT, StoreWriter, clear_store
    from sae.files import folder_lock

    began = time.perf_counter()
    if gradients is not None and gradients not in GRADIENT_TARGETS:
        raise ValueError(f"--gradients {gradients!r}: choose {' or '.join(GRADIENT_TARGETS)}")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose {', '.join(DTYPES)}")
    if batch_size < 1 or (tokens is not None and tokens < 1) or inputs.shape[0] < 1:
        raise ValueError(f"batch_size={batch_size}, tokens={tokens} and the {inputs.shape[0]} inputs must be positive")
    shown, out = out, Path(os.path.realpath(out))
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {shown} is a file; give a folder")
    parent = out.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"folder {parent} for --out {shown} does not exist; create it first")
    # the layer, and the gradient target on the model's output, tried on the first input before anything is written
    probe = None if gradients is None else _target(gradients, is_text, inputs[:1])
    sites = [layer] if pair_layer is None else [layer, pair_layer]
    got = capture(adapter.module, inputs[:1], sites, target=probe).activations
    per_input, width = rows_of(got[layer], is_text).shape
    pairs = None
    if pair_layer is not None:
        pair_rows = rows_of(got[pair_layer], is_text)
        if pair_layer == layer or pair_rows.shape[0] != per_input:
            why = "is --layer itself" if pair_layer == layer else f"gives {pair_rows.shape[0]} rows an input"
            raise ValueError(
                f"--pair-layer {pair_layer} {why}; it must be another site with one row per row of {layer} "
                f"({per_input} an input): e.g. an MLP's output beside its input"
            )
        pairs = {"layer": pair_layer, "width": int(pair_rows.shape[1])}
    total = per_input * inputs.shape[0] if tokens is None else min(tokens, per_input * inputs.shape[0])
    elt = torch.finfo(DTYPES[dtype]).bits // 8
    shard_rows = shard_rows or max(1024, min(1 << 20, (256 << 20) // (elt * width)))
    what = None if gradients is None else GRADIENT_TARGETS[gradients]
    meta = {
        "model": adapter.name,
        "layer": layer,
        "tokens": total,
        "model_sha256": module_sha256(adapter.module),
        "inputs_sha256": tensor_sha256(inputs),  # what the model reads: after the tokenizer, --context, --n
    } | (meta or {})
    fields = {
        "format": FORMAT,
        "width": width,
        "dtype": dtype,
        "shard_rows": shard_rows,
        "gradients": what,
        "pairs": pairs,
        **meta,
    }

    check_store_folder(out, shown, force, fields)
    created = not out.exists()
    out.mkdir(exist_ok=True)
    with folder_lock(out):
        try:
            check_store_folder(out, shown, force, fields)  # again, now that no other writer can change it
            if force:
                clear_store(out)
            writer = StoreWriter(
                out,
                width=width,
                dtype=dtype,
                shard_rows=shard_rows,
                gradients=what,
                pairs=pairs,
                weight=layer_weight(adapter, layer),
                meta=meta,
            )
        except BaseException:
            if created and not any(out.iterdir()):
                out.rmdir()  # a refusal leaves nothing
            raise
        start = writer.rows_done // per_input  # resume: the input holding the first row not yet stored
        writer.begin(start * per_input)
        from polylens.progress import progress_bar

        bar = progress_bar(
            total, f"cache {layer}", unit="tok" if is_text else "row", enabled=progress, initial=writer.rows_done
        )
        done = start * per_input
        try:
            for lo in range(start, inputs.shape[0], batch_size):
                if done >= total:
                    break
                batch = inputs[lo : lo + batch_size]
                target = None if gradients is None else _target(gradients, is_text, batch)
                got = capture(adapter.module, batch, sites, target=target)
                acts = rows_of(got.activations[layer], is_text)
                grads = None if target is None else rows_of(got.gradients[layer][:, 0], is_text)
                paired = None if pairs is None else rows_of(got.activations[pair_layer], is_text)
                keep = min(acts.shape[0], total - done)
                cut = [None if t is None else t[:keep] for t in (grads, paired)]
                writer.add(acts[:keep], *cut)
                done += keep
                bar.update(keep)
        finally:
            bar.close()
        writer.manifest["seconds_last_run"] = round(time.perf_counter() - began, 1)  # this run's, resumed or not
        return writer.close()


class LiveLayer:
    """A layer's activations computed live every batch (a cache-free run), as a stream the SAE
    trainer reads like a synthetic one: ``sample(n, generator)`` runs the model on inputs the
    generator draws and returns ``n`` rows ``[n, d]`` (see ``rows_of``), so every SAE trained on
    it with the same seed sees the same rows."""

    def __init__(self, adapter, layer: str, inputs, *, is_text: bool = False, batch_size: int = 16):
        from polylens.capture import capture

        self.adapter, self.layer, self.inputs, self.is_text, self.batch_size = (
            adapter,
            layer,
            inputs,
            is_text,
            batch_size,
        )
        first = rows_of(capture(adapter.module, inputs[:1], [layer]).activations[layer], is_text)
        self.per_input, self.d = first.shape

    def sample(self, n: int, generator=None):
        import torch

        from polylens.capture import capture

        k = -(-n // self.per_input)
        idx = torch.randint(
            0, self.inputs.shape[0], (k,), generator=generator, device=getattr(generator, "device", "cpu")
        )
        got = capture(
            self.adapter.module, self.inputs[idx.cpu()], [self.layer], batch_size=self.batch_size
        ).activations[self.layer]
        return rows_of(got, self.is_text)[:n]
