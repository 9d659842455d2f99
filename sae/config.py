"""The SAE's and the trainer's configuration: plain dataclasses, no torch (the CLI reads their
defaults and choices without importing torch). Saved as JSON beside every checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka")
GRADIENT_ARCHS = ("gsae",)
"""Rules whose data rows carry the gradient beside the activation (``SAEConfig.data_width``):
the Python API trains them; ``polylens sae train`` offers ``ARCHS`` only."""
DEAD_WINDOW = {
    "relu": 1_000_000,
    "topk": 100_000,
    "batchtopk": 100_000,
    "gsae": 100_000,
    "jumprelu": 20_000,
    "gated": 1_000_000,
    "matryoshka": 100_000,
}
"""Default dead-latent windows in samples (``TrainConfig.dead_window``)."""
INITS = ("kaiming", "orthogonal", "enc_dec_transpose", "data", "pca", "unit", "svd")
DECODER_NORMS = ("unit", "weighted_l1")
RESAMPLE_TARGETS = ("input", "residual")
LOSSES = ("mse", "kl", "e2e+ds")
"""What training minimises besides the sparsity terms (``TrainConfig.loss``)."""
K_ARCHS = ("topk", "batchtopk", "gsae", "matryoshka")
"""Rules whose sparsity is set by ``k`` (and which train AuxK on dead latents)."""
AUXK_ARCHS = ("topk", "batchtopk", "gsae", "matryoshka", "jumprelu")
"""Rules that train AuxK (Gao et al. 2024) on their dead latents: the k rules and JumpReLU, whose dead
latents (pre-activations all below their threshold) otherwise get no gradient at all."""
BATCH_THRESHOLD_ARCHS = ("batchtopk", "matryoshka")
"""Rules that choose k·batch activations per batch in training and keep the EMA threshold θ for inference."""
AUTO = {"l0": 5.0, "bandwidth": 0.3, "threshold_init": 0.6, "l1": 1.25}
"""The scale-following defaults of the coefficients left None (``SAEConfig.resolve_scale``), in units
of σ, the data's RMS per dimension (√(E‖x − mean‖² / d)): JumpReLU's ``l0`` = 5σ², ``bandwidth`` =
0.3σ, ``threshold_init`` = 0.6σ, the ReLU and gated SAEs' ``l1`` = 1.25σ. On Sharkey's data (σ
0.080) they give 0.032, 0.024, 0.048 and 0.100 (the L1 of 0.1 the Sharkey replication uses); on
SAELens's suite of magnitude-1 features, 4 a dimension (σ 0.226), 0.26, 0.068, 0.14 and 0.28
(docs/sae.md has what they were measured against)."""
L1_ARCHS = ("relu", "gated")
"""Rules whose sparsity is the L1 coefficient ``l1``."""
MATRYOSHKA_MIN_PREFIX = 16
"""The default Matryoshka ladder halves the dictionary size while the prefix keeps at least this many latents."""


def sparsity_field(arch: str) -> str:
    """The SAEConfig field holding ``arch``'s sparsity coefficient (what a sweep's coefficients set):
    ``l0`` for JumpReLU, ``l1`` for the others (ReLU's and the gated SAE's L1; unused by the k rules)."""
    return "l0" if arch == "jumprelu" else "l1"


def default_prefixes(dict_size: int) -> tuple[int, ...]:
    """The doubling ladder of Matryoshka prefix sizes ending at ``dict_size``: dict_size, dict_size // 2,
    ... while at least ``MATRYOSHKA_MIN_PREFIX`` (just ``(dict_size,)`` for a smaller dictionary)."""
    sizes = [dict_size]
    while sizes[-1] // 2 >= MATRYOSHKA_MIN_PREFIX:
        sizes.append(sizes[-1] // 2)
    return tuple(reversed(sizes))


@dataclass
class SAEConfig:
    """Shape and rule of a sparse autoencoder (saved as JSON beside every checkpoint)."""

    d_in: int
    """Input (activation) dimension d."""
    dict_size: int
    """Number of latents n."""
    arch: Literal["relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka", "gsae"] = "relu"
    """Activation rule: ReLU + L1 penalty, per-sample TopK, BatchTopK, JumpReLU (Rajamanoharan et al.
    2024, "Jumping Ahead": a learned threshold per latent, L0 penalty ``l0``), gated (Rajamanoharan
    et al. 2024: a gate path and a magnitude path sharing W_enc, L1 ``l1`` on the gate), Matryoshka
    BatchTopK (Bussmann et al. 2025: every prefix in ``prefixes`` reconstructs on its own), or the g-SAE (Olmo et al.
    2024, arXiv:2411.10397): TopK whose selection ranks latents by activation × ‖J d_i‖ (for one
    gradient g, activation × |g · d_i|), J the Jacobian rows of a downstream target with respect to
    the input and d_i the decoder row, so it keeps the latents the output reads. A g-SAE's data rows
    are ``[x, J rows]`` (``data_width`` wide); ``encode`` on rows of width ``d_in`` (no gradient)
    falls back to plain TopK."""
    grad_columns: int = 1
    """g-SAE: Jacobian rows per sample stored after the activation (1: one scalar target's gradient)."""
    l1: float | None = None
    """L1 coefficient (relu; gated: on the gate's ReLU pre-activations), on Σ|a| summed over
    latents. With unit-norm decoder rows a latent is soft-thresholded at about l1/2 in activation
    units. None: 1.25σ, set from the data when training starts (``AUTO``; 0.100 on the Sharkey data,
    coefficients U[0, 1)); the k rules and JumpReLU do not read it."""
    k: int = 5
    """Active latents per sample for topk / batchtopk / matryoshka (batchtopk, matryoshka: on average)."""
    l0: float | None = None
    """JumpReLU: coefficient of the L0 penalty, l0 · (active latents per sample). A latent pays for
    itself when it removes more than l0 of squared error. None: 5σ² (``AUTO``; 0.032 on the Sharkey
    data), set from the data when training starts, so it follows the activations' squared scale."""
    bandwidth: float | None = None
    """JumpReLU: width ε of the rectangle kernel of the threshold's straight-through pseudo-derivative.
    None: 0.3σ (``AUTO``). The paper uses ε = 0.001 on activations normalised to E‖x‖² = d (σ ≈ 1)
    and trains far longer; in runs of a few million samples so narrow a window holds too few
    pre-activations for the thresholds to learn (SAELens's default is 0.05)."""
    threshold_init: float | None = None
    """JumpReLU: initial threshold θ of every latent. The threshold is trained as log θ, so Adam moves
    it by a factor of about exp(±lr) a step: a start near its end matters. None: 0.6σ (``AUTO``;
    0.048 on the Sharkey data); the paper starts at 0.001 on normalised activations and trains far
    longer."""
    prefixes: tuple[int, ...] = ()
    """Matryoshka: increasing prefix sizes of the dictionary, each reconstructing the input on its own;
    the dictionary size is appended when the last is smaller. Empty: the doubling ladder
    (``default_prefixes``). Resolved on construction, so the saved config lists them."""
    tied: bool = False
    """Tie the decoder to the encoder (W_dec = W_encᵀ); no separate decoder parameter."""
    decoder_norm: Literal["unit", "weighted_l1"] = "unit"
    """'unit': decoder rows kept unit-norm, the gradient parallel to each row removed;
    'weighted_l1': rows free, the L1 term weighs each latent by its row norm (Anthropic April 2024)."""
    init: Literal["kaiming", "orthogonal", "enc_dec_transpose", "data", "pca", "unit", "svd"] = "kaiming"
    """Initialisation scheme; 'data' and 'pca' need a data sample, 'svd' the layer's weight matrix
    (see ``initialize``)."""
    init_matrix: str = ""
    """'svd' init: ``FILE.safetensors:KEY``, the weight matrix of the layer whose activations are
    the data (``[width, fan_in]`` or its transpose); empty: the one an activation store records."""
    init_blend: float = 0.8
    """'data' init: weight p of the centred data sample against a random direction (1 − p)."""
    init_noise: float = 0.1
    """'pca' / 'unit' / 'svd' init: expected norm of the Gaussian noise added to each copied (unit) direction."""
    orth: float = 0.0
    """Decoder orthogonality penalty weight λ (0: off)."""
    orth_full: bool = False
    """Use the O(n²) form (mean over all latents) instead of the O(m·n) active-latent form."""
    aux_coef: float = 1 / 32
    """AuxK loss coefficient for topk / batchtopk / matryoshka / jumprelu (Gao et al. 2024); 0 turns it off.
    (The gated SAE's auxiliary reconstruction loss has coefficient 1, as in the paper.)"""
    aux_k: int = 0
    """Dead latents used by AuxK per sample (0: d_in // 2)."""
    threshold_decay: float = 0.99
    """BatchTopK / Matryoshka: EMA decay of the inference threshold θ (mean of the smallest kept activation)."""
    learn_b_dec: bool = True
    """Learn the decoder bias b_dec (initialised at the data mean). False: b_dec stays 0, for
    uncentred data such as gradients: on the x² toy every gradient is w_out, and a learned b_dec
    would absorb it and leave the dictionary empty (``polylens compare``'s ``gradient_sae``)."""

    d_out: int = 0
    """Transcoders (Dunefsky et al. 2024; SAELens's ``Transcoder``): the width of the rows it
    reconstructs, another site's (an MLP's output, read from its input); 0: an SAE, which
    reconstructs its own input. A transcoder's data rows are ``[x, y]`` (``data_width`` = d_in +
    d_out wide: an activation store's paired rows, ``polylens cache --pair-layer``); it encodes x
    without subtracting b_dec (which lives in y's space) and its loss is ‖y − ŷ‖²."""
    skip: bool = False
    """Transcoders: a linear skip ``W_skip [d_out, d_in]`` (ŷ = f(x) W_dec + b_dec + x W_skipᵀ; zeros at
    the start, trained with the rest: SAELens's ``SkipTranscoder``)."""

    freeze_decoder: bool = False
    """The frozen-random-decoder control (Korznikov et al. 2026, arXiv 2602.14111): the decoder rows
    keep their random initial directions and b_dec its initial value (the data mean); only the
    encoder trains (W_enc, b_enc, and the thresholds / magnitude path where the rule has them)."""

    def __post_init__(self):
        if self.freeze_decoder and self.tied:
            raise ValueError("freeze_decoder=True needs a decoder of its own: a tied SAE's decoder is its encoder")
        for name in ("d_in", "dict_size", "k"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name}={v!r} must be a positive integer")
        if self.arch not in ARCHS + GRADIENT_ARCHS:
            raise ValueError(f"arch={self.arch!r} is unknown; choose one of {', '.join(ARCHS + GRADIENT_ARCHS)}")
        if not isinstance(self.grad_columns, int) or isinstance(self.grad_columns, bool) or self.grad_columns <= 0:
            raise ValueError(f"grad_columns={self.grad_columns!r} must be a positive integer")
        if self.init not in INITS:
            raise ValueError(f"init={self.init!r} is unknown; choose one of {', '.join(INITS)}")
        if self.decoder_norm not in DECODER_NORMS:
            raise ValueError(f"decoder_norm={self.decoder_norm!r} is unknown; choose one of {', '.join(DECODER_NORMS)}")
        if self.l1 is None and self.arch not in L1_ARCHS:
            self.l1 = 0.0  # not read by this rule
        for name in ("l1", "l0", "orth", "aux_coef", "init_noise"):
            v = getattr(self, name)
            if v is None and name in ("l1", "l0"):
                continue
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}={v!r} must be a finite number >= 0")
        if not 0 <= self.init_blend <= 1:
            raise ValueError(f"init_blend={self.init_blend} must be in [0, 1]")
        if not 0 <= self.threshold_decay < 1:
            raise ValueError(f"threshold_decay={self.threshold_decay} must be in [0, 1)")
        if self.arch in K_ARCHS and self.k > self.dict_size:
            raise ValueError(f"k={self.k} must be <= dict_size={self.dict_size}")
        for name in ("bandwidth", "threshold_init"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name}={v!r} must be a finite number > 0")
        self.prefixes = self._resolve_prefixes()
        self._check_transcoder()
        if self.aux_k < 0:
            raise ValueError(f"aux_k={self.aux_k} must be >= 0")

    def _resolve_prefixes(self) -> tuple[int, ...]:
        if self.arch != "matryoshka":
            return tuple(self.prefixes or ())
        sizes = list(self.prefixes or ())
        if any(not isinstance(p, int) or isinstance(p, bool) or p <= 0 for p in sizes):
            raise ValueError(f"prefixes={list(sizes)} must be positive integers")
        if any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise ValueError(f"prefixes={list(sizes)} must be strictly increasing")
        if sizes and sizes[-1] > self.dict_size:
            raise ValueError(
                f"prefixes={list(sizes)} exceed the dictionary: the last must be <= dict_size={self.dict_size}"
            )
        if not sizes:
            return default_prefixes(self.dict_size)
        return tuple(sizes) if sizes[-1] == self.dict_size else (*sizes, self.dict_size)

    @property
    def scale_free(self) -> bool:
        """Whether every coefficient this SAE's rule reads is set (none waits for the data's scale)."""
        if self.arch == "jumprelu":
            return None not in (self.l0, self.bandwidth, self.threshold_init)
        return self.l1 is not None

    def resolve_scale(self, sigma: float) -> SAEConfig:
        """This config with the coefficients left None set from the data's RMS per dimension ``sigma``
        (``AUTO``); unchanged where none is None. The trainer calls it on its initialisation sample."""
        import dataclasses

        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(
                f"the data's scale is {sigma!r} (RMS per dimension): the scale-following defaults need rows that "
                "vary; give --l1 / --l0 / --bandwidth / --threshold-init yourself"
            )
        auto = {"l0": AUTO["l0"] * sigma**2, "bandwidth": AUTO["bandwidth"] * sigma}
        auto |= {"threshold_init": AUTO["threshold_init"] * sigma, "l1": AUTO["l1"] * sigma}
        wanted = ("l0", "bandwidth", "threshold_init") if self.arch == "jumprelu" else ("l1",)
        fill = {k: auto[k] for k in wanted if getattr(self, k) is None}
        return dataclasses.replace(self, **fill) if fill else self

    def _check_transcoder(self) -> None:
        if not isinstance(self.d_out, int) or isinstance(self.d_out, bool) or self.d_out < 0:
            raise ValueError(f"d_out={self.d_out!r} must be an integer >= 0 (0: an SAE, no transcoder)")
        if self.skip and not self.d_out:
            raise ValueError("skip=True is a transcoder's linear skip: it needs d_out > 0 (paired rows)")
        if not self.d_out:
            return
        refused = (
            (self.arch in GRADIENT_ARCHS, "a g-SAE's rows are [x, J rows]; a transcoder's are [x, y]"),
            (self.tied, "a transcoder's decoder writes another space than its encoder reads; it cannot be tied"),
            (
                self.init in ("enc_dec_transpose", "svd"),
                f"init={self.init!r} sets the encoder from the decoder's space; use kaiming, orthogonal, data, "
                "pca or unit",
            ),
        )
        for bad, why in refused:
            if bad:
                raise ValueError(f"transcoder (d_out={self.d_out}): {why}")

    @property
    def transcoder(self) -> bool:
        """Whether this reconstructs another site's rows (``d_out > 0``)."""
        return self.d_out > 0

    @property
    def d_target(self) -> int:
        """Width of what the decoder writes: ``d_out`` for a transcoder, else ``d_in``."""
        return self.d_out or self.d_in

    @property
    def data_width(self) -> int:
        """Width of a training row: ``d_in``, for a g-SAE ``d_in × (1 + grad_columns)`` ([x, J rows]), for a
        transcoder ``d_in + d_out`` ([x, y])."""
        if self.arch in GRADIENT_ARCHS:
            return self.d_in * (1 + self.grad_columns)
        return self.d_in + self.d_out


