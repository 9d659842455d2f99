"""``polylens compare --model M --layer L``: what each method's directions do in a real layer.

No ground truth exists there, so each method's top-k directions (rows in the layer's row space,
``polylens.rows``) are measured: the share of the activations' variance and of the target's
gradient energy in their span, the change of the model's output when the activations along them
are ablated (KL to the original output distribution, and the accuracy drop where labels exist),
as a curve over k, and how far the methods agree (sign-invariant MMCS, a matrix). Random
directions are the baseline. ``polylens`` (capture, direction finders, ablation) and ``sae`` (the
SAEs) meet here; the entry point is ``compare_layer``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from cli.experiments.sae_methods import LayerSAEOptions, train_topk_sae

METHODS = ("activation_pca", "gradient_pca", "lib", "sae", "gradient_sae", "gsae", "random")
CONTROLS = ("sae_frozen_decoder",)
"""Controls measured beside the methods (the JSON's ``controls``, not in the agreement matrix): the
activations' SAE with its random initial decoder frozen, only the encoder trained (Korznikov et al.
2026), ranked as the SAE is. The random-weights twin is the other control: ``--random-weights``."""


@dataclass(frozen=True)
class LayerComparison:
    """What ``compare_layer`` measured: the JSON fields (``to_json``) and each method's directions."""

    model: str
    layer: str
    target: str
    gradient_rows: str
    n_inputs: int
    n_rows: int
    width: int
    k: int
    ablation: str
    seed: int
    methods: dict
    """Per method: n_directions, activation_variance, gradient_energy and the ablation curve."""
    agreement: dict
    """``{"methods": names, "mmcs": matrix}``: sign-invariant MMCS of each method against each other's."""
    controls: dict = field(default_factory=dict)
    """The same per control (``CONTROLS``), when asked for (``LayerSAEOptions.controls``); in the JSON only then."""
    directions: dict = field(default_factory=dict, repr=False, compare=False)
    """Each method's top-k directions ``[m, d]`` (not serialised)."""

    def to_json(self) -> dict:
        skip = {"directions"} | ({"controls"} if not self.controls else set())
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


