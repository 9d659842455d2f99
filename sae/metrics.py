"""Recovery and reconstruction metrics (pure functions; torch in, floats out).

Cosines are between rows: ``truth [G, d]`` ground-truth directions, ``learned [n, d]`` decoder rows.
MMCS uses the signed cosine (Sharkey et al.); the Hungarian match and the recovered fraction use
|cos| (O'Neill et al. / SAELens "MCC"), so a sign-flipped latent counts as a match. These two are
the only implementation of the sign-invariant match: ``polylens compare`` scores its methods with
them too (``polylens.directions.scoring`` keeps the sign-invariant MMCS and subspace overlap).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from sae.geometry import unit_rows


def _unit(W) -> Tensor:
    """Rows of ``W`` (a tensor or an array) as unit float64 rows on the CPU."""
    return unit_rows(torch.as_tensor(W).detach().double().cpu())


def cosines(truth: Tensor, learned: Tensor) -> Tensor:
    """Signed cosine matrix ``[G, n]`` (float64)."""
    return _unit(truth) @ _unit(learned).T


def mmcs_signed(truth: Tensor, learned: Tensor) -> float:
    """Mean over ground-truth features of the max signed cosine with any learned row (GT → learned).

    Signed, for dictionary features whose coefficients are non-negative: a decoder row pointing
    away from a feature cannot reconstruct it. ``polylens compare``'s ``mmcs`` is the sign-invariant
    one, for PCA-like bases whose signs are arbitrary."""
    return float(cosines(truth, learned).max(dim=1).values.mean())


def mmcs_signed_learned(truth: Tensor, learned: Tensor, alive: Tensor | None = None) -> float:
    """Mean over (alive) learned rows of the max signed cosine with a ground-truth feature (learned → GT)."""
    cos = cosines(truth, learned).T  # [n, G]
    if alive is not None:
        cos = cos[torch.as_tensor(alive).cpu().bool()]
    return float(cos.max(dim=1).values.mean()) if cos.shape[0] else float("nan")


def hungarian(truth: Tensor, learned: Tensor) -> tuple[np.ndarray, np.ndarray, float]:
    """One-to-one match maximising Σ|cos| (SciPy); returns (truth idx, learned idx, score).

    The score is Σ matched |cos| / G: averaged over the ground-truth features, an unmatched one
    (fewer latents than features) counting 0. With at least as many latents as features this is
    SAELens's "MCC"."""
    from scipy.optimize import linear_sum_assignment

    cos = cosines(truth, learned).abs().numpy()
    rows, cols = linear_sum_assignment(-cos)
    return rows, cols, float(cos[rows, cols].sum() / cos.shape[0])


def frac_recovered(truth: Tensor, learned: Tensor, threshold: float = 0.9) -> float:
    """Share of ground-truth features whose best |cos| with a learned row is >= threshold."""
    return float((cosines(truth, learned).abs().max(dim=1).values >= threshold).float().mean())


def mean_l2_ratio(
    truth: Tensor, learned: Tensor, codes: Tensor | None = None, acts: Tensor | None = None, threshold: float = 0.9
) -> float:
    """Mean L2 ratio of the recovered features (APD's shrinkage check against ground truth).

    Over the Hungarian-matched pairs (g, j) with |cos| >= ``threshold`` (a badly matched pair's
    ratio says nothing about shrinkage and can be 100×): with the true coefficients ``codes [N, G]``
    and the latent activations ``acts [N, n]`` on the same samples, Σ_s a_j(s)·‖d_j‖ / Σ_s c_g(s)·‖f_g‖
    per pair whose feature fires (< 1: shrinkage, or the feature split over several latents),
    averaged; without them ‖d_j‖ / ‖f_g‖ (informative only when decoder norms are free). NaN when
    no pair qualifies.
    """
    T = torch.as_tensor(truth).detach().float().cpu()
    L = torch.as_tensor(learned).detach().float().cpu()
    rows, cols, _ = hungarian(T, L)
    rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
    good = cosines(T, L)[rows, cols].abs() >= threshold
    rows, cols = rows[good], cols[good]
    if rows.numel() == 0:
        return float("nan")
    dn, tn = L[cols].norm(dim=1), T[rows].norm(dim=1).clamp_min(1e-12)
    if codes is None or acts is None:
        return float((dn / tn).mean())
    C = torch.as_tensor(codes).detach().double().cpu()[:, rows]
    A = torch.as_tensor(acts).detach().double().cpu()[:, cols]
    true_mass = (C * tn.double()).sum(0)
    fires = true_mass > 0
    if not bool(fires.any()):
        return float("nan")
    ratio = (A * dn.double()).sum(0)[fires] / true_mass[fires]
    return float(ratio.mean())


