"""``polylens compare --model M --layer L``: what each method's directions do in a real layer.

No ground truth exists there, so each method's top-k directions (rows in the layer's row space,
``polylens.rows``) are measured: the share of the activations' variance and of the target's
gradient energy in their span, the change of the model's output when the activations along them
are ablated (KL to the original output distribution, and the accuracy drop where labels exist),
as a curve over k, and how far the methods agree (sign-invariant MMCS, a matrix). Random
directions are the baseline. This is the glue where ``polylens`` (capture, direction finders,
ablation) and ``sae`` (the SAEs) meet; the Python entry point is ``compare_layer``.
"""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("activation_pca", "gradient_pca", "lib", "sae", "gradient_sae", "gsae", "random")


@dataclass
class LayerSAEOptions:
    """The three TopK SAEs of ``compare --model``: on the activations (``sae``), on the gradients'
    Jacobian rows with b_dec fixed at 0 (``gradient_sae``) and the g-SAE on both (``gsae``). TopK,
    not ReLU+L1, because a real layer's scale is unknown and TopK's sparsity does not depend on it;
    the three share dictionary size, k and steps, so only what they read and how they select differs."""

    dict_size: int | None = None
    """Latents; default 4 × the layer width."""
    k: int | None = None
    """Active latents per row; default max(2, min(32, width // 8))."""
    steps: int = 2000
    """Adam steps of batch 256 (lr 3e-3) over the captured rows."""
    enabled: bool = True


