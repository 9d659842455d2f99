"""The one small interface behind which every model sits, and what the adapters share:
their cache folder and the one way to load a weights file."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:  # annotations only: importing this module must not import torch (CLI start-up)
    from torch import Tensor, nn

Activation = Literal["relu", "relu6", "gelu", "gelu_tanh", "silu", "identity"]
PIECEWISE_LINEAR = frozenset({"relu", "relu6", "identity"})
# Where each kind's slope changes: a unit's hard code is how many of them its pre-activation lies
# above, written as one bit per breakpoint (ReLU6 has three states, two bits: z > 0, z > 6).
BREAKPOINTS: dict[str, tuple[float, ...]] = {
    "relu": (0.0,),
    "relu6": (0.0, 6.0),
    "identity": (0.0,),
    "gelu": (0.0,),
    "gelu_tanh": (0.0,),
    "silu": (0.0,),
}


class ModelAdapter:
    """A loaded model plus what polylens needs to know about it; each model is one subclass.

    name: what the model is (``"gpt2"``, ``"gpt2 (random weights)"``, ``"digits-cnn"``, …);
        written into every result's provenance. Never call random weights by a pretrained name.
    module: the torch module, in eval mode; read only through ``polylens.capture``.
    activation_layers: ordered (forward order) map from a capturable module path whose
        **output is a pre-activation** to the nonlinearity applied to it next
        (``{"blocks.0.mlp.hook_pre": "gelu_tanh", ...}``, ``{"conv1": "relu", ...}``).
        Spline codes are read at these layers; density counts crossings at them.
    space_layers: module paths whose outputs may be the space a path lives in (``layer=``):
        usually the activation layers plus post-activation sites.
    provenance: extra facts to record (weights source, checksum, config).
    piecewise_linear_modules: the adapter's own module classes that are piecewise-linear (a
        concatenation, a padded max-pool), beside the standard ones ``polylens.lens.exactness`` knows;
        exact counting is certified only across modules of these kinds.

    output_kind: what the module returns: ``"classes"`` (logits ``[n, C]``), ``"next_token"``
        (a language model's logits ``[n, seq, vocab]``) or ``"embedding"`` (a sentence encoder's
        ``[n, d]``: its output change is 1 − cos, its gradient target the embedding).
    Text models (``tokenize`` set) also give ``n_ctx`` (tokens a context holds), ``n_special``
    (tokens ``wrap`` adds: GPT-2's BOS, BERT's [CLS] and [SEP]), ``wrap(ids)`` (one context's ids with
    them) and ``decode(ids)``.

    Methods: ``prepare(raw)`` (a path, an index, text, an array → the model input ``[1, ...]``) and,
    where the model has them (else the attribute is ``None``): ``default_inputs(n)`` (``[n, ...]``
    bundled offline examples), ``default_labels(n)`` (their class labels ``[n]``),
    ``describe_output(output)`` (one label per input: class name or top token) and ``tokenize(text)``
    (token ids, no length limit, no BOS; language models).

    A subclass that sets ``spec_pattern`` is what ``polylens.models.load_model`` builds for a spec that
    matches it in full, through the subclass's classmethod ``load(spec, *, options...)``; its
    keyword-only parameters are the options ``load_model`` accepts. ``spec_help`` shows the spec's form.
    A plain ``ModelAdapter(name, module, ..., prepare=fn)`` wraps a module with given functions.
    """

    spec_pattern: ClassVar[str | None] = None
    spec_help: ClassVar[str] = ""
    registry: ClassVar[dict[str, type[ModelAdapter]]] = {}  # spec_pattern -> adapter class

    piecewise_linear_modules: tuple = ()
    output_kind: ClassVar[str] = "classes"
    n_special: ClassVar[int] = 0
    default_inputs: Callable[[int], Tensor] | None = None
    default_labels: Callable[[int], Tensor] | None = None
    describe_output: Callable[[Tensor], list[str]] | None = None
    tokenize: Callable[[str], list[int]] | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("spec_pattern"):
            ModelAdapter.registry[cls.spec_pattern] = cls  # a redefinition replaces the class

    def __init__(
        self,
        name: str,
        module: nn.Module,
        activation_layers: dict[str, Activation],
        space_layers: Sequence[str],
        *,
        provenance: dict | None = None,
        piecewise_linear_modules: tuple | None = None,
        prepare: Callable[[object], Tensor] | None = None,
        default_inputs: Callable[[int], Tensor] | None = None,
        default_labels: Callable[[int], Tensor] | None = None,
        describe_output: Callable[[Tensor], list[str]] | None = None,
        tokenize: Callable[[str], list[int]] | None = None,
    ):
        self.name, self.module = name, module
        self.activation_layers, self.space_layers = dict(activation_layers), list(space_layers)
        self.provenance = dict(provenance or {})
        if piecewise_linear_modules is not None:
            self.piecewise_linear_modules = tuple(piecewise_linear_modules)
        functions = dict(
            prepare=prepare,
            default_inputs=default_inputs,
            default_labels=default_labels,
            describe_output=describe_output,
            tokenize=tokenize,
        )
        for key, fn in functions.items():
            if fn is not None:
                setattr(self, key, fn)  # a given function stands in for the method
        self._float64: nn.Module | None = None

    @classmethod
    def matches(cls, spec: str) -> bool:
        """True when ``spec`` names this adapter's model."""
        return cls.spec_pattern is not None and re.fullmatch(cls.spec_pattern, spec) is not None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, activation_layers={len(self.activation_layers)})"

    def prepare(self, raw) -> Tensor:
        """Raw input (a path, an index, text, an array) → model input ``[1, ...]``."""
        raise TypeError(f"model {self.name} takes no raw inputs; give its input tensors directly")

    def float64_module(self) -> nn.Module:
        """A float64 copy of ``module`` for exact counting, kept by this adapter and remade when
        ``module``'s parameters or buffers no longer equal the copy's (a training step, a
        ``load_state_dict``): float32 → float64 → float32 is lossless, so the check is exact."""
        import copy

        import torch

        made = self._float64
        if made is not None:
            mine = [*made.parameters(), *made.buffers()]
            theirs = [*self.module.parameters(), *self.module.buffers()]
            same = len(mine) == len(theirs) and all(
                a.shape == b.shape and torch.equal(a.to(b.dtype), b) for a, b in zip(mine, theirs)
            )
            if same:
                return made
        self._float64 = None  # the stale copy goes before the new one is made (GPT-2: 1 GB each)
        self._float64 = copy.deepcopy(self.module).double()
        return self._float64

    @property
    def piecewise_linear(self) -> bool:
        """True when every nonlinearity at the activation layers is piecewise-linear."""
        return all(kind in PIECEWISE_LINEAR for kind in self.activation_layers.values())

    def check_layer(self, layer: str, *, allowed: Sequence[str] | None = None) -> str:
        """Return ``layer`` if known, else a ValueError listing the available names."""
        names = list(allowed if allowed is not None else self.space_layers)
        if layer not in names:
            import difflib

            near = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
            hint = f"nearest: {', '.join(near)}; " if near else ""
            shown = ", ".join(names[:40]) + (f", ... ({len(names) - 40} more)" if len(names) > 40 else "")
            raise ValueError(f"unknown layer {layer!r} for model {self.name}; {hint}available layers: {shown}")
        return layer


