"""``polylens compare``: which directions does each method recover: on a toy, against its ground truth (``--setup``), or in a model's layer (``--model --layer``)?

The Python equivalents are ``cli.compare.compare`` (toys) and ``cli.compare_model.compare_layer``
(model layers); they live in ``cli/`` because it is the place where ``polylens`` and ``sae`` meet.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

# Setup-specific options: CLI flag -> (config field, setups it applies to).
OPTIONS = {
    "hidden": ("n_hidden", ("x2", "superposition")),
    "inputs": ("n_inputs", ("x2",)),
    "no_bias": ("bias", ("x2",)),
    "features": ("n_features", ("superposition",)),
    "p_active": ("p_active", ("superposition",)),
    "importance_decay": ("importance_decay", ("superposition",)),
    "steps": ("steps", ("x2", "superposition")),
}


@dataclass
class CompareResult:
    """Scores of every method against a toy's ground truth (serialises to the documented JSON)."""

    setup: str
    seed: int
    ground_truth: dict
    methods: dict[str, dict]
    toy: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"setup": self.setup, "seed": self.seed, "ground_truth": self.ground_truth, "methods": self.methods, "toy": self.toy}


@dataclass
class SAEOptions:
    """The SAE method of ``compare``: a ReLU+L1 SAE trained on the toy's hidden activations."""

    dict_size: int | None = None
    """Latents; default twice the larger of the ground-truth count and the layer width."""
    l1: float = 0.3
    """L1 coefficient (SAELens/Anthropic convention: Σ over latents, squared error Σ over dims)."""
    steps: int = 3000
    """Adam steps of batch 256 over the toy's evaluation activations (lr 3e-3)."""
    enabled: bool = True
    gsae_k: int = 4
    """The g-SAE's active latents per sample (it is a TopK SAE; the superposition toy has about 2
    active features a sample)."""


def method_directions(toy, n_directions: int, seed: int, sae: SAEOptions | None = SAEOptions()) -> dict:
    """Directions each available method proposes in the toy's hidden layer: name -> ``[m, dim]``.

    The PCAs propose ``n_directions``, LIB as many (fewer if the activations span fewer); the SAE
    (on the activations), the gradient SAE (on the gradients, b_dec fixed at 0) and the g-SAE (a
    TopK SAE on the activations selecting by activation × gradient reach) propose their whole
    dictionaries (decoder rows).
    """
    from polylens.directions import LIB, ActivationPCA, GradientPCA

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

    from cli.compare_model import LayerSAEOptions, train_topk_sae

    jac = grads if grads.dim() == 3 else grads.unsqueeze(1)  # [n, k, dim] Jacobian rows
    dim = acts.shape[1]
    paired = torch.cat([acts, jac.reshape(jac.shape[0], -1)], dim=1).float()
    options = LayerSAEOptions(opts.dict_size or 2 * max(n_truth, dim), opts.gsae_k, opts.steps)
    return train_topk_sae(paired, dim, options, seed, arch="gsae", grad_columns=jac.shape[1]).decoder.detach().clone()


def train_sae(rows, steps: int, seed: int, **fields):
    """The SAE every ``compare`` method trains: ``SAEConfig(**fields)`` (``d_in`` among them) fitted
    with ``steps`` Adam steps of batch min(256, n) at lr 3e-3 on ``rows [n, width]``."""
    from sae.config import SAEConfig, TrainConfig
    from sae.train import train

    batch = min(256, rows.shape[0])
    config = TrainConfig(n_samples=batch * steps, batch_size=batch, lr=3e-3, seed=seed, log_every=steps)
    return train(SAEConfig(**fields), config, rows.float()).sae_


def _sae_directions(acts, n_truth: int, seed: int, opts: SAEOptions, *, learn_b_dec: bool = True):
    acts = acts.reshape(-1, acts.shape[-1])  # Jacobian rows [n, k, dim] are n·k rows
    dim = acts.shape[1]
    n = opts.dict_size or 2 * max(n_truth, dim)
    return train_sae(acts, opts.steps, seed, d_in=dim, dict_size=n, l1=opts.l1, learn_b_dec=learn_b_dec).decoder.detach().clone()