def l0(acts: Tensor) -> float:
    """Mean number of non-zero latents per sample."""
    return float((acts != 0).float().sum(-1).mean())


def explained_variance(x: Tensor, recon: Tensor) -> float:
    """1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖² (about the mean, not about zero)."""
    x, recon = x.detach().double(), recon.detach().double()
    return float(1 - (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-30))


def shrinkage(x: Tensor, recon: Tensor) -> float:
    """Mean ‖x̂‖ / ‖x‖ over samples with x ≠ 0 (< 1: the L1 penalty shrinks reconstructions)."""
    nx = x.detach().double().norm(dim=-1)
    keep = nx > 0
    return float((recon.detach().double().norm(dim=-1)[keep] / nx[keep]).mean())


def dead_fraction(acts: Tensor) -> float:
    """Share of latents that never fire on ``acts [N, n]``."""
    return float(((acts != 0).sum(0) == 0).float().mean())


def _as_tensor(x, name: str = "x") -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (str, Path)):
        from sae.sources import load_array

        return load_array(x)
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.asarray(x, dtype=np.float32))
    raise TypeError(f"{name} must be a tensor, a numpy array or a .npy/.safetensors path; got {type(x).__name__}")


class Evaluation(NamedTuple):
    """Everything ``evaluate`` measures (ground-truth fields are NaN without ground truth)."""

    mmcs_signed: float
    mmcs_signed_learned: float
    hungarian_mean_cos: float
    frac_recovered_0_9: float
    mean_l2_ratio: float
    l0: float
    explained_variance: float
    mse: float
    dead_fraction: float
    shrinkage: float
    n_samples: int


@torch.no_grad()
def evaluate(
    sae, x: Tensor, truth: Tensor | None = None, codes: Tensor | None = None, batch_size: int = 8192
) -> Evaluation:
    """Score ``sae`` (in eval mode) on ``x [N, d]`` and, when given, against ``truth [G, d]``
    (``codes [N, G]``, the true coefficients of ``x``, make the mean L2 ratio activation-based).
    ``x`` is what ``Trainer.fit`` reads as rows: a tensor, a numpy array or a ``.npy`` /
    ``.safetensors`` file; ``truth`` and ``codes`` may be arrays too."""
    x = _as_tensor(x)
    truth = None if truth is None else _as_tensor(truth, "truth")
    codes = None if codes is None else _as_tensor(codes, "codes")
    was_training = sae.training
    sae.eval()
    try:
        recons, acts_nz, acts_all = [], [], []
        for i in range(0, x.shape[0], batch_size):
            out = sae(x[i : i + batch_size].to(sae.b_dec.device, sae.b_dec.dtype))
            recons.append(out.recon.float().cpu())
            acts_nz.append((out.acts != 0).cpu())
            if codes is not None:
                acts_all.append(out.acts.float().cpu().to_sparse())
    finally:
        sae.train(was_training)
    recon = torch.cat(recons)
    fired = torch.cat(acts_nz)
    xc = sae.target(x.float().cpu())  # what was reconstructed: a transcoder's y
    alive = fired.any(0)
    dec = sae.decoder.detach()
    nan = float("nan")
    if truth is not None:
        acts = torch.cat(acts_all).to_dense() if codes is not None else None
        l2 = mean_l2_ratio(truth, dec, codes, acts)
        gt = (
            mmcs_signed(truth, dec),
            mmcs_signed_learned(truth, dec, alive),
            hungarian(truth, dec)[2],
            frac_recovered(truth, dec),
            l2,
        )
    else:
        gt = (nan,) * 5
    return Evaluation(
        *gt,
        l0=float(fired.float().sum(-1).mean()),
        explained_variance=explained_variance(xc, recon),
        mse=float((xc - recon).pow(2).sum(-1).mean()),
        dead_fraction=float((~alive).float().mean()),
        shrinkage=shrinkage(xc, recon),
        n_samples=int(x.shape[0]),
    )


