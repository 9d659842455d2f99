"""The one small interface behind which every model sits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # annotations only: importing this module must not import torch (CLI start-up)
    from torch import Tensor, nn

Activation = Literal["relu", "gelu", "gelu_tanh", "silu", "identity"]
PIECEWISE_LINEAR = frozenset({"relu", "identity"})


@dataclass
class ModelAdapter:
    """A loaded model plus what polylens needs to know about it.

    name: what the model is (``"gpt2"``, ``"gpt2 (random weights)"``, ``"digits-cnn"``, …);
        written into every result's provenance. Never call random weights by a pretrained name.
    module: the torch module, in eval mode; read only through ``polylens.capture``.
    activation_layers: ordered (forward order) map from a capturable module path whose
        **output is a pre-activation** to the nonlinearity applied to it next
        (``{"blocks.0.mlp.hook_pre": "gelu_tanh", ...}``, ``{"conv1": "relu", ...}``).
        Spline codes are read at these layers; density counts crossings at them.
    space_layers: module paths whose outputs may be the space a path lives in
        (``--layer``): usually the activation layers plus post-activation sites.
    prepare: raw input (a path, an index, text, an array) -> model input tensor ``[1, ...]``.
    default_inputs: ``n -> [n, ...]`` bundled, offline example inputs (``None`` when none).
    describe_output: model output ``[n, ...]`` -> one label per input (class name or top token),
        for setting density peaks against output changes.
    provenance: extra facts to record (weights source, checksum, config).
    """

    name: str
    module: nn.Module
    activation_layers: dict[str, Activation]
    space_layers: Sequence[str]
    prepare: Callable[[object], Tensor]
    default_inputs: Callable[[int], Tensor] | None = None
    describe_output: Callable[[Tensor], list[str]] | None = None
    provenance: dict = field(default_factory=dict)

    @property
    def piecewise_linear(self) -> bool:
        """True when every nonlinearity at the activation layers is piecewise-linear."""
        return all(kind in PIECEWISE_LINEAR for kind in self.activation_layers.values())

    def check_layer(self, layer: str, *, allowed: Sequence[str] | None = None) -> str:
        """Return ``layer`` if known, else a ValueError listing the available names."""
        names = list(allowed if allowed is not None else self.space_layers)
        if layer not in names:
            shown = ", ".join(names[:40]) + (f", ... ({len(names) - 40} more)" if len(names) > 40 else "")
            raise ValueError(f"unknown layer {layer!r} for model {self.name}; available layers: {shown}")
        return layer