def compare(setup: str, seed: int = 0, threshold: float = 0.9, sae: SAEOptions | None = SAEOptions(), **options):
    """Train toy ``setup`` (options: fields of its config) and score every method.

    Returns ``(CompareResult, toy, directions)``. Each PCA proposes as many
    directions as there are ground-truth directions (at most the layer width);
    the SAE (``sae=None`` leaves it out) proposes its whole dictionary.
    """
    from polylens.directions import score_directions
    from polylens.toys import make_toy

    toy = make_toy(setup, seed=seed, **options)
    n_truth, dim = toy.truth.shape
    directions = method_directions(toy, min(n_truth, dim), seed, sae)
    methods = {}
    for name, found in directions.items():
        scores = score_directions(toy.truth, found, threshold=threshold)
        methods[name] = {
            "mmcs": scores.mmcs,
            "hungarian_mean_cos": scores.hungarian_mean_cos,
            f"frac_recovered_{threshold:g}": scores.frac_recovered,
            "subspace_overlap": scores.subspace_overlap,
            "n_directions": scores.n_directions,
            "best_abs_cos": list(scores.best_abs_cos),  # per ground-truth direction: the distribution behind mmcs
        }
    result = CompareResult(setup, seed, {"n_directions": n_truth, "dim": dim}, methods, toy.describe())
    return result, toy, directions


def format_table(result: CompareResult) -> str:
    rows = list(result.methods.items())
    keys = [k for k in rows[0][1] if k not in ("n_directions", "best_abs_cos")] + ["n_directions"]
    head = f"{'method':<16}" + "".join(f"{k:>20}" for k in keys)
    lines = [
        f"setup={result.setup} seed={result.seed}: {result.ground_truth['n_directions']} ground-truth directions in {result.ground_truth['dim']} dims",
        head,
        "-" * len(head),
    ]
    for name, scores in rows:
        lines.append(f"{name:<16}" + "".join(f"{scores[k]:>20.4f}" if isinstance(scores[k], float) else f"{scores[k]:>20}" for k in keys))
    return "\n".join(lines)


def _options_from_args(args) -> dict:
    options = {}
    for flag, (fld, setups) in OPTIONS.items():
        value = getattr(args, flag)
        if value is None or value is False:
            continue
        if args.setup not in setups:
            raise ValueError(f"--{flag.replace('_', '-')} applies to --setup {' or '.join(setups)}, not {args.setup}")
        if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
            raise ValueError(f"--{flag.replace('_', '-')}={value} must be a positive integer")
        options[fld] = (not value) if flag == "no_bias" else value
    return options


