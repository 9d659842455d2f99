"""Any ``nn.Module``: ``load_model("FILE.py:FUNCTION")`` where ``FUNCTION()`` returns the module.

Layers are module paths (``features.3``, ``fc1``). Activation layers (whose output is a
pre-activation) are found three ways, later ones winning:

1. **Module activations inside ``nn.Sequential``**: a ``ReLU``/``GELU``/``SiLU`` child makes its
   preceding sibling's output a pre-activation (``Sequential(Linear, ReLU)`` → ``"0": "relu"``).
2. **Module activations anywhere**, when the file also defines ``example_inputs(n) -> [n, ...]``:
   one forward pass matches each activation module's input tensor to the module that produced it.
3. **Functional activations** (``F.relu(self.fc1(x))``, ``torch.tanh``…) leave no module to hook,
   so name them: ``activations={"fc1": "relu"}`` says that the
   output of module ``fc1`` is the pre-activation of a ReLU. Kinds: relu, relu6, gelu, gelu_tanh, silu,
   identity.

``example_inputs(n)``, when defined, also gives the default inputs (input ``3`` is its row 3).
Weights: a safetensors file or a ``torch.save`` state dict read with ``weights_only=True``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import get_args

import numpy as np
import torch
from torch import Tensor, nn

from polylens.models.base import Activation, ModelAdapter, load_weights, read_npy
from polylens.validation import check_choice

KINDS = get_args(Activation)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _kind_of(module: nn.Module) -> str | None:
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.ReLU6):
        return "relu6"
    if isinstance(module, nn.GELU):
        return "gelu_tanh" if module.approximate == "tanh" else "gelu"
    if isinstance(module, nn.SiLU):
        return "silu"
    return None


def import_function(spec: str):
    """``"path/file.py:fn"`` → the function object (the file is imported as a fresh module)."""
    file, _, fn = spec.rpartition(":") if ".py:" in spec else (spec, "", "")
    if not fn:
        raise ValueError(f"model spec {spec!r} must be FILE.py:FUNCTION (a function returning an nn.Module)")
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"model file {file} does not exist")
    name = f"polylens_user_{abs(hash(str(path.resolve())))}"
    mod_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module
    try:
        mod_spec.loader.exec_module(module)
    except SystemExit as err:
        raise ValueError(
            f"model file {file} called sys.exit({err.code}) while being imported; it must define {fn}() and return"
        ) from None
    except Exception as err:  # the user's code: syntax errors, failed imports, anything it raises
        raise ValueError(f"model file {file} failed to import: {type(err).__name__}: {_first_line(err)}") from None
    if not callable(getattr(module, fn, None)):
        found = [
            k
            for k, v in vars(module).items()
            if callable(v) and not k.startswith("_") and getattr(v, "__module__", None) == name
        ]
        raise ValueError(f"{file} has no function {fn!r}; functions defined there: {', '.join(found) or 'none'}")
    return getattr(module, fn), module


def static_activations(model: nn.Module) -> dict[str, str]:
    """Rule 1: pre-activation sites implied by ``nn.Sequential`` order."""
    found = {}
    for path, mod in model.named_modules():
        if isinstance(mod, nn.Sequential):
            children = list(mod.named_children())
            for (prev, _), (_, act) in zip(children[:-1], children[1:]):
                kind = _kind_of(act)
                if kind:
                    found[f"{path}.{prev}" if path else prev] = kind
    return found


def traced_activations(model: nn.Module, example: Tensor) -> tuple[dict[str, str], list[str]]:
    """Rule 2: match activation modules' inputs to producing modules; also the modules' forward order."""
    produced: dict[int, str] = {}
    keep, order, found, handles = [], [], {}, []

    def hook(name, module):
        def fn(_, args, output):
            kind = _kind_of(module)
            if kind and args and isinstance(args[0], Tensor) and id(args[0]) in produced:
                found[produced[id(args[0])]] = kind
            if isinstance(output, Tensor):
                keep.append(output)  # keep it alive so its id is not reused during the pass
                produced.setdefault(id(output), name)  # the innermost module wins
            order.append(name)

        return fn

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name, module)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return found, list(dict.fromkeys(order))


def call_function(spec: str, fn) -> nn.Module:
    """``FUNCTION()``, with whatever the user's code does wrong as a one-line ValueError."""
    try:
        model = fn()
    except SystemExit as err:
        raise ValueError(f"{spec} called sys.exit({err.code}) instead of returning an nn.Module") from None
    except TypeError as err:
        raise ValueError(
            f"{spec} could not be called with no arguments ({_first_line(err)}); FUNCTION must take none"
        ) from None
    except Exception as err:
        raise ValueError(f"{spec} raised {type(err).__name__}: {_first_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _example(spec: str, example_fn, device: str) -> Tensor:
    """``example_inputs(1)`` of the model file, whatever it does wrong as a one-line ValueError."""
    try:
        example = example_fn(1)
    except Exception as err:
        raise ValueError(f"{spec}: example_inputs(1) raised {type(err).__name__}: {_first_line(err)}") from None
    if not isinstance(example, Tensor) or example.dim() < 1 or example.shape[0] != 1:
        what = tuple(example.shape) if isinstance(example, Tensor) else type(example).__name__
        raise ValueError(f"{spec}: example_inputs(1) returned {what}, not a tensor [1, ...] (one input)")
    return example.to(device)


def _in_training_mode(model: nn.Module) -> bool:
    """True when ``model`` is in training mode with modules whose output eval mode changes."""
    return model.training and any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)) for m in model.modules())