class SynthBench(NamedTuple):
    """SynthSAEBench's metrics (Chanin et al., ``sae_lens.synthetic.eval_sae_on_synthetic_data``)."""

    true_l0: float
    """Mean number of ground-truth features active per sample."""
    sae_l0: float
    dead_latents: int
    """Latents that never fired (a count, as SAELens reports it; ``dead_fraction`` is ours)."""
    shrinkage: float
    """Mean ‖x̂‖/‖x‖ over samples with ‖x‖ > 1e-6."""
    explained_variance: float
    mcc: float
    """Mean |cos| of a one-to-one Hungarian matching of decoder rows to features, over the
    min(latents, features) matched pairs."""
    uniqueness: float
    """Distinct best-matching features (by |cos| of each decoder row) ÷ latents."""
    precision: float
    """Each latent as a detector of its best-matching feature (fires ⇔ the feature's coefficient
    > 0): TP/(TP+FP), 0 where undefined, averaged over all latents; likewise ``recall``, ``f1_score``
    and ``accuracy``."""
    recall: float
    f1_score: float
    accuracy: float


@torch.no_grad()
def synth_bench(sae, x, truth, codes, batch_size: int = 8192) -> SynthBench:
    """SynthSAEBench's metrics for ``sae`` on ``x [N, d]`` = ``codes [N, G]`` @ ``truth [G, d]``."""
    from scipy.optimize import linear_sum_assignment

    x, truth, codes = _as_tensor(x), _as_tensor(truth, "truth"), _as_tensor(codes, "codes")
    dec = sae.decoder.detach().float().cpu()
    cos = cosines(dec, truth.float()).abs()  # [n, G]
    best = cos.argmax(dim=1)
    rows, cols = linear_sum_assignment(-cos.double().numpy())
    n = dec.shape[0]
    tp, fp, fn, tn = (torch.zeros(n, dtype=torch.float64) for _ in range(4))
    fired = torch.zeros(n, dtype=torch.bool)
    l0 = sq_resid = 0.0
    ratios = []
    was_training = sae.training
    sae.eval()
    try:
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size].to(sae.b_dec.device, sae.b_dec.dtype)
            acts = sae.encode(xb)
            recon = sae.decode(acts).double().cpu()
            on = (acts != 0).cpu()
            truth_on = codes[i : i + batch_size][:, best] > 0
            tp += (on & truth_on).double().sum(0)
            fp += (on & ~truth_on).double().sum(0)
            fn += (~on & truth_on).double().sum(0)
            tn += (~on & ~truth_on).double().sum(0)
            fired |= on.any(0)
            l0 += float(on.double().sum())
            xd = xb.double().cpu()
            sq_resid += float((xd - recon).pow(2).sum())
            norms = xd.norm(dim=-1)
            keep = norms > 1e-6
            ratios.append(recon.norm(dim=-1)[keep] / norms[keep])
    finally:
        sae.train(was_training)
    xd = x.double()
    variance = float(xd.pow(2).sum() / len(xd) - (xd.mean(0)).pow(2).sum())
    zero = torch.zeros_like(tp)
    precision = torch.where(tp + fp > 0, tp / (tp + fp), zero)
    recall = torch.where(tp + fn > 0, tp / (tp + fn), zero)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), zero)
    ratio = torch.cat(ratios)
    return SynthBench(
        true_l0=float((codes != 0).double().sum(1).mean()),
        sae_l0=l0 / len(x),
        dead_latents=int((~fired).sum()),
        shrinkage=float(ratio.mean()) if len(ratio) else 0.0,
        explained_variance=1.0 - (sq_resid / len(x)) / variance,
        mcc=float(cos[rows, cols].double().mean()),
        uniqueness=len(best.unique()) / n,
        precision=float(precision.mean()),
        recall=float(recall.mean()),
        f1_score=float(f1.mean()),
        accuracy=float(((tp + tn) / (tp + fp + fn + tn).clamp_min(1e-8)).mean()),
    )


def best_signed_cosines(truth: Tensor, learned: Tensor) -> list[float]:
    """Per ground-truth feature, its best signed cosine with a learned row: the values ``mmcs_signed``
    averages, whose distribution tells "all features half-found" from "half the features found"."""
    return [float(v) for v in cosines(truth, learned).max(dim=1).values]


def plot_best_signed_cos(best_signed_cos, path, title: str = "") -> None:
    """Histogram of the per-feature best cosines (``best_signed_cosines``; run.json's ``best_signed_cos``)
    as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5.5, 3.6), layout="constrained")
    ax.hist(np.asarray(best_signed_cos), bins=np.linspace(-1, 1, 41), color="C0")
    ax.axvline(0.9, color="k", lw=0.8, ls="--", label="0.9")
    ax.set(
        xlabel="best cosine of a ground-truth feature with a decoder row",
        ylabel="features",
        title=title or "per-feature best cosine",
    )
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
