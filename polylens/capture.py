"""Capture named activations (and, on request, gradients) from any torch module.

This is the one way polylens reads a model. Layers are named by module path
(``blocks.6.mlp.hook_pre`` in TransformerLens, ``mixed4a`` in the Lucid
InceptionV1, ``features.3`` in a torchvision model) and selected by an exact
name, a shell-style wildcard (``blocks.*.mlp.hook_pre``) or a predicate
``(name, module) -> bool``. Hooks are attached only inside ``recording`` and
always removed on exit.

What is captured is a module's output, or its input with ``site="input"``
(use that to read the pre-activation of a ``nn.ReLU`` module).

Gradients: ``capture(..., target=fn)`` with ``fn(output) -> [batch]`` or
``[batch, k]``. The gradient of each target column with respect to each
captured activation is returned as ``[batch, k, *act_shape]`` (k = 1 for a
scalar target), i.e. the rows of the Jacobian. Per-sample gradients come from
differentiating the batch sum, which is exact as long as samples do not
interact in the forward pass (eval mode: no batch-norm statistics updates).
"""

from __future__ import annotations

import fnmatch
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch
from torch import Tensor, nn

from polylens.validation import check_choice, check_int

LayerSpec = Union[str, Sequence[str], Callable[[str, nn.Module], bool]]
Target = Callable[[Any], Tensor]


def layer_names(model: nn.Module) -> list[str]:
    """Every capturable module path of ``model``, in registration order."""
    return [name for name, _ in model.named_modules() if name]


def _listing(names: Sequence[str], limit: int = 40) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def resolve_layers(model: nn.Module, spec: LayerSpec) -> list[str]:
    """Turn an exact name, wildcard, list of those, or predicate into module paths.

    Raises ``ValueError`` naming the available layers when nothing matches.
    """
    modules = dict(model.named_modules())
    available = [n for n in modules if n]
    if callable(spec) and not isinstance(spec, str):
        found = [n for n in available if spec(n, modules[n])]
        if not found:
            raise ValueError(f"no layer satisfies the predicate; available layers: {_listing(available)}")
        return found
    patterns = [spec] if isinstance(spec, str) else list(spec)
    if not patterns:
        raise ValueError("no layer given; available layers: " + _listing(available))
    found: list[str] = []
    for pattern in patterns:
        if pattern in modules and pattern:
            matches = [pattern]
        else:
            matches = [n for n in available if fnmatch.fnmatchcase(n, pattern)]
        if not matches:
            raise ValueError(f"unknown layer {pattern!r}; available layers: {_listing(available)}")
        found.extend(m for m in matches if m not in found)
    return found


class _StopForward(Exception):
    """Raised inside a hook once every requested layer has been seen."""


def reused_message(name: str, n: int) -> str:
    return (
        f"module {name!r} runs {n}+ times in one forward pass (a reused module, like torchvision ResNet's "
        "shared relu): its calls cannot be told apart; capture a module that runs once (e.g. the one feeding it), "
        "or give each use its own module"
    )


@dataclass
class Recorder:
    """What ``recording`` collects during forward passes: name -> tensor (last pass)."""

    activations: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class _Hook:
    """The forward hook ``recording`` puts on one module: records its output (or input), patches it."""

    name: str
    rec: Recorder
    wanted: set[str]
    site: str
    keep_graph: bool
    patched: bool
    replacement: Tensor | Callable[[Tensor], Tensor] | None
    stop_early: bool
    calls: int = 0

    def __call__(self, module: nn.Module, args: tuple, output):
        self.calls += 1
        if self.calls > 1:
            raise ValueError(reused_message(self.name, self.calls))
        value = args[0] if self.site == "input" else output
        if self.patched:
            value = self.replacement(value) if callable(self.replacement) else self.replacement
        if not isinstance(value, Tensor):
            raise ValueError(
                f"layer {self.name!r} produced {type(value).__name__}, not a tensor; pick a module that returns one"
            )
        value = self._record(value)
        if self.stop_early and self.wanted.issubset(self.rec.activations):
            raise _StopForward
        if self.site == "output" and (self.patched or value is not output):
            return value
        return None

    def _record(self, value: Tensor) -> Tensor:
        """Record ``value`` if wanted; return what the model goes on with."""
        if not (self.keep_graph and self.site == "output"):
            if self.name in self.wanted:
                self.rec.activations[self.name] = value.detach().clone()  # what the module returned, kept as it was
            return value
        if not (value.is_floating_point() or value.is_complex()):
            raise ValueError(
                f"layer {self.name!r} outputs {value.dtype} values: no gradient reaches it; "
                "pick a layer with floating-point output"
            )
        if not value.requires_grad:
            value = value.detach().requires_grad_(True)
        if self.name in self.wanted:
            self.rec.activations[self.name] = value
        # the model goes on with a copy, so an in-place edit downstream (``out += x``)
        # cannot change what was recorded (nor hit autograd's leaf check)
        return value.clone()