def _check_eval_mode(module) -> None:
    import torch

    norms = [name for name, m in module.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if module.training and norms:
        raise ValueError(f"the model is in training mode and has batch-norm layers ({', '.join(norms[:3])}): its per-sample gradients would "
                         "mix the batch's samples; put it in eval mode (model.eval()) first")  # fmt: skip


def capture_rows(adapter, layer: str, inputs, target, *, is_text: bool, labels=None, batch_size: int = 32):
    """The layer's rows ``A [n, d]``, their Jacobian rows ``J [n, c, d]`` (c = the target's
    columns) and the model's output on ``inputs``, a batch at a time."""
    import torch

    from polylens.capture import capture
    from polylens.rows import rows_of

    acts, jacs, outs = [], [], []
    for lo in range(0, inputs.shape[0], batch_size):
        batch = inputs[lo : lo + batch_size]
        fn = target.fn(tokens=batch if is_text else None, labels=None if labels is None else labels[lo : lo + batch_size], offset=lo)
        got = capture(adapter.module, batch, [layer], target=fn, keep_output=True)
        outs.append(got.output)
        acts.append(rows_of(got.activations[layer], is_text).float())
        g = got.gradients[layer]  # [B, c, ...]
        jacs.append(torch.stack([rows_of(g[:, j], is_text) for j in range(g.shape[1])], dim=1).float())
    return torch.cat(acts), torch.cat(jacs), torch.cat(outs)


def train_topk_sae(rows, d: int, opts: LayerSAEOptions, seed: int, *, arch: str = "topk", learn_b_dec: bool = True, grad_columns: int = 1):
    """A TopK SAE (or with ``arch="gsae"`` a g-SAE, whose rows are ``[x, J rows]``) of width ``d`` on ``rows``."""
    from cli.compare import train_sae

    n = opts.dict_size or 4 * d
    k = opts.k or max(2, min(32, d // 8))
    return train_sae(rows, opts.steps, seed, d_in=d, dict_size=n, arch=arch, k=min(k, n), learn_b_dec=learn_b_dec, grad_columns=grad_columns)


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
    - random: ``k`` Gaussian directions (seed ``seed``).
    """
    import torch

    from polylens.directions import LIB, ActivationPCA, GradientPCA
    from polylens.layer_eval import random_directions

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
        G = Js.reshape(-1, d)
        s = train_topk_sae(G, d, sae, seed, learn_b_dec=False)
        found["gradient_sae"] = _ranked(s, G, lambda f, x: f.pow(2), k)
        paired = torch.cat([As, Js.reshape(Js.shape[0], -1)], dim=1)
        s = train_topk_sae(paired, d, sae, seed, arch="gsae", grad_columns=c)
        from sae.model import gradient_reach

        found["gsae"] = _ranked(s, paired, lambda f, x: f * gradient_reach(s.split(x)[1], s.decoder), k)
    found["random"] = random_directions(k, d, seed)
    return found


def compare_layer(adapter, layer: str, inputs, *, target: str = "logits", k: int = 10, is_text: bool = False, labels=None,
                  seed: int = 0, ablation: str = "mean", sae: LayerSAEOptions | None = LayerSAEOptions(),
                  batch_size: int = 32) -> tuple[dict, dict]:  # fmt: skip
    """Run every method on ``layer`` of ``adapter`` over ``inputs`` and measure its directions.

    target: ``logits``, ``loss``, ``predicted`` or a class index (``polylens.targets``);
    labels: ``[n]`` class labels (accuracy drop; ``loss`` on a classifier), text inputs use their
    tokens. Returns ``(result, directions)``: the JSON-ready result and each method's top-k
    directions.
    """
    import torch

    from polylens.layer_eval import ablation_curve, ablation_ks, agreement, subspace_shares
    from polylens.rows import rows_of
    from polylens.targets import parse_target

    from polylens.capture import capture
    from polylens.layer_eval import ABLATIONS

    if ablation not in ABLATIONS:
        raise ValueError(f"ablation {ablation!r} is unknown; choose {' or '.join(ABLATIONS)}")
    module = adapter.module
    _check_eval_mode(module)
    with torch.no_grad():
        first = capture(module, inputs[:1], [layer], keep_output=True)
    if first.output is None:
        raise ValueError(f"model {adapter.name} does not return a tensor; compare reads its output as logits [batch, classes] (or [batch, positions, vocabulary])")
    width = rows_of(first.activations[layer], is_text).shape[1]
    if not isinstance(k, int) or not 1 <= k <= width:
        raise ValueError(f"--k {k} must be between 1 and the layer's width {width} ({layer})")
    tgt = parse_target(target, first.output.shape, is_text=is_text, has_labels=labels is not None, seed=seed)
    A, J, reference = capture_rows(adapter, layer, inputs, tgt, is_text=is_text, labels=labels, batch_size=batch_size)
    if not bool(J.abs().sum() > 0):
        raise ValueError(f"the gradient of the target with respect to {layer} is zero on every input: there is no gradient energy to share out; "
                         "pick another layer or --target")  # fmt: skip
    directions = layer_directions(A, J, k, seed, sae)
    ks = ablation_ks(k)
    mean = A.double().mean(0).numpy()
    methods = {}
    for name, D in directions.items():
        m_ks = [j for j in ks if j <= D.shape[0]] or [D.shape[0]]
        var, grad = subspace_shares(D, A, J, m_ks)
        curve = ablation_curve(module, inputs, layer, D, m_ks, is_text=is_text, mode=ablation, mean=mean, labels=labels,
                               reference=reference, batch_size=batch_size)  # fmt: skip
        methods[name] = {
            "n_directions": int(D.shape[0]),
            "activation_variance": var[-1],
            "gradient_energy": grad[-1],
            "ablation": curve | {"activation_variance": var, "gradient_energy": grad},
        }
    names, matrix = agreement(directions)
    result = {
        "model": adapter.name,
        "layer": layer,
        "target": str(target),
        "gradient_rows": tgt.describe(),
        "n_inputs": int(inputs.shape[0]),
        "n_rows": int(A.shape[0]),
        "width": int(width),
        "k": k,
        "ablation": ablation,
        "seed": seed,
        "methods": methods,
        "agreement": {"methods": names, "mmcs": matrix},
    }
    return result, directions


def format_layer_table(result: dict) -> str:
    k = result["k"]
    head = f"{'method':<16}{'n':>4}{'act. variance':>15}{'grad. energy':>14}{f'KL@{k}':>12}" + (
        f"{f'acc. drop@{k}':>14}" if any(m["ablation"]["accuracy_drop"] for m in result["methods"].values()) else "")
    lines = [
        f"{result['model']} {result['layer']}: {result['n_rows']:,} rows of width {result['width']} from {result['n_inputs']} inputs; "
        f"target {result['target']} ({result['gradient_rows']}); top-{k} directions, {result['ablation']}-ablated",
        head,
        "-" * len(head),
    ]
    for name, m in result["methods"].items():
        ab = m["ablation"]
        drop = ab["accuracy_drop"]
        lines.append(f"{name:<16}{m['n_directions']:>4}{m['activation_variance']:>15.4f}{m['gradient_energy']:>14.4f}{ab['kl'][-1]:>12.4g}"
                     + (f"{drop[-1]:>14.4f}" if drop else ""))  # fmt: skip
    return "\n".join(lines)


def model_inputs(adapter, args):
    """``(inputs [n, ...], is_text, labels [n] or None)`` from ``--input`` / ``--n``."""
    from cli.cache import text_contexts
    from cli.modelargs import default_batch, prepare_inputs

    is_text = adapter.tokenize is not None
    if is_text and args.input:
        if len(args.input) > 1:
            raise ValueError("give one text file with --input")
        contexts = text_contexts(adapter, args.input[0], args.context or 64, None)
        return contexts[: args.n] if args.n else contexts, True, None
    if args.input:
        return prepare_inputs(adapter, args.input, "--input"), is_text, None
    if args.n is None and adapter.default_labels is not None:
        args.n = 360
    inputs = default_batch(adapter, args.n or 8)
    labels = adapter.default_labels(inputs.shape[0]) if adapter.default_labels is not None else None
    return inputs, is_text, labels


def run_model_layer(args) -> int:
    import sys

    from cli.modelargs import load_from_args
    from cli.output import check_outputs, write_json, write_with
    from polylens.layer_eval import ABLATIONS

    for flag in ("hidden", "inputs", "features", "p_active", "importance_decay", "steps"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag.replace('_', '-')} is a toy option (--setup); it does not apply to --model")
    if args.no_bias:
        raise ValueError("--no-bias is a toy option (--setup); it does not apply to --model")
    if not args.layer:
        raise ValueError("--model needs --layer NAME: the layer whose directions are compared")
    if args.ablation not in ABLATIONS:
        raise ValueError(f"--ablation {args.ablation!r}: choose {' or '.join(ABLATIONS)}")
    for flag, value in (("--k", args.k), ("--n", args.n), ("--sae-dict", args.sae_dict), ("--sae-k", args.sae_k),
                        ("--sae-steps", args.sae_steps), ("--context", args.context)):  # fmt: skip
        if value is not None and value <= 0:
            raise ValueError(f"{flag}={value} must be a positive integer")
    check_outputs(args.force, inputs=[*args.input, args.weights], json=args.json, plot=args.plot)
    adapter = load_from_args(args)
    layer = adapter.check_layer(args.layer)
    inputs, is_text, labels = model_inputs(adapter, args)
    sae = LayerSAEOptions(args.sae_dict, args.sae_k, args.sae_steps, not args.no_sae)
    if args.k is None:
        from polylens.capture import capture
        from polylens.rows import rows_of

        args.k = min(10, rows_of(capture(adapter.module, inputs[:1], [layer]).activations[layer], is_text).shape[1])
    result, _ = compare_layer(adapter, layer, inputs, target=args.target or "logits", k=args.k, is_text=is_text, labels=labels, seed=args.seed,
                              ablation=args.ablation, sae=sae)  # fmt: skip
    print(format_layer_table(result), file=sys.stderr if args.json == "-" else sys.stdout)
    if args.plot:
        from polylens.report import plot_layer_comparison

        write_with(args.plot, lambda tmp: plot_layer_comparison(result, tmp, f"polylens compare --model {adapter.name} --layer {layer}"))
    write_json(result, args.json)
    return 0
