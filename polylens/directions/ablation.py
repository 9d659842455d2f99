"""What a set of directions in a layer does, where no ground truth exists (``polylens compare
--model``): how much of the activations' variance and of the target's gradient energy lies in
their span, how much the model's output changes when the activations along them are ablated,
and how far two methods' directions agree.

Directions are rows ``[m, d]`` in the layer's row space (``polylens.rows``); the top k of a
method are its first k rows. Spans are taken with an orthonormal basis, so directions that are not
orthogonal (an SAE's decoder rows) are counted once.
"""

from __future__ import annotations

import numpy as np
import torch

from polylens.capture import recording
from polylens.directions.scoring import abs_cosines, span_basis, unit_rows
from polylens.rows import map_rows

ABLATIONS = ("mean", "project")
"""mean: the component along the span is replaced by the mean activation's; project: it is set to 0."""


def ablation_ks(k: int) -> list[int]:
    """The k of an ablation curve: 1, 2, 4, … below ``k``, then ``k``."""
    ks, j = [], 1
    while j < k:
        ks.append(j)
        j *= 2
    return ks + [k]


def subspace_shares(directions, acts, jac, ks) -> tuple[list[float], list[float]]:
    """Per k: the share of the activations' variance E‖P(a − ā)‖² / E‖a − ā‖² and of the gradient
    energy E‖P g‖² / E‖g‖² (summed over the Jacobian rows ``jac [n, c, d]``) inside the span P of
    the first k ``directions``."""
    A = np.asarray(acts, dtype=np.float64)
    A = A - A.mean(0)
    J = np.asarray(jac, dtype=np.float64).reshape(-1, A.shape[1])
    cov, energy = A.T @ A, J.T @ J  # [d, d] second moments (the shares are ratios of their traces)
    var, grad = [], []
    for k in ks:
        Q = span_basis(np.asarray(directions)[:k])
        var.append(float(np.trace(Q @ cov @ Q.T) / max(np.trace(cov), 1e-300)))
        grad.append(float(np.trace(Q @ energy @ Q.T) / max(np.trace(energy), 1e-300)))
    return var, grad


def _ablated(Q: torch.Tensor, mean: torch.Tensor | None):
    def fn(rows: torch.Tensor) -> torch.Tensor:
        centred = rows if mean is None else rows - mean
        return rows - (centred @ Q.T) @ Q

    return fn


def output_change(
    reference: torch.Tensor, out: torch.Tensor, *, is_text: bool, labels=None, tokens=None, embedding: bool = False
) -> tuple[float, float | None]:
    """(mean KL(p_reference ‖ p_out) over inputs (text: over positions after the BOS), accuracy of
    ``out`` or None without labels). Outputs are read as logits; ``embedding``: they are sentence
    embeddings ``[n, d]`` and the change is the mean 1 − cos(reference, out), accuracy None."""
    if embedding:
        cos = torch.nn.functional.cosine_similarity(reference.double(), out.double(), dim=-1)
        return float((1.0 - cos).mean()), None
    ref, new = (reference[:, 1:], out[:, 1:]) if is_text else (reference, out)
    logp, logq = torch.log_softmax(ref.double(), -1), torch.log_softmax(new.double(), -1)
    kl = float((logp.exp() * (logp - logq)).sum(-1).mean())
    if is_text and tokens is not None and tokens.shape[1] > 2:
        acc = float(
            (out[:, 1:-1].argmax(-1) == tokens[:, 2:]).double().mean()
        )  # next-token, positions whose rows were ablated
    elif labels is not None and not is_text:
        acc = float((out.argmax(-1) == labels).double().mean())
    else:
        acc = None
    return kl, acc


def run_model(module, inputs: torch.Tensor, layer: str, *, batch_size: int = 64, patch=None) -> torch.Tensor:
    """The model's output on ``inputs`` (batched, no gradients), with ``layer``'s output passed
    through ``patch`` (a function of it) when given."""
    outs = []
    with torch.no_grad():
        for lo in range(0, inputs.shape[0], batch_size):
            with recording(module, [layer], patch=None if patch is None else {layer: patch}):
                outs.append(module(inputs[lo : lo + batch_size]))
    return torch.cat(outs)


def ablation_curve(
    module,
    inputs,
    layer: str,
    directions,
    ks,
    *,
    is_text: bool,
    mode: str = "mean",
    mean=None,
    labels=None,
    reference=None,
    batch_size: int = 64,
    embedding: bool = False,
) -> dict:
    """Ablate ``layer``'s rows along the span of the first k ``directions`` for each k in ``ks``
    (``mode``: ``ABLATIONS``; ``mean``: the rows' mean ``[d]``) and measure the output's change:
    ``{"k", "kl", "accuracy_drop"}`` (the drop is None without labels); for a sentence encoder
    (``embedding``) ``{"k", "cos_distance", "accuracy_drop": None}``, the change being 1 − cos."""
    if mode not in ABLATIONS:
        raise ValueError(f"ablation {mode!r} is unknown; choose {' or '.join(ABLATIONS)}")
    if reference is None:
        reference = run_model(module, inputs, layer, batch_size=batch_size)
    tokens = inputs if is_text else None
    kw = dict(is_text=is_text, labels=labels, tokens=tokens, embedding=embedding)
    _, base_acc = output_change(reference, reference, **kw)
    p = next(iter(module.parameters()), torch.zeros(()))
    mu = None if mode == "project" else torch.as_tensor(np.asarray(mean), dtype=p.dtype, device=p.device)
    kls, drops = [], []
    for k in ks:
        Q = torch.as_tensor(span_basis(np.asarray(directions)[:k]), dtype=p.dtype, device=p.device)
        patch = lambda v, Q=Q: map_rows(v, _ablated(Q, mu), is_text)  # noqa: E731
        out = run_model(module, inputs, layer, batch_size=batch_size, patch=patch)
        kl, acc = output_change(reference, out, **kw)
        kls.append(kl)
        drops.append(None if acc is None else base_acc - acc)
    key = "cos_distance" if embedding else "kl"
    return {"k": list(ks), key: kls, "accuracy_drop": None if base_acc is None else drops}


def agreement(directions: dict) -> tuple[list[str], list[list[float]]]:
    """Sign-invariant mean max |cos| (``mmcs``, as ``polylens.directions.scoring.score_directions``)
    of each method's directions (rows) against each other's: entry [i][j] is the mean over i's
    directions of their best |cos| with j's."""
    names = list(directions)
    return names, [[float(abs_cosines(directions[a], directions[b]).max(axis=1).mean()) for b in names] for a in names]


def random_directions(k: int, d: int, seed: int = 0) -> np.ndarray:
    """``k`` Gaussian directions in ``d`` dimensions (unit rows): the baseline every method is set against."""
    return unit_rows(np.random.default_rng(seed).standard_normal((k, d)))