@contextmanager
def recording(
    model: nn.Module,
    layers: LayerSpec,
    *,
    site: Literal["output", "input"] = "output",
    keep_graph: bool = False,
    patch: Mapping[str, Tensor | Callable[[Tensor], Tensor]] | None = None,
    stop_early: bool = False,
) -> Iterator[Recorder]:
    """Attach hooks that record ``layers`` during any forward pass inside the block.

    keep_graph: keep recorded tensors attached to autograd (for gradients); a
        recorded output that does not require grad is replaced by a leaf that
        does, so gradients reach it even when the model's weights are frozen.
    patch: name -> replacement tensor (or function of the original) applied to
        that module's output; the recorded value is the replacement.
    stop_early: abort the forward pass (caught by ``capture``) once all layers
        were recorded, so nothing past them is computed.
    """
    check_choice("site", site, ("output", "input"))
    names = resolve_layers(model, layers)
    patch = dict(patch or {})
    modules = dict(model.named_modules())
    for name in patch:
        if name not in modules or not name:
            resolve_layers(model, name)  # raises, listing the available layers
            raise ValueError(f"patch takes exact layer names, not patterns; got {name!r}")
    if patch and site != "output":
        raise ValueError(f"patch is only applied with site='output', not site={site!r}")
    rec = Recorder()
    handles = []
    try:
        for name in dict.fromkeys(names + list(patch)):
            hook = _Hook(name, rec, set(names), site, keep_graph, name in patch, patch.get(name), stop_early)
            handles.append(modules[name].register_forward_hook(hook))
        yield rec
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class Captured:
    """Activations (and gradients) captured over a whole input set.

    activations: name -> ``[n, *act_shape]``
    gradients: name -> ``[n, k, *act_shape]`` (empty unless a target was given)
    output: the model output ``[n, ...]`` when asked for (``keep_output=True``), else None
    """

    activations: dict[str, Tensor]
    gradients: dict[str, Tensor]
    output: Tensor | None


def _batches(inputs: Tensor | Sequence[Tensor], batch_size: int | None) -> Iterator[tuple[Tensor, ...]]:
    parts = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    n = parts[0].shape[0]
    if any(p.shape[0] != n for p in parts):
        raise ValueError("all input tensors must share the batch dimension")
    step = n if not batch_size else batch_size
    for start in range(0, n, step):
        yield tuple(p[start : start + step] for p in parts)


