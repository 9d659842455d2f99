"""Downstream targets whose gradients polylens reads with respect to a layer.

A target turns a model's output into ``[batch]`` (a scalar per input) or ``[batch, k]`` (k
columns: the rows of a Jacobian) for ``polylens.capture.capture(..., target=...)``. Classifier
outputs are ``[B, C]`` logits; a language model's are ``[B, T, V]``, and its targets sum over the
context's positions (every position's gradient with respect to a row at position s comes from the
outputs at s and after).

``"logits"`` is the Jacobian of every logit when there are at most ``MAX_JACOBIAN_COLUMNS``
(digits: 10). Beyond that (GPT-2's 50,257, InceptionV1's 1,008) it is a random sketch: k =
``SKETCH_COLUMNS`` columns ``Σ_t out_t · r_{t,j} / √k`` with r Gaussian,
drawn afresh for every input and position, whose Jacobian rows give E[JᵀJ] without bias
(E[r rᵀ] = I) and, averaged over many inputs, many independent projections: an estimate, and
``describe`` says so.

A sentence encoder's output is its embedding ``[B, d]`` (``output_kind="embedding"``): its one
target, ``"embedding"``, is the embedding's Jacobian, sketched in the same way (d = 384 for
MiniLM). The cosine to the unablated embedding would be no target: it is at its maximum there, so
its gradient is zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_JACOBIAN_COLUMNS = 32
SKETCH_COLUMNS = 8
KINDS = ("logits", "loss", "predicted")
EMBEDDING = "embedding"


@dataclass
class Target:
    """A parsed target: ``kind`` one of ``KINDS`` or ``"class"`` (then ``index``)."""

    kind: str
    n_outputs: int
    is_text: bool
    index: int | None = None
    seed: int = 0

    @property
    def sketched(self) -> bool:
        return self.kind in ("logits", EMBEDDING) and (self.is_text or self.n_outputs > MAX_JACOBIAN_COLUMNS)

    @property
    def columns(self) -> int:
        if self.kind not in ("logits", EMBEDDING):
            return 1
        return SKETCH_COLUMNS if self.sketched else self.n_outputs

    def describe(self) -> str:
        where = " summed over the context's positions" if self.is_text else ""
        if self.kind == EMBEDDING:
            return (
                f"a random sketch of the Jacobian of the {self.n_outputs}-dimensional sentence embedding: "
                f"{SKETCH_COLUMNS} Gaussian projections per input, drawn afresh for each "
                "(an unbiased estimate of E[JᵀJ], not the exact value)"
                if self.sketched
                else f"the Jacobian of all {self.n_outputs} embedding coordinates"
            )
        if self.kind == "logits":
            if self.sketched:
                return (
                    f"a random sketch of the Jacobian of the {self.n_outputs} logits{where}: "
                    f"{SKETCH_COLUMNS} Gaussian projections "
                    f"per input{' and position' if self.is_text else ''}, drawn afresh for each "
                    "(an unbiased estimate of E[JᵀJ], not the exact value)"
                )
            return f"the Jacobian of all {self.n_outputs} logits"
        if self.kind == "loss":
            return (
                "the next-token cross-entropy summed over the context"
                if self.is_text
                else "the cross-entropy with the input's label"
            )
        if self.kind == "predicted":
            return "the logit of the predicted token" + where if self.is_text else "the logit of the predicted class"
        return f"the logit of class {self.index}{where}"

    def fn(self, tokens=None, labels=None, offset: int = 0):
        """``out -> [B]`` or ``[B, k]`` for one batch (``tokens`` / ``labels``: that batch's;
        ``offset``: the index of its first input, so a sketch draws the same projections for an
        input whatever the batch size)."""
        import torch
        import torch.nn.functional as F

        if self.kind == "loss":
            if self.is_text:
                return (
                    lambda out: F.cross_entropy(
                        out[:, :-1].reshape(-1, out.shape[-1]).float(), tokens[:, 1:].reshape(-1), reduction="none"
                    )
                    .reshape(tokens.shape[0], -1)
                    .sum(1)
                )
            return lambda out: F.cross_entropy(out.float(), labels, reduction="none")
        if self.kind == "predicted":
            if self.is_text:  # each position's top logit, summed over the context
                return lambda out: out.max(-1).values.sum(1)
            return lambda out: out.gather(1, out.argmax(1, keepdim=True)).squeeze(1)
        if self.kind == "class":
            return (lambda out: out[:, :, self.index].sum(1)) if self.is_text else (lambda out: out[:, self.index])
        if not self.sketched:
            return lambda out: out
        k = SKETCH_COLUMNS

        def proj(i: int, t: int, like):  # r_{i,t} [V, k] for input i (counted from 0 over the run) and position t
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + i) * 4_099 + t)
            return torch.randn(self.n_outputs, k, generator=g).to(like.device, like.dtype)

        def sketch(out):
            B = out.shape[0]
            if not self.is_text:
                return torch.stack([out[b] @ proj(offset + b, 0, out) for b in range(B)]) / math.sqrt(k)
            return sum(
                torch.stack([out[b, t] @ proj(offset + b, t, out) for b in range(B)]) for t in range(out.shape[1])
            ) / math.sqrt(k)

        return sketch


def parse_target(
    spec: str, output_shape, *, is_text: bool, has_labels: bool, seed: int = 0, output_kind: str = "classes"
) -> Target:
    """``logits``, ``loss``, ``predicted`` or a class index, checked against the model's output
    shape (``[1, C]`` or ``[1, T, V]``) and whether labels exist; for a sentence encoder
    (``output_kind="embedding"``, output ``[1, d]``) only ``embedding``."""
    shape = tuple(output_shape)
    if output_kind == EMBEDDING:
        if spec != EMBEDDING or len(shape) != 2:
            raise ValueError(
                f"target={spec!r}: a sentence encoder's target is its embedding; use target='embedding'"
                if len(shape) == 2
                else f"a sentence encoder's output must be [batch, d], got shape {shape}"
            )
        return Target(EMBEDDING, shape[-1], False, None, seed)
    if len(shape) not in (2, 3) or (len(shape) == 3 and not is_text):
        raise ValueError(
            f"the model's output has shape {shape}; "
            "targets read [batch, classes] logits or a language model's [batch, positions, vocabulary]"
        )
    n = shape[-1]
    spec = str(spec)
    if spec.lstrip("-").isdigit():
        index = int(spec)
        if not 0 <= index < n:
            raise ValueError(
                f"target={spec!r}: the model has {n} outputs, so a class index must be between 0 and {n - 1}"
            )
        return Target("class", n, is_text, index, seed)
    if spec not in KINDS:
        raise ValueError(
            f"target={spec!r} is not a target of this model; choose logits, loss, predicted or a class index 0-{n - 1}"
        )
    if spec == "loss" and not (is_text or has_labels):
        raise ValueError(
            "target='loss' needs labels and these inputs have none (bundled digits inputs and text have them); "
            "use target='logits' or a class index"
        )
    return Target(spec, n, is_text, None, seed)