def cache_dir() -> Path:
    """Where adapters cache downloads and trained weights: ``$POLYLENS_CACHE``, else
    ``$XDG_CACHE_HOME/polylens``, else ``~/.cache/polylens``."""
    if os.environ.get("POLYLENS_CACHE"):
        return Path(os.environ["POLYLENS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "polylens"


def load_weights(model: nn.Module, path: str | Path, *, what: str | None = None) -> dict[str, str]:
    """Load a weights file into ``model`` (in place); return the file's metadata (safetensors only).

    The file is a ``.safetensors`` file or a torch state dict read with ``weights_only=True``
    (never plain pickle). It must hold exactly the model's ``state_dict()`` keys with the same
    shapes; anything else — missing or extra keys, other shapes, an unreadable file — is a
    one-line ``ValueError`` (``what`` names the model in it), a missing file ``FileNotFoundError``.
    """
    import torch

    path = Path(path)
    what = what or type(model).__name__
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    meta: dict[str, str] = {}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.torch import load_file

            state = load_file(str(path))
            with safe_open(str(path), "pt") as fh:
                meta = dict(fh.metadata() or {})
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt files, pickled objects: safetensors and torch raise many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"weights file {str(path)!r} is not a readable safetensors/torch state dict ({first})"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"weights file {str(path)!r} holds a {type(state).__name__}, not a state dict")
    want = model.state_dict()
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or extra:
        raise ValueError(
            f"weights file {str(path)!r} does not fit {what}: {len(missing)} missing keys {missing[:4]}, "
            f"{len(extra)} extra keys {extra[:4]}; it must hold exactly the model's state_dict() keys"
        )
    bad = [k for k in want if tuple(want[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(
            f"weights file {str(path)!r} does not fit {what}: {len(bad)} tensors of another shape, "
            f"e.g. {k} is {tuple(state[k].shape)} in the file but {tuple(want[k].shape)} in the model"
        )
    model.load_state_dict(state)
    return meta


def npy_error(err: Exception) -> str:
    """NumPy's reason a ``.npy`` would not load, without its advice to unpickle the file (random
    bytes read as "pickled data"; ``allow_pickle`` would run whatever the file holds)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "pickle" in text.lower():
        return "it holds pickled objects or is not a .npy file at all; polylens never unpickles files"
    return text


def read_npy(path: str | Path, *, what: str = "input file", integers: bool = False):
    """A plain numeric ``.npy`` (no pickle) as a numpy array: float data as float32 (float64, NumPy's
    default, converted), integer data only when ``integers``. Anything else (complex, boolean,
    structured, object or text arrays, empty arrays, unreadable files) is a one-line ``ValueError``
    naming the file."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{what} {str(path)!r} is not a readable numeric .npy array ({npy_error(err)})") from None
    if not isinstance(arr, np.ndarray):  # np.load opens a zip (an .npz) whatever the file is called
        arr.close()
        raise ValueError(f"{what} {str(path)!r} is an .npz archive, not a .npy array; save one array with np.save")
    kind = arr.dtype.kind
    if kind == "c":
        raise ValueError(f"{what} {str(path)!r} holds complex values ({arr.dtype}); give real numbers")
    if kind in "iu" and not integers:
        raise ValueError(
            f"{what} {str(path)!r} holds integers ({arr.dtype}); give float values (e.g. pixels in [0, 1])"
        )
    if kind not in ("fiu" if integers else "f"):
        raise ValueError(f"{what} {str(path)!r} holds {arr.dtype} values; give a float array")
    if arr.size == 0:
        raise ValueError(f"{what} {str(path)!r} is empty (shape {arr.shape})")
    return arr.astype(np.float32) if kind == "f" else arr


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's content; an empty or undecodable file is a one-line ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"text file {str(path)!r} is not UTF-8 (byte {err.start}); convert it to UTF-8") from None
    if not text.strip():
        raise ValueError(f"text file {str(path)!r} is empty; give a file with text")
    return text