def capture(
    model: nn.Module,
    inputs: Tensor | Sequence[Tensor],
    layers: LayerSpec,
    *,
    target: Target | None = None,
    site: Literal["output", "input"] = "output",
    batch_size: int | None = None,
    stop_early: bool = True,
    patch: Mapping[str, Tensor | Callable[[Tensor], Tensor]] | None = None,
    device: torch.device | str | None = None,
    keep_output: bool = False,
) -> Captured:
    """Run ``model`` on ``inputs`` (batched) and collect ``layers``.

    inputs: a tensor ``[n, ...]`` or a tuple of such tensors passed positionally.
    target: ``fn(model_output) -> [batch]`` or ``[batch, k]``; when given, the
        gradients of every target column w.r.t. each layer are returned too.
    stop_early: without a target (and without keep_output), stop each forward pass once the
        layers are recorded, with or without ``patch``.
    keep_output: also return the model's output (then every forward runs to the end).
    device: where to keep the results (default: where they were computed).

    A module that runs more than once in one forward pass is an error naming it (never a silent
    pick of one call); with early stopping, where a second call would come after the stop, one
    unstopped forward on the first input checks this once per model and layer set.
    """
    if batch_size is not None:
        check_int("batch_size", batch_size)
    acts: dict[str, list[Tensor]] = {}
    grads: dict[str, list[Tensor]] = {}
    outs: list[Tensor] = []
    want_grad = target is not None
    check_choice("site", site, ("output", "input"))
    if want_grad and site != "output":
        raise ValueError(f"target is only differentiated at module outputs (site='output'), not site={site!r}")
    stop = stop_early and not want_grad and not keep_output
    if stop:
        _check_single_calls(model, inputs, layers, site, patch)
    for batch in _batches(inputs, batch_size):
        with recording(model, layers, site=site, keep_graph=want_grad, patch=patch, stop_early=stop) as rec:
            with torch.enable_grad() if want_grad else torch.no_grad():
                try:
                    out = model(*batch)
                except _StopForward:
                    out = None
                if want_grad:
                    _collect_gradients(target(out), rec.activations, grads, device)
        for name, value in rec.activations.items():
            acts.setdefault(name, []).append(_store(value.detach(), device))
        if keep_output and isinstance(out, Tensor):
            outs.append(_store(out.detach(), device))
    # without a target each recorded activation is already a copy of its own: one batch's needs no
    # second copy (a recorded leaf kept for gradients, or the output, may share the model's memory)
    join = (lambda v: v[0] if len(v) == 1 else torch.cat(v)) if not want_grad else torch.cat
    return Captured(
        activations={k: join(v) for k, v in acts.items()},
        gradients={k: torch.cat(v) for k, v in grads.items()},
        output=torch.cat(outs) if outs else None,
    )


_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> layer sets seen to run once


def _check_single_calls(model: nn.Module, inputs, layers: LayerSpec, site: str, patch) -> None:
    """One forward on the first input, to the end, counting calls (raises on a reused module)."""
    key = (tuple(resolve_layers(model, layers)), site, tuple(sorted(patch or {})))
    seen = _CHECKED.setdefault(model, set())
    if key in seen:
        return
    first = next(_batches(inputs, 1))
    one_patch = {k: (v if callable(v) else v[:1]) for k, v in (patch or {}).items()}
    with recording(model, list(key[0]), site=site, patch=one_patch), torch.no_grad():
        model(*first)
    seen.add(key)


def _store(t: Tensor, device) -> Tensor:
    return t if device is None else t.to(device)


def _collect_gradients(value: Tensor, acts: dict[str, Tensor], grads: dict[str, list[Tensor]], device) -> None:
    if not isinstance(value, Tensor) or value.dim() not in (1, 2):
        raise ValueError("target must return a tensor of shape [batch] or [batch, k]")
    columns = value.unsqueeze(1) if value.dim() == 1 else value  # [batch, k]
    names = list(acts)
    if not columns.requires_grad:
        raise ValueError(
            f"the target does not depend on layer {', '.join(map(repr, names))} through autograd "
            "(a detached or integer output); no gradient exists: pick another layer or target"
        )
    tensors = [acts[n] for n in names]
    rows: list[list[Tensor]] = [[] for _ in names]
    unused: list[list[bool]] = [[] for _ in names]
    k = columns.shape[1]
    for j in range(k):
        # Sum over the batch: sample i's target depends only on sample i's activations.
        got = torch.autograd.grad(columns[:, j].sum(), tensors, retain_graph=j < k - 1, allow_unused=True)
        for i, g in enumerate(got):
            rows[i].append(torch.zeros_like(tensors[i]) if g is None else g.detach())
            unused[i].append(g is None)
    for i, name in enumerate(names):
        if all(unused[i]):
            raise ValueError(
                f"layer {name!r} has no gradient path to the target (the model detaches it, or the target does "
                "not read it); pick a layer the output depends on"
            )
        grads.setdefault(name, []).append(_store(torch.stack(rows[i], dim=1), device))
