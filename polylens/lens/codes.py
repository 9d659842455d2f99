"""Spline codes: which neurons are on, per input, bit-packed, with the layer map kept.

Hard code of a unit with pre-activation z: one bit per breakpoint of its activation
(``polylens.models.base.BREAKPOINTS``), thermometer style, ``1[z > breakpoint]``: ``1[z > 0]`` for
ReLU, identity and the smooth kinds (the polytope an input lies in). ReLU6's three states
(z ≤ 0, 0 < z ≤ 6, z > 6) are two bits a unit, ``1[z > 0]`` and ``1[z > 6]``, so the Hamming
distance between two codes is the number of (unit, breakpoint) boundaries between them (a jump
from state 0 to state 2 counts 2). A layer's bits are written in blocks, one per breakpoint, each
over all the layer's flattened units (block 0: every unit's ``z > 0``, then block 1: every unit's
``z > 6``); ``LayerSlot.bit_meaning`` maps a bit back to its (unit, breakpoint).
Soft (probabilistic) code for smooth activations: ``Φ(z)`` for GELU (the tanh form
``0.5·(1 + tanh(√(2/π)(z + 0.044715 z³)))`` for ``gelu_tanh``, as GPT-2 uses), ``σ(βz)``
for SiLU/Swish; the hard code is their β → ∞ limit. Because Φ, σ > 0, GELU/SiLU outputs
are positive exactly when z > 0, so the hard code also equals ``post-activation > 0``.

There is one code type, ``SplineCodes``: hard bits packed 64 to a ``uint64`` word
(``[n, ceil(n_units/64)]``), the bit count ``n_units`` (one bit a unit except for ReLU6), the
layer map (name, kind, offset and size in bits, unit shape) and provenance; optionally the soft
codes ``[n, n_units]`` beside them (ReLU6's as its two 0/1 bits: piecewise-linear, no softness).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from polylens.clustering.hamming import pairwise, popcount_rows, unique_rows
from polylens.models.base import BREAKPOINTS
from polylens.validation import check_float, check_int

if TYPE_CHECKING:  # torch is imported where codes are made from tensors: reading a codes file needs none
    from torch import Tensor

SOFT_KINDS = ("relu", "relu6", "identity", "gelu", "gelu_tanh", "silu")


def breakpoints(kind: str) -> tuple[float, ...]:
    """Where activation ``kind`` changes slope (``BREAKPOINTS``); a kind not listed there has one, 0."""
    return BREAKPOINTS.get(kind, (0.0,))


def hard_code(z: Tensor) -> Tensor:
    """``1[z > 0]`` as bool, same shape as ``z``."""
    return z > 0


def hard_bits(z: Tensor, kind: str = "relu") -> Tensor:
    """A layer's hard code bits ``[n, B·units]`` from its flattened pre-activations ``z [n, units]``:
    block j (columns ``j·units … (j+1)·units − 1``) is ``1[z > breakpoint_j]`` of ``kind``."""
    import torch

    return torch.cat([z > bp for bp in breakpoints(kind)], dim=1)


def soft_bits(z: Tensor, kind: str, beta: float = 1.0) -> Tensor:
    """The soft counterpart of ``hard_bits``, ``[n, B·units]`` float: ``soft_code`` for the kinds
    with one breakpoint, the hard bits as 0./1. for ReLU6 (piecewise-linear: no softness)."""
    import torch

    if len(breakpoints(kind)) == 1:
        return soft_code(z, kind, beta)
    z = z.double() if z.dtype == torch.float64 else z.float()
    return hard_bits(z, kind).to(z.dtype)


def soft_code(z: Tensor, kind: str, beta: float = 1.0) -> Tensor:
    """Probability that each unit is on, same shape as ``z`` (float).

    kind: ``gelu`` → Φ(z); ``gelu_tanh`` → the tanh approximation of Φ; ``silu`` → σ(βz);
    ``relu``/``identity`` → the hard code as 0./1. (piecewise-linear: no softness). ``relu6`` has
    two bits a unit, not one: its soft code is ``soft_bits``.
    """
    import torch

    z = z.double() if z.dtype == torch.float64 else z.float()
    if kind == "gelu":
        return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    if kind == "gelu_tanh":
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))
    if kind == "silu":
        check_float("beta", beta, low=0, open_low=True)  # the SiLU/Swish soft code σ(βz)
        return torch.sigmoid(beta * z)
    if kind in ("relu", "identity"):
        return (z > 0).to(z.dtype)
    if kind == "relu6":
        raise ValueError("relu6 has two code bits a unit (z > 0, z > 6); its soft code is soft_bits(z, 'relu6')")
    raise ValueError(f"unknown activation kind {kind!r}; expected one of {', '.join(SOFT_KINDS)}")


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """``[n, n_units]`` bool → ``[n, ceil(n_units/64)]`` uint64 (unit i is bit i%64 of word i//64)."""
    bits = np.asarray(bits, dtype=bool)
    if bits.ndim != 2:
        raise ValueError(f"bits must be 2-D [n, n_units], got shape {bits.shape}")
    n, units = bits.shape
    n_words = max(1, -(-units // 64))
    padded = np.zeros((n, n_words * 64), dtype=bool)
    padded[:, :units] = bits
    return np.packbits(padded, axis=1, bitorder="little").view("<u8").reshape(n, n_words).astype(np.uint64)


def unpack_bits(words: np.ndarray, n_units: int) -> np.ndarray:
    """Inverse of ``pack_bits``: ``[n, n_words]`` uint64 → ``[n, n_units]`` bool."""
    words = np.ascontiguousarray(words, dtype="<u8")
    as_bytes = words.view(np.uint8).reshape(words.shape[0], -1)
    return np.unpackbits(as_bytes, axis=1, bitorder="little", count=n_units).astype(bool)


@dataclass(frozen=True)
class LayerSlot:
    """Where one layer's bits sit in the concatenated code.

    offset, size: the layer's first bit and its bit count, ``len(breakpoints) · units``; shape:
    the unit shape (one pre-activation a unit). Bit ``i`` of the layer (``0 ≤ i < size``) is
    ``1[z_u > breakpoints[j]]`` with ``(u, breakpoints[j]) = bit_meaning(i)``.
    """

    name: str
    kind: str
    offset: int
    size: int
    shape: tuple[int, ...]

    def __post_init__(self):
        if self.size % len(self.breakpoints):
            raise ValueError(
                f"layer {self.name!r} of kind {self.kind} has {len(self.breakpoints)} bits a unit, "
                f"so its size must be a multiple of that, not {self.size}"
            )

    @property
    def breakpoints(self) -> tuple[float, ...]:
        """Where the layer's activation changes slope: one code bit a unit for each."""
        return breakpoints(self.kind)

    @property
    def units(self) -> int:
        """The layer's unit count (pre-activations), also the length of each breakpoint's block of bits."""
        return self.size // len(self.breakpoints)

    def bit_meaning(self, bit: int) -> tuple[int, float]:
        """Bit ``bit`` of this layer (counted from the layer's offset) → (the unit's flat index, the
        breakpoint the bit compares its pre-activation with)."""
        if not 0 <= bit < self.size:
            raise ValueError(f"bit={bit} is outside layer {self.name!r}'s {self.size} bits")
        block, unit = divmod(bit, self.units)
        return unit, self.breakpoints[block]


@dataclass
class SplineCodes:
    """Hard spline codes of ``n`` inputs over one or more layers (concatenated in order).

    words: ``[n, n_words]`` uint64, packed by ``pack_bits``.
    n_units: total bits over all layers (one a unit, two a ReLU6 unit); layers: the layer map.
    soft: ``[n, n_units]`` float32 probabilities, or None (hard codes only).
    provenance: ``{"model": str, "input_ids": [str], ...}``.
    """

    words: np.ndarray
    n_units: int
    layers: tuple[LayerSlot, ...]
    soft: np.ndarray | None = None
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.words.ndim != 2 or self.words.shape[1] != max(1, -(-self.n_units // 64)):
            raise ValueError(f"words shape {self.words.shape} does not fit n_units={self.n_units}")
        if sum(s.size for s in self.layers) != self.n_units:
            raise ValueError(f"layer sizes sum to {sum(s.size for s in self.layers)}, not n_units={self.n_units}")

    @classmethod
    def from_preactivations(
        cls,
        preacts: Mapping[str, Tensor],
        kinds: Mapping[str, str] | None = None,
        *,
        soft: bool = False,
        beta: float = 1.0,
        provenance: dict | None = None,
    ) -> SplineCodes:
        """Codes from pre-activations ``name -> [n, *unit_shape]`` (concatenated in mapping order).

        kinds: ``name -> activation kind`` (``relu`` where not given); a kind with B breakpoints
        gives its layer B blocks of bits (``hard_bits``)."""
        import torch

        kinds = dict(kinds or {})
        if soft:
            check_float("beta", beta, low=0, open_low=True)  # the SiLU/Swish soft code σ(βz)
        slots, bits, probs, offset, n = [], [], [], 0, None
        for name, z in preacts.items():
            if n is not None and z.shape[0] != n:
                raise ValueError(f"layer {name!r} has {z.shape[0]} rows, the others {n}")
            n = z.shape[0]
            if torch.isnan(z).any():
                raise ValueError(f"layer {name!r} has NaN pre-activations; check the model and inputs")
            flat = z.detach().reshape(n, -1)
            kind = kinds.get(name, "relu")
            size = len(breakpoints(kind)) * flat.shape[1]
            slots.append(LayerSlot(name, kind, offset, size, tuple(z.shape[1:])))
            offset += size
            bits.append(hard_bits(flat, kind).cpu().numpy())
            if soft:
                probs.append(soft_bits(flat, kind, beta).float().cpu().numpy())
        if not slots:
            raise ValueError("no layers given to build codes from")
        allbits = np.concatenate(bits, axis=1)
        return cls(
            pack_bits(allbits),
            offset,
            tuple(slots),
            np.concatenate(probs, axis=1) if soft else None,
            dict(provenance or {}),
        )

    def __len__(self) -> int:
        return self.words.shape[0]

    @property
    def layer_names(self) -> list[str]:
        return [s.name for s in self.layers]

    def unpack(self) -> np.ndarray:
        """``[n, n_units]`` bool."""
        return unpack_bits(self.words, self.n_units)

    def _slot(self, name: str) -> LayerSlot:
        for s in self.layers:
            if s.name == name:
                return s
        raise ValueError(f"layer {name!r} is not in these codes; they hold {', '.join(self.layer_names)}")

    def layer(self, name: str | Sequence[str]) -> SplineCodes:
        """The codes of one layer (or several, in the given order) as a new ``SplineCodes``."""
        names = [name] if isinstance(name, str) else list(name)
        bits = self.unpack()
        slots, parts, soft, offset = [], [], [], 0
        for n in names:
            s = self._slot(n)
            parts.append(bits[:, s.offset : s.offset + s.size])
            if self.soft is not None:
                soft.append(self.soft[:, s.offset : s.offset + s.size])
            slots.append(LayerSlot(s.name, s.kind, offset, s.size, s.shape))
            offset += s.size
        return SplineCodes(
            pack_bits(np.concatenate(parts, axis=1)),
            offset,
            tuple(slots),
            np.concatenate(soft, axis=1) if soft else None,
            dict(self.provenance),
        )

    def rows(self, index) -> SplineCodes:
        """A subset of inputs (any numpy index over the first axis); provenance ids follow."""
        idx = np.arange(len(self))[index]
        prov = dict(self.provenance)
        if "input_ids" in prov:
            prov["input_ids"] = [prov["input_ids"][i] for i in np.atleast_1d(idx)]
        soft = None if self.soft is None else self.soft[np.atleast_1d(idx)]
        return SplineCodes(self.words[np.atleast_1d(idx)], self.n_units, self.layers, soft, prov)

    def _check_compatible(self, other: SplineCodes) -> None:
        if other.n_units != self.n_units or [s.size for s in other.layers] != [s.size for s in self.layers]:
            raise ValueError(
                f"codes have different layouts: {self.n_units} units {self.layer_names} "
                f"vs {other.n_units} units {other.layer_names}"
            )

    def hamming(self, other: SplineCodes) -> np.ndarray:
        """Row-wise Hamming distance ``[n]`` to ``other`` (same n, or one row broadcast)."""
        self._check_compatible(other)
        return popcount_rows(self.words ^ other.words)

    def hamming_matrix(self, other: SplineCodes | None = None) -> np.ndarray:
        """All pairwise Hamming distances ``[n, m]`` int32 (``other`` defaults to self), computed
        blockwise by the fastest exact route here (``polylens.clustering.hamming.pairwise``)."""
        other = self if other is None else other
        self._check_compatible(other)
        return pairwise(self.words, other.words)

    def consecutive_hamming(self) -> np.ndarray:
        """Hamming distance between rows i and i+1: ``[n - 1]`` (the profile along a path)."""
        return popcount_rows(self.words[1:] ^ self.words[:-1])

    def expected_hamming(self, other: SplineCodes) -> np.ndarray:
        """Soft-code distance ``Σ p(1−q) + q(1−p)`` row-wise ``[n]`` (needs soft codes)."""
        self._check_compatible(other)
        if self.soft is None or other.soft is None:
            raise ValueError("expected_hamming needs soft codes; build them with soft=True")
        p, q = self.soft.astype(np.float64), other.soft.astype(np.float64)
        return (p * (1 - q) + q * (1 - p)).sum(axis=1)

    def n_distinct(self) -> int:
        """How many different codes the rows hold."""
        return len(unique_rows(self.words).rows)

    def summary(self) -> dict:
        """What the codes hold: ``model``, ``n_inputs``, ``n_units`` (bits), ``distinct_codes`` and per
        layer ``name``, ``kind``, ``units``, ``bits`` (``units`` × breakpoints), ``shape`` and
        ``fraction_on`` (the share of bits set)."""
        bits = self.unpack()
        layers = [
            {
                "name": slot.name,
                "kind": slot.kind,
                "units": slot.units,
                "bits": slot.size,
                "shape": list(slot.shape),
                "fraction_on": float(bits[:, slot.offset : slot.offset + slot.size].mean()),
            }
            for slot in self.layers
        ]
        return {
            "model": self.provenance.get("model"),
            "n_inputs": len(self),
            "n_units": self.n_units,
            "distinct_codes": self.n_distinct(),
            "layers": layers,
        }

    def metadata(self) -> dict:
        return {
            "format": "polylens.spline_codes/1",
            "n_units": self.n_units,
            "layers": [
                {"name": s.name, "kind": s.kind, "offset": s.offset, "size": s.size, "shape": list(s.shape)}
                for s in self.layers
            ],
            "provenance": self.provenance,
        }

    def save(self, path: str) -> None:
        """Write an ``.npz`` (arrays ``words``, optional ``soft``, JSON ``meta``); no pickle."""
        arrays = {"words": self.words, "meta": np.array(json.dumps(self.metadata()))}
        if self.soft is not None:
            arrays["soft"] = self.soft
        with open(path, "wb") as fh:  # a file object keeps numpy from appending ".npz"
            np.savez_compressed(fh, **arrays)

    @classmethod
    def load(cls, path: str) -> SplineCodes:
        """Read a file written by ``save``."""
        import zipfile

        try:
            data = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile):
            raise ValueError(
                f"{path} is not a polylens spline-code file (an .npz written by `polylens codes`)"
            ) from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(
                f"{path} is not a polylens spline-code file (an .npz written by `polylens codes`); it holds one array"
            )
        with data:
            if "words" not in data or "meta" not in data:
                raise ValueError(f"{path} is not a polylens spline-code file (needs arrays 'words' and 'meta')")
            meta = json.loads(str(data["meta"]))
            words = data["words"].astype(np.uint64)
            soft = data["soft"] if "soft" in data else None
        slots = tuple(
            LayerSlot(d["name"], d["kind"], d["offset"], d["size"], tuple(d["shape"])) for d in meta["layers"]
        )
        return cls(words, int(meta["n_units"]), slots, soft, meta.get("provenance", {}))


def extract_codes(
    adapter,
    inputs: Tensor,
    layers: str | Sequence[str] | None = None,
    *,
    soft: bool = False,
    beta: float = 1.0,
    batch_size: int = 64,
    input_ids: Sequence[str] | None = None,
    per_position: bool = False,
    position: tuple[int, int] | None = None,
    progress: bool = False,
) -> SplineCodes:
    """Spline codes of ``inputs [n, ...]`` at activation ``layers`` of a ``ModelAdapter``.

    Pre-activations are read through ``polylens.capture`` with the forward pass stopped after the
    last layer. layers: names, wildcards, or None for all activation layers. per_position: treat
    axis 1 of each pre-activation (tokens of ``[n, seq, d]``) as separate rows: ``[n·seq, d]``.
    position: ``(h, w)``: keep only the channel vector at that spatial position of conv layers
    ``[n, C, H, W]`` → ``[n, C]`` (the Polytope Lens paper's protocol for image models).
    progress: a bar on stderr (inputs done, rate, time left).
    """
    from polylens.progress import progress_bar

    check_int("batch_size", batch_size, low=1)
    if soft:
        check_float("beta", beta, low=0, open_low=True)  # the SiLU/Swish soft code σ(βz)
    ids = list(input_ids) if input_ids is not None else [str(i) for i in range(inputs.shape[0])]
    parts, seq_len = [], None
    bar = progress_bar(inputs.shape[0], f"codes {adapter.name}", enabled=progress)
    for start in range(0, inputs.shape[0], batch_size):  # packed a batch at a time: float activations never pile up
        names, preacts = layer_preactivations(
            adapter, inputs[start : start + batch_size], layers, batch_size=batch_size, position=position
        )
        bar.update(min(batch_size, inputs.shape[0] - start))
        if per_position:
            seq = {z.shape[1] for z in preacts.values() if z.dim() >= 3}
            if len(seq) != 1 or any(z.dim() < 3 for z in preacts.values()):
                raise ValueError("per_position needs every layer shaped [n, positions, units]")
            (seq_len,) = seq
            preacts = {n: z.reshape(z.shape[0] * seq_len, *z.shape[2:]) for n, z in preacts.items()}
        parts.append(
            SplineCodes.from_preactivations(
                preacts, {n: adapter.activation_layers[n] for n in names}, soft=soft, beta=beta
            )
        )
    bar.close()
    if per_position:
        ids = [f"{i}@{p}" for i in ids for p in range(seq_len)]
    prov = {
        "model": adapter.name,
        "layers": names,
        "input_ids": ids,
        "soft": soft,
        "beta": beta,
        "position": list(position) if position else None,
    }
    soft_codes = np.concatenate([c.soft for c in parts]) if soft else None
    return SplineCodes(np.concatenate([c.words for c in parts]), parts[0].n_units, parts[0].layers, soft_codes, prov)


def resolve_activation_layers(adapter, layers: str | Sequence[str] | None) -> list[str]:
    """Activation-layer names (exact or wildcards; None: all) in forward order; unknown → ValueError."""
    import fnmatch

    available = list(adapter.activation_layers)
    if layers is None:
        return available
    names: list[str] = []
    for pat in [layers] if isinstance(layers, str) else list(layers):
        hits = [n for n in available if n == pat or fnmatch.fnmatchcase(n, pat)]
        if not hits:
            adapter.check_layer(pat, allowed=available)
        names.extend(h for h in hits if h not in names)
    return [n for n in available if n in names]


def layer_preactivations(
    adapter,
    inputs: Tensor,
    layers: str | Sequence[str] | None,
    *,
    batch_size: int = 64,
    position: tuple[int, int] | None = None,
    outputs: list | None = None,
) -> tuple[list[str], dict[str, Tensor]]:
    """Pre-activations ``name -> [n, ...]`` of ``inputs`` at activation ``layers``, read through
    ``polylens.capture`` with the forward pass stopped after the last of them. position ``(h, w)``:
    only the channel vector there of conv layers (``[n, C, H, W]`` → ``[n, C]``). ``outputs``: a
    list to append the model's output to; the same pass then runs to the end."""
    from polylens.capture import capture

    names = resolve_activation_layers(adapter, layers)
    got = capture(adapter.module, inputs, names, batch_size=batch_size, keep_output=outputs is not None)
    if outputs is not None:
        outputs.append(got.output)
    preacts = {n: got.activations[n] for n in names}
    if position is not None:
        h, w = position
        for n, z in preacts.items():
            if z.dim() != 4:
                raise ValueError(
                    f"position=({h}, {w}) needs conv layers [n, C, H, W]; {n!r} has shape {tuple(z.shape)}"
                )
            if not (0 <= h < z.shape[2] and 0 <= w < z.shape[3]):
                raise ValueError(
                    f"position=({h}, {w}) is outside layer {n!r} of spatial size {z.shape[2]}x{z.shape[3]}"
                )
        preacts = {n: z[:, :, h, w] for n, z in preacts.items()}
    return names, preacts