@dataclass
class TrainConfig:
    """How to train (saved as JSON beside every checkpoint)."""

    n_samples: int = 4_096_000
    """Training samples in total (steps = n_samples // batch_size)."""
    batch_size: int = 256
    """Samples per Adam step (256: the Sharkey replication's; recovery needs many steps)."""
    lr: float = 1e-3
    """Adam learning rate after warm-up."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up from lr/warmup_steps to lr."""
    lr_decay: float = 0.0
    """Share of the steps at the end over which the learning rate falls linearly to 0 (0: constant).
    The schedule follows ``n_samples``: resuming with a larger total moves the decay to the new end."""
    seed: int = 0
    """Seeds the initialisation, the batch order and resampling."""
    dead_window: int | None = None
    """A latent is dead when it has not fired for this many samples. None: ``DEAD_WINDOW`` for the
    architecture, 1,000,000 for ReLU (dead latents are resampled, rarely) and gated, 100,000 for TopK /
    BatchTopK / Matryoshka, whose AuxK loss acts on dead latents every step: with a 1 M window AuxK
    would start too late in a run of a few million samples, and 20,000 for JumpReLU, whose AuxK then
    also reaches latents that fire too rarely to be seen (docs/sae.md gives the measured counts)."""

    def window(self, arch: str) -> int:
        """The dead-latent window in samples for an SAE of ``arch``."""
        return self.dead_window if self.dead_window is not None else DEAD_WINDOW[arch]

    loss: Literal["mse", "kl", "e2e+ds"] = "mse"
    """'mse': the reconstruction's squared error. 'kl' (end-to-end, Braun et al. 2024; sparsify's
    ``kl``): the divergence of the model's output with the SAE spliced into its layer from the
    output without (KL of the output distributions; for a sentence encoder 1 − cos of the
    embeddings), the model run live every step (``Engine``'s ``objective``). 'e2e+ds': that plus
    ``ds_coef`` × the squared error at every later layer the model's adapter lists (each divided by
    that layer's clean mean squared norm, then averaged). Sparsity terms (L1, L0, AuxK) are added as
    with 'mse'."""
    ds_coef: float = 1.0
    """'e2e+ds': weight of the later layers' normalised squared error."""
    resample_every: int = 0
    """Every this many steps re-initialise dead latents of ReLU SAEs (Anthropic 2023) and, with
    ``resample_duplicates``, duplicated latents of any SAE, until the lr decay begins; 0 = never."""
    resample_duplicates: float = 0.0
    """With ``resample_every``: of every pair of latents whose decoder rows have |cos| above this,
    re-initialise the less active one towards the residual x − x̂ of a badly reconstructed input
    (0: off). Two latents on one direction leave another direction without a latent: on the Sharkey
    data with exactly as many latents as features, the rare features (see the README)."""
    resample_dead_towards: Literal["input", "residual"] = "input"
    """Where a dead latent's new decoder row points: the input (x − b_dec, Anthropic 2023's rule) or,
    as for duplicates, the residual x − x̂ of a badly reconstructed input."""
    resample_samples: int = 8192
    """Inputs drawn to choose resampling targets from (squared-error weighted); a plain iterator
    uses the current batch."""
    checkpoint_every: int = 0
    """Write a checkpoint every this many steps (0: only at the end); needs an output folder."""
    bf16: bool = False
    """Run the forward pass under bfloat16 autocast."""
    fused: bool = True
    """Compute loss and gradients with the hand-derived kernel (``sae.kernels``) where it applies:
    untied, no orthogonality penalty, fp32 (not ``bf16``); otherwise autograd."""
    init_samples: int = 8192
    """Samples drawn for the 'data'/'pca' inits and b_dec (the data mean)."""
    log_every: int = 50
    """Record loss / L0 / dead fraction in the history every this many steps."""
    progress: bool = False
    """Show a tqdm progress bar with live loss, L0 and dead fraction."""
    device: str = "cpu"
    """Torch device."""

    def __post_init__(self):
        if self.dead_window is not None and (
            not isinstance(self.dead_window, int) or isinstance(self.dead_window, bool) or self.dead_window <= 0
        ):
            raise ValueError(f"dead_window={self.dead_window!r} must be a positive integer")
        for name in ("n_samples", "batch_size", "init_samples", "log_every", "resample_samples"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name}={v!r} must be a positive integer")
        for name in ("warmup_steps", "resample_every", "checkpoint_every", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name}={v!r} must be an integer >= 0")
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r} is unknown; choose one of {', '.join(LOSSES)}")
        if not (isinstance(self.ds_coef, (int, float)) and math.isfinite(self.ds_coef) and self.ds_coef >= 0):
            raise ValueError(f"ds_coef={self.ds_coef!r} must be a finite number >= 0")
        if not 0 <= self.lr_decay <= 1:
            raise ValueError(f"lr_decay={self.lr_decay} must be in [0, 1] (a share of the steps)")
        if self.resample_dead_towards not in RESAMPLE_TARGETS:
            raise ValueError(
                f"resample_dead_towards={self.resample_dead_towards!r} is unknown; "
                f"choose one of {', '.join(RESAMPLE_TARGETS)}"
            )
        if not 0 <= self.resample_duplicates < 1:
            raise ValueError(
                f"resample_duplicates={self.resample_duplicates} must be in [0, 1) (a |cos| threshold; 0: off)"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr={self.lr} must be a finite number > 0")
        if self.n_samples < self.batch_size:
            raise ValueError(f"n_samples={self.n_samples} must be >= batch_size={self.batch_size}")

    @property
    def steps(self) -> int:
        return self.n_samples // self.batch_size

    @property
    def decay_start(self) -> int:
        """The step at which the lr decay begins (``steps`` without decay); resampling stops there."""
        return self.steps - round(self.lr_decay * self.steps)