def _check_eval_mode(module) -> None:
    import torch

    norms = [name for name, m in module.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if module.training and norms:
        raise ValueError(
            f"the model is in training mode and has batch-norm layers ({', '.join(norms[:3])}): its per-sample "
            "gradients would mix the batch's samples; put it in eval mode (model.eval()) first"
        )


def capture_rows(
    adapter, layer: str, inputs, target, *, is_text: bool, labels=None, batch_size: int = 32, progress: bool = False
):
    """The layer's rows ``A [n, d]``, their Jacobian rows ``J [n, c, d]`` (c = the target's
    columns) and the model's output on ``inputs``, a batch at a time."""
    import torch

    from polylens.capture import capture
    from polylens.progress import progress_bar
    from polylens.rows import rows_of

    acts, jacs, outs = [], [], []
    bar = progress_bar(inputs.shape[0], f"{adapter.name} {layer}", enabled=progress)
    for lo in range(0, inputs.shape[0], batch_size):
        bar.update(min(batch_size, inputs.shape[0] - lo))
        batch = inputs[lo : lo + batch_size]
        fn = target.fn(
            tokens=batch if is_text else None,
            labels=None if labels is None else labels[lo : lo + batch_size],
            offset=lo,
        )
        got = capture(adapter.module, batch, [layer], target=fn, keep_output=True)
        outs.append(got.output)
        acts.append(rows_of(got.activations[layer], is_text).float())
        g = got.gradients[layer]  # [B, c, ...]
        jacs.append(torch.stack([rows_of(g[:, j], is_text) for j in range(g.shape[1])], dim=1).float())
    bar.close()
    return torch.cat(acts), torch.cat(jacs), torch.cat(outs)


def _ranked(sae, rows, weight, top: int):
    """The decoder rows of the ``top`` latents with the largest mean ``weight(acts, chunk)`` over ``rows``."""
    import torch

    total = None
    with torch.no_grad():
        for lo in range(0, rows.shape[0], 4096):
            chunk = rows[lo : lo + 4096]
            w = weight(sae.encode(chunk), chunk).sum(0)
            total = w if total is None else total + w
    order = total.argsort(descending=True)[:top]
    return sae.decoder.detach()[order].double().numpy()


def layer_directions(A, J, k: int, seed: int, sae: LayerSAEOptions | None = LayerSAEOptions()) -> dict:
    """Each method's top-``k`` directions ``[m, d]`` (m = k, fewer for LIB when the activations span
    fewer), most important first:

    - activation_pca / gradient_pca / lib: by their eigenvalues (LIB: its share of gradient energy);
    - sae: latents by E[f_i²] (each latent's energy in the reconstruction; unit decoder rows);
    - gradient_sae: by E[c_i²] over the Jacobian rows;
    - gsae: by E[f_i · ‖J d_i‖], the g-SAE's own ranking (activation × gradient reach);
    - sae_frozen_decoder (a control, ``CONTROLS``, with ``sae.controls``): as sae, its decoder frozen
      at its random start;
    - random: ``k`` Gaussian directions (seed ``seed``).
    """
    import torch

    from polylens.directions.ablation import random_directions
    from polylens.directions.finders import LIB, ActivationPCA, GradientPCA

    d = A.shape[1]
    found = {
        "activation_pca": ActivationPCA(k).fit(A).components_,
        "gradient_pca": GradientPCA(k).fit(J).components_,
        "lib": LIB().fit(A, J).components_[:k],
    }
    if sae is not None and sae.enabled:
        a_scale = float(A.pow(2).sum(1).mean().sqrt().clamp_min(1e-30))  # directions do not depend on the scale
        j_scale = float(J.pow(2).sum(-1).mean().sqrt().clamp_min(1e-30))
        As, Js = A / a_scale, J / j_scale
        c = J.shape[1]
        s = train_topk_sae(As, d, sae, seed)
        found["sae"] = _ranked(s, As, lambda f, x: f.pow(2), k)
        if sae.controls:
            s = train_topk_sae(As, d, sae, seed, freeze_decoder=True)
            found["sae_frozen_decoder"] = _ranked(s, As, lambda f, x: f.pow(2), k)
        G = Js.reshape(-1, d)
        s = train_topk_sae(G, d, sae, seed, learn_b_dec=False)
        found["gradient_sae"] = _ranked(s, G, lambda f, x: f.pow(2), k)
        paired = torch.cat([As, Js.reshape(Js.shape[0], -1)], dim=1)
        s = train_topk_sae(paired, d, sae, seed, arch="gsae", grad_columns=c)
        from sae.model import gradient_reach

        found["gsae"] = _ranked(s, paired, lambda f, x: f * gradient_reach(s.split(x)[1], s.decoder), k)
    found["random"] = random_directions(k, d, seed)
    return found


def compare_layer(
    adapter,
    layer: str,
    inputs,
    *,
    target: str = "logits",
    k: int = 10,
    is_text: bool = False,
    labels=None,
    seed: int = 0,
    ablation: str = "mean",
    sae: LayerSAEOptions | None = LayerSAEOptions(),
    batch_size: int = 32,
    progress: bool = False,
) -> LayerComparison:
    """Run every method on ``layer`` of ``adapter`` over ``inputs`` and measure its directions.

    target: ``logits``, ``loss``, ``predicted`` or a class index (``polylens.targets``);
    labels: ``[n]`` class labels (accuracy drop; ``loss`` on a classifier), text inputs use their
    tokens. Returns a ``LayerComparison``: its ``to_json()`` is the command's JSON, its
    ``directions`` each method's top-k directions.
    """
    import torch

    from polylens.capture import capture
    from polylens.directions.ablation import ABLATIONS, ablation_curve, ablation_ks, agreement, subspace_shares
    from polylens.rows import rows_of
    from polylens.targets import parse_target
    from polylens.validation import check_choice

    check_choice("ablation", ablation, ABLATIONS)
    module = adapter.module
    _check_eval_mode(module)
    with torch.no_grad():
        first = capture(module, inputs[:1], [layer], keep_output=True)
    if first.output is None:
        raise ValueError(
            f"model {adapter.name} does not return a tensor; compare reads its output as logits [batch, classes] "
            "(or [batch, positions, vocabulary])"
        )
    width = rows_of(first.activations[layer], is_text).shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= width:
        raise ValueError(f"k={k!r} must be between 1 and the layer's width {width} ({layer})")
    embedding = adapter.output_kind == "embedding"
    if embedding and target == "logits":  # the default target; a sentence encoder has no logits
        target = "embedding"
    tgt = parse_target(
        target,
        first.output.shape,
        is_text=is_text and not embedding,
        has_labels=labels is not None,
        seed=seed,
        output_kind=adapter.output_kind,
    )
    A, J, reference = capture_rows(
        adapter, layer, inputs, tgt, is_text=is_text, labels=labels, batch_size=batch_size, progress=progress
    )
    if not bool(J.abs().sum() > 0):
        raise ValueError(
            f"the gradient of the target with respect to {layer} is zero on every input: there is no gradient "
            "energy to share out; pick another layer or target"
        )
    directions = layer_directions(A, J, k, seed, sae)
    ks = ablation_ks(k)
    mean = A.double().mean(0).numpy()
    measured = {}
    for name, D in directions.items():
        m_ks = [j for j in ks if j <= D.shape[0]] or [D.shape[0]]
        var, grad = subspace_shares(D, A, J, m_ks)
        curve = ablation_curve(
            module,
            inputs,
            layer,
            D,
            m_ks,
            is_text=is_text,
            mode=ablation,
            mean=mean,
            labels=labels,
            reference=reference,
            batch_size=batch_size,
            embedding=embedding,
        )
        measured[name] = {
            "n_directions": int(D.shape[0]),
            "activation_variance": var[-1],
            "gradient_energy": grad[-1],
            "ablation": curve | {"activation_variance": var, "gradient_energy": grad},
        }
    methods = {name: m for name, m in measured.items() if name not in CONTROLS}
    names, matrix = agreement({name: D for name, D in directions.items() if name not in CONTROLS})
    return LayerComparison(
        model=adapter.name,
        layer=layer,
        target=str(target),
        gradient_rows=tgt.describe(),
        n_inputs=int(inputs.shape[0]),
        n_rows=int(A.shape[0]),
        width=int(width),
        k=k,
        ablation=ablation,
        seed=seed,
        methods=methods,
        controls={name: m for name, m in measured.items() if name in CONTROLS},
        agreement={"methods": names, "mmcs": matrix},
        directions=directions,
    )