def run(args) -> int:
    from cli.output import check_outputs, write_json, write_with

    if args.setup is None and args.model is None:
        raise ValueError("one of --setup or --model is required: --setup x2|superposition (a toy with ground truth) or --model SPEC --layer NAME")
    if args.setup is not None and args.model is not None:
        raise ValueError("give --setup (a toy) or --model (a model's layer), not both")
    if args.model is not None:
        from cli.compare_model import run_model_layer

        return run_model_layer(args)
    for flag in ("layer", "target", "k", "n", "sae_k", "context"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag.replace('_', '-')} applies to --model, not to --setup")
    if args.input:
        raise ValueError("--input applies to --model, not to --setup")
    if args.setup not in ("x2", "superposition"):
        raise ValueError(f"unknown setup {args.setup!r}; choose x2 or superposition")
    options = _options_from_args(args)
    check_outputs(args.force, json=args.json, plot=args.plot)
    sae = SAEOptions(args.sae_dict, args.sae_l1, SAEOptions.steps if args.sae_steps is None else args.sae_steps, not args.no_sae)
    for flag, value in (("--sae-dict", sae.dict_size), ("--sae-steps", sae.steps)):
        if value is not None and value <= 0:
            raise ValueError(f"{flag}={value} must be a positive integer")
    if not sae.l1 >= 0:
        raise ValueError(f"--sae-l1={sae.l1} must be a number >= 0")
    result, toy, directions = compare(args.setup, seed=args.seed, sae=sae, **options)
    # Keep stdout parseable when the JSON goes there.
    print(format_table(result), file=sys.stderr if args.json == "-" else sys.stdout)
    if args.plot:
        from polylens.report import plot_direction_recovery

        title = f"polylens compare --setup {args.setup} --seed {args.seed}"
        write_with(args.plot, lambda tmp: plot_direction_recovery(toy.truth, directions, tmp, title))
    write_json(result.to_json(), args.json)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="which directions do PCAs, LIB and SAEs recover: on a toy (--setup) or in a model's layer (--model --layer)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--setup", help="toy: x2 (read-out of an x² fit) or superposition (TMS autoencoder)")
    p.add_argument("--seed", type=int, default=0, help="seed for training and data (default 0)")
    p.add_argument("--json", metavar="PATH", help="write the result as JSON to PATH ('-' for stdout)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of ground-truth vs recovered directions")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    g = p.add_argument_group("toy options (defaults: see polylens.toys)")
    g.add_argument("--hidden", type=int, help="hidden width (x2: ReLU units, default 64; superposition: d, default 10)")
    g.add_argument("--inputs", type=int, help="x2: input dimension k (y_i = x_i^2), default 1")
    g.add_argument("--no-bias", action="store_true", help="x2: no bias in the hidden layer and read-out")
    g.add_argument("--features", type=int, help="superposition: number of sparse features n, default 40")
    g.add_argument("--p-active", type=float, help="superposition: probability a feature is active, default 0.05")
    g.add_argument("--importance-decay", type=float, help="superposition: importance of feature i is decay**i, default 1")
    g.add_argument("--steps", type=int, help="training steps (default 3000)")
    from cli.compare_model import LayerSAEOptions
    from cli.modelargs import add_model_args

    add_model_args(p)
    m = p.add_argument_group("a model's layer (--model; no ground truth: what the directions do)")
    m.add_argument("--layer", metavar="NAME", help="the layer whose directions are compared (e.g. conv2, blocks.6.mlp.hook_pre)")
    m.add_argument("--target", help="what the gradients differentiate: logits (default), loss (needs labels or text), predicted, or a class index")
    m.add_argument("--input", action="append", default=[], metavar="PATH",
                   help="GPT-2: a text file; other models: input files; default: the model's bundled inputs (digits: its 360 test images)")  # fmt: skip
    m.add_argument("--n", type=int, help="how many inputs (bundled ones, or GPT-2 contexts from --input)")
    m.add_argument("--context", type=int, help="GPT-2 with --input: tokens per context, BOS included (default 64)")
    m.add_argument("--k", type=int, help="top-k directions per method (default 10; at most the layer width)")
    m.add_argument("--ablation", default="mean", help="how directions are ablated: mean (default: the activations' component along them is replaced by "
                   "the mean activation's) or project (set to 0)")  # fmt: skip
    s = p.add_argument_group("SAE methods (toys: ReLU+L1 on the hidden activations; --model: TopK SAEs)")
    s.add_argument("--no-sae", action="store_true", help="leave the SAEs out")
    s.add_argument("--sae-dict", type=int, help="dictionary size (toys: 2 x max(ground-truth count, width); --model: 4 x the layer width)")
    s.add_argument("--sae-l1", type=float, default=SAEOptions.l1, help=f"toys: L1 coefficient (default {SAEOptions.l1})")
    s.add_argument("--sae-k", type=int, help="--model: active latents per row of the TopK SAEs (default max(2, min(32, width // 8)))")
    s.add_argument("--sae-steps", type=int, help=f"training steps of batch 256 (toys: default {SAEOptions.steps}; --model: {LayerSAEOptions.steps})")
    p.set_defaults(handler=run)
