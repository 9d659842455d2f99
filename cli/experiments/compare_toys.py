"""Direction finders and SAEs scored against a toy's ground truth: which method recovers the
directions the toy planted (x²'s read-out, superposition's features)?"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cli.experiments.sae_methods import LayerSAEOptions, SAEOptions, train_sae, train_topk_sae


@dataclass
class CompareResult:
    """Scores of every method against a toy's ground truth (serialises to the documented JSON)."""

    setup: str
    seed: int
    ground_truth: dict
    methods: dict[str, dict]
    toy: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "setup": self.setup,
            "seed": self.seed,
            "ground_truth": self.ground_truth,
            "methods": self.methods,
            "toy": self.toy,
        }


class ToyComparison(NamedTuple):
    """What ``compare`` returns: the scores (``result.to_json()`` is the command's JSON), the trained
    toy and each method's directions ``[m, dim]``."""

    result: CompareResult
    toy: Any
    """The trained ``polylens.directions.toys.Toy`` (its truth, model and inputs)."""
    directions: dict


def method_directions(toy, n_directions: int, seed: int, sae: SAEOptions | None = SAEOptions()) -> dict:
    """Directions each available method proposes in the toy's hidden layer: name -> ``[m, dim]``.

    The PCAs propose ``n_directions``, LIB as many (fewer if the activations span fewer); the SAE
    (on the activations), the gradient SAE (on the gradients, b_dec fixed at 0) and the g-SAE (a
    TopK SAE on the activations selecting by activation × gradient reach) propose their whole
    dictionaries (decoder rows).
    """
    from polylens.directions.finders import LIB, ActivationPCA, GradientPCA

    acts = toy.activations()
    grads = toy.gradients()
    found = {
        "activation_pca": ActivationPCA(n_directions).fit(acts).components_,
        "gradient_pca": GradientPCA(n_directions).fit(grads).components_,
        "lib": LIB().fit(acts, grads).components_[:n_directions],  # at most the activations' rank
    }
    if sae is not None and sae.enabled:
        found["sae"] = _sae_directions(acts, toy.truth.shape[0], seed, sae)
        # on the gradients (Jacobian rows), uncentred as gradient PCA is: a learned b_dec would
        # absorb x²'s constant gradient w_out and leave the dictionary empty
        found["gradient_sae"] = _sae_directions(grads, toy.truth.shape[0], seed, sae, learn_b_dec=False)
        found["gsae"] = _gsae_directions(acts, grads, toy.truth.shape[0], seed, sae)
    return found


def _gsae_directions(acts, grads, n_truth: int, seed: int, opts: SAEOptions):
    import torch

    jac = grads if grads.dim() == 3 else grads.unsqueeze(1)  # [n, k, dim] Jacobian rows
    dim = acts.shape[1]
    paired = torch.cat([acts, jac.reshape(jac.shape[0], -1)], dim=1).float()
    options = LayerSAEOptions(dict_size=opts.dict_size or 2 * max(n_truth, dim), k=opts.gsae_k, steps=opts.steps)
    return train_topk_sae(paired, dim, options, seed, arch="gsae", grad_columns=jac.shape[1]).decoder.detach().clone()


def _sae_directions(acts, n_truth: int, seed: int, opts: SAEOptions, *, learn_b_dec: bool = True):
    acts = acts.reshape(-1, acts.shape[-1])  # Jacobian rows [n, k, dim] are n·k rows
    dim = acts.shape[1]
    n = opts.dict_size or 2 * max(n_truth, dim)
    return (
        train_sae(acts, opts.steps, seed, d_in=dim, dict_size=n, l1=opts.l1, learn_b_dec=learn_b_dec)
        .decoder.detach()
        .clone()
    )


def compare(
    setup: str, seed: int = 0, threshold: float = 0.9, sae: SAEOptions | None = SAEOptions(), **options
) -> ToyComparison:
    """Train toy ``setup`` (options: fields of its config) and score every method.

    Returns a ``ToyComparison`` (result, toy, directions). Each PCA proposes as many
    directions as there are ground-truth directions (at most the layer width);
    the SAE (``sae=None`` leaves it out) proposes its whole dictionary.
    """
    import torch

    from polylens.directions.scoring import score_directions
    from polylens.directions.toys import make_toy
    from sae.metrics import frac_recovered, hungarian

    toy = make_toy(setup, seed=seed, **options)
    n_truth, dim = toy.truth.shape
    directions = method_directions(toy, min(n_truth, dim), seed, sae)
    methods = {}
    for name, found in directions.items():
        scores = score_directions(toy.truth, found)
        found_rows = torch.as_tensor(found, dtype=torch.float64)
        methods[name] = {
            "mmcs": scores.mmcs,
            "hungarian_mean_cos": hungarian(toy.truth, found_rows)[2],
            f"frac_recovered_{threshold:g}": frac_recovered(toy.truth, found_rows, threshold),
            "subspace_overlap": scores.subspace_overlap,
            "n_directions": scores.n_directions,
            "best_abs_cos": list(scores.best_abs_cos),  # per ground-truth direction: the distribution behind mmcs
        }
    result = CompareResult(setup, seed, {"n_directions": n_truth, "dim": dim}, methods, toy.describe())
    return ToyComparison(result, toy, directions)