def find_activations(model: nn.Module, spec: str, example: Tensor | None, activations: dict | None) -> dict[str, str]:
    """The activation layers by rules 1-3 (module docstring), in forward order where ``example`` runs."""
    layers = [n for n, _ in model.named_modules() if n]
    found, order = static_activations(model), layers
    if example is not None:
        try:
            traced, fired = traced_activations(model, example)
        except Exception as err:  # the user's model on the user's own example: shapes, dtypes, anything
            raise ValueError(
                f"{spec}'s forward pass failed on its own example_inputs(1) of shape {tuple(example.shape)} "
                f"({type(err).__name__}: {_first_line(err)}); make example_inputs(n) return inputs the model takes"
            ) from None
        found.update(traced)
        order = fired + [n for n in layers if n not in fired]
    for layer, kind in (activations or {}).items():
        if layer not in layers:
            raise ValueError(
                f"activation layer {layer!r} is not a module of {spec}; available layers: {', '.join(layers[:40])}"
            )
        found[layer] = check_choice(f"activations[{layer!r}]", kind, KINDS)
    return {n: found[n] for n in order if n in found}


class CustomAdapter(ModelAdapter):
    """Any ``nn.Module`` from ``FILE.py:FUNCTION``; ``example_inputs(n)`` in the file, when defined,
    gives the default inputs and lets one traced forward find the activation layers."""

    spec_pattern = r".+\.py(:.*)?"
    spec_help = "FILE.py:FUNCTION"

    def __init__(self, model: nn.Module, name: str, acts: dict[str, str], facts: dict, *, example_fn, device: str):
        layers = [n for n, _ in model.named_modules() if n]
        super().__init__(name, model, acts, layers, provenance={"model": name, **facts})
        self.example_fn, self.device = example_fn, device
        if example_fn is None:
            self.default_inputs = None  # nothing bundled: inputs must be given

    @classmethod
    def load(
        cls,
        spec: str,
        *,
        weights=None,
        random_weights: bool = False,
        device: str = "cpu",
        activations: dict | None = None,
    ) -> CustomAdapter:
        """Load ``FILE.py:FUNCTION``; ``activations`` names functional-activation sites (rule 3)."""
        if random_weights:
            raise ValueError(
                f"random_weights=True does not apply to {spec}: FUNCTION() builds the model "
                "(with its own initialisation); leave it False"
            )
        fn, user_module = import_function(spec)
        model = call_function(spec, fn)
        if weights is not None:
            load_weights(model, weights, what=f"{spec}'s module")
        facts = {"spec": spec, "weights": str(weights) if weights else f"as built by {spec}"}
        if _in_training_mode(model):
            facts["mode"] = (
                "returned in training mode with batch-norm or dropout; polylens puts it in eval mode (running "
                "statistics, no dropout), so each input's result depends on that input alone"
            )
        model = model.to(device).eval()
        example_fn = getattr(user_module, "example_inputs", None)
        example_fn = example_fn if callable(example_fn) else None
        example = _example(spec, example_fn, device) if example_fn else None
        name = Path(spec.rpartition(":")[0]).name + ":" + spec.rpartition(":")[2]
        acts = find_activations(model, spec, example, activations)
        return cls(model, name, acts, facts, example_fn=example_fn, device=device)

    def default_inputs(self, n: int) -> Tensor:
        return self.example_fn(n).to(self.device)

    def describe_output(self, out: Tensor) -> list[str]:
        return [str(i) for i in out.reshape(out.shape[0], -1).argmax(1).tolist()]

    def prepare(self, raw) -> Tensor:
        """An index into ``example_inputs``, an ``.npy`` file or an array → ``[1, ...]``."""
        if isinstance(raw, str) and raw.lstrip("-").isdigit():
            raw = int(raw)
        if isinstance(raw, (int, np.integer)):
            if self.example_fn is None:
                raise ValueError(f"input index {raw} needs example_inputs(n) defined in the model file")
            if raw < 0:
                raise ValueError(f"input index {raw} must be >= 0")
            return self.default_inputs(raw + 1)[raw : raw + 1]
        if isinstance(raw, (str, Path)):
            if not Path(raw).is_file():
                raise FileNotFoundError(f"input file {raw} does not exist")
            if Path(raw).suffix != ".npy":
                raise ValueError(f"input file {raw}: custom models read .npy arrays")
            raw = read_npy(raw)
        arr = np.asarray(raw)
        x = torch.as_tensor(arr.astype(np.float32) if arr.dtype == np.float64 else arr).to(self.device)
        param = next(self.module.parameters(), None)
        if param is not None and torch.is_floating_point(x):
            x = x.to(param.dtype)
        if x.dim() == 1 or (self.example_fn and tuple(x.shape) == tuple(self.example_fn(1).shape[1:])):
            x = x.unsqueeze(0)  # one input, without its batch axis
        return x
