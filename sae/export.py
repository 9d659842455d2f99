"""SAELens 6.x on-disk format: ``export_saelens`` writes what ``sae_lens.SAE.load_from_disk`` loads,
``import_saelens`` reads it back (ours, or an SAE that SAELens itself trained).

A SAELens folder holds ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``,
``b_enc [d_sae]``, ``b_dec [d_in]``, and ``threshold [d_sae]`` for JumpReLU) and ``cfg.json`` (flat
keys ``architecture``, ``d_in``, ``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input``,
``normalize_activations``, ``reshape_activations``, ``k`` for TopK, and a ``metadata`` dict).
Both libraries compute ``f((x − b_dec) W_enc + b_enc) W_dec + b_dec``, so weights are written as
they are, nothing folded; the export is ours exactly. Architectures (checked against sae-lens 6.54):

* ``relu`` → ``"standard"`` (ReLU). SAELens itself trains with the decoder-norm-weighted L1 and
  saves without folding the norms, so a ``weighted_l1`` SAE goes out unchanged too.
* ``topk`` → ``"topk"`` with ``k`` and ``rescale_acts_by_decoder_norm: false``: SAELens's TopK
  trainer writes ``true`` (its TopK ranks pre-activations × ‖W_dec row‖) after folding the norms
  into the weights; ``false`` ranks the raw pre-activations, which is our rule whatever the norms.
* ``batchtopk`` → ``"jumprelu"`` with ``threshold`` = θ for every latent: SAELens has no
  inference-time BatchTopK and saves its own BatchTopK SAEs this way; k goes in
  ``metadata.training_architecture_details``, as SAELens writes it.
* ``jumprelu`` → ``"jumprelu"`` with ``threshold`` = exp(log_threshold) per latent (SAELens's
  JumpReLU computes ReLU(pre)·1{pre > threshold}, ours pre·1{pre > θ}: the same for θ > 0);
  ``metadata.training_architecture_details`` holds ``l0_coefficient`` and ``jumprelu_bandwidth``,
  SAELens's training-config names.
* ``gated`` → ``"gated"``: ``W_enc``, ``b_gate`` (our ``b_enc``), ``r_mag``, ``b_mag``, ``W_dec``,
  ``b_dec`` (no ``b_enc``), SAELens's GatedSAE parameter names; details ``l1_coefficient``.
* ``matryoshka`` → ``"jumprelu"`` with ``threshold`` = θ for every latent, as ``batchtopk``:
  SAELens saves its Matryoshka BatchTopK SAEs as JumpReLU (its inference needs no prefixes);
  ``training_architecture`` is ``"matryoshka_batchtopk"`` (SAELens's name) and the details hold
  ``k`` and ``matryoshka_widths`` (the prefix sizes, SAELens's training-config field).
* tied SAEs get an explicit ``W_dec = W_encᵀ`` (SAELens has no tied mode).
* transcoders (``d_out > 0``): ``relu`` → ``"transcoder"``, ``jumprelu`` → ``"jumprelu_transcoder"``
  (and ``batchtopk`` / ``matryoshka`` → ``"jumprelu_transcoder"`` with θ for every latent, as their
  SAEs), ``"skip_transcoder"`` / ``"jumprelu_skip_transcoder"`` with ``W_skip [d_out, d_in]`` when
  ``skip``; ``d_out`` in cfg.json, ``W_dec [d_sae, d_out]``, ``b_dec [d_out]`` and
  ``apply_b_dec_to_input: false`` (SAELens's transcoders encode x as it is, as ours do). SAELens has
  no TopK or gated transcoder: those are refused (``SAELENS_TRANSCODERS``).

``metadata.sae_lens_version`` must be >= 6 or SAELens reads the file as a pre-6 config; our full
``SAEConfig`` goes in ``metadata.polylens`` so a round trip restores it (tied, l1, init, ...).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor

from sae.files import load_tensors, read_json, save_tensors_atomic, write_json_atomic
from sae.model import SAEConfig, SparseAutoencoder

WEIGHTS_FILE = "sae_weights.safetensors"
CONFIG_FILE = "cfg.json"
FORMAT_VERSION = "6.54.12"
"""The sae-lens version whose format this module was checked against (written as sae_lens_version)."""

_TO_SAELENS = {
    "relu": "standard",
    "topk": "topk",
    "batchtopk": "jumprelu",
    "jumprelu": "jumprelu",
    "gated": "gated",
    "matryoshka": "jumprelu",
}
_TRANSCODERS = {
    ("standard", False): "transcoder",
    ("standard", True): "skip_transcoder",
    ("jumprelu", False): "jumprelu_transcoder",
    ("jumprelu", True): "jumprelu_skip_transcoder",
}
"""SAELens's transcoder architecture for (our SAE's SAELens architecture, skip)."""
_FROM_TRANSCODER = {v: k for k, v in _TRANSCODERS.items()}
SAELENS_TRANSCODERS = ("relu", "jumprelu", "batchtopk", "matryoshka")
"""Our rules a SAELens transcoder class computes (relu: ``transcoder``; the others ``jumprelu_transcoder``)."""
_TRAINING_NAMES = {"relu": "standard", "matryoshka": "matryoshka_batchtopk"}
"""SAELens's ``training_architecture`` names where they differ from ours."""
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
_IGNORED_KEYS = {"scaling_factor", "finetuning_scaling_factor"}  # all-ones ones only (checked below)


def export_saelens(
    sae: SparseAutoencoder,
    folder: str | Path,
    hook_name: str | None = None,
    model_name: str | None = None,
    hook_head_index: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``sae`` as a SAELens 6.x folder (``sae_weights.safetensors`` + ``cfg.json``); returns it.

    ``hook_name``/``model_name`` say where the activations came from (``blocks.6.hook_resid_pre``,
    ``gpt2``); SAELens uses them to attach the SAE to a model. A folder that already holds files
    is refused unless ``overwrite=True``. Weights are written first, then ``cfg.json``, each
    atomically, so a folder with a ``cfg.json`` is never half-written.
    """
    if not isinstance(sae, SparseAutoencoder):
        raise TypeError(f"sae must be a SparseAutoencoder; got {type(sae).__name__}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"export folder {folder} is a file; pass a folder path")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise ValueError(
            f"export folder {folder} is not empty; pass overwrite=True (CLI: --force) to replace the export in it"
        )
    c = sae.config
    if c.transcoder and c.arch not in SAELENS_TRANSCODERS:
        raise ValueError(
            f"SAELens has no {c.arch} transcoder (its transcoders: {', '.join(_TRANSCODERS.values())}); "
            "the run's checkpoint holds it"
        )
    dtype = sae.W_enc.dtype
    dtype_name = next((name for name, dt in _DTYPES.items() if dt == dtype), None)
    if dtype_name is None:
        raise ValueError(f"SAE dtype {dtype} cannot be written for SAELens; use one of {', '.join(_DTYPES)}")

    with torch.no_grad():
        tensors = {
            "W_enc": sae.W_enc.detach().clone(),  # [d_in, n]
            "W_dec": sae.decoder.detach().clone().contiguous(),  # [n, d_in]; tied: W_encᵀ written out
            "b_enc": sae.b_enc.detach().clone(),  # [n]
            "b_dec": sae.b_dec.detach().clone(),  # [d_in]
        }
        if c.arch in ("batchtopk", "matryoshka"):
            tensors["threshold"] = torch.full((c.dict_size,), float(sae.threshold), dtype=dtype)  # [n]
        elif c.arch == "jumprelu":
            tensors["threshold"] = sae.log_threshold.detach().exp()  # [n]
        elif c.arch == "gated":
            tensors["b_gate"] = tensors.pop("b_enc")
            tensors["r_mag"] = sae.r_mag.detach().clone()
            tensors["b_mag"] = sae.b_mag.detach().clone()
        if c.skip:
            tensors["W_skip"] = sae.W_skip.detach().clone()  # [d_out, d_in]

    arch = _TO_SAELENS[c.arch]
    if c.transcoder:
        arch = _TRANSCODERS[(arch, c.skip)]
    details: dict = {}
    if c.arch in ("relu", "gated"):
        details = {"l1_coefficient": c.l1}  # same convention: Σ_latents |a|·‖W_dec row‖, batch mean
    elif c.arch == "batchtopk":
        details = {"k": c.k}
    elif c.arch == "matryoshka":
        details = {"k": c.k, "matryoshka_widths": list(c.prefixes)}
    elif c.arch == "jumprelu":
        details = {
            "l0_coefficient": c.l0,
            "jumprelu_bandwidth": c.bandwidth,
            "jumprelu_init_threshold": c.threshold_init,
        }
    cfg = {
        "architecture": arch,
        "d_in": c.d_in,
        "d_sae": c.dict_size,
        "dtype": dtype_name,
        "device": "cpu",
        "apply_b_dec_to_input": not c.transcoder,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": FORMAT_VERSION,
            "sae_lens_training_version": None,
            "model_name": model_name,
            "hook_name": hook_name,
            "hook_head_index": hook_head_index,
            "training_architecture": _TRAINING_NAMES.get(c.arch, c.arch),
            "training_architecture_details": details,
            "exported_by": "polylens sae.export",
            "polylens": dataclasses.asdict(c),
        },
    }
    if c.arch == "topk":
        cfg["k"] = c.k
        cfg["rescale_acts_by_decoder_norm"] = False
    if c.transcoder:
        cfg["d_out"] = c.d_out

    folder.mkdir(parents=True, exist_ok=True)
    save_tensors_atomic(tensors, folder / WEIGHTS_FILE)
    write_json_atomic(cfg, folder / CONFIG_FILE)
    return folder


def import_saelens(folder: str | Path) -> SparseAutoencoder:
    """Read a SAELens 6.x folder (ours or SAELens's) into a ``SparseAutoencoder`` in eval mode.

    Reads ``standard``, ``topk``, ``gated`` and ``jumprelu``: a threshold per latent is a JumpReLU
    SAE (log_threshold = log of the threshold, which SAELens clamps at 0), one threshold shared by
    all latents BatchTopK (how SAELens saves it) or, when the metadata says so, Matryoshka or
    JumpReLU. Folded on the way in, so encode/decode equal SAELens's: TopK's
    ``rescale_acts_by_decoder_norm`` (decoder rows scaled to unit norm, the encoder by the norms)
    and ``apply_b_dec_to_input: false`` (``b_enc += b_dec W_enc``). Safetensors only, no pickle.
    """
    folder = Path(folder)
    cfg, tensors = _read(folder)
    arch, d_in, n, d_out, skip = _check(cfg, tensors, folder)
    where = folder / CONFIG_FILE
    dtype = _DTYPES.get(str(cfg.get("dtype", "float32")).removeprefix("torch."), torch.float32)
    # Fold in float64; unfolded values survive the float64 round trip bit for bit.
    bias = "b_gate" if arch == "gated" else "b_enc"
    W_enc, W_dec, b_enc, b_dec = (tensors[k].double() for k in ("W_enc", "W_dec", bias, "b_dec"))
    folded = False
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm", False):
        norms = W_dec.norm(dim=1).clamp_min(1e-8)  # [n]; SAELens's own fold (fold_W_dec_norm)
        W_enc, b_enc, W_dec, folded = W_enc * norms, b_enc * norms, W_dec / norms[:, None], True
    extra = {k: tensors[k].double() for k in ("r_mag", "b_mag") if arch == "gated"}
    if skip:
        extra["W_skip"] = tensors["W_skip"].double()
    if not cfg.get("apply_b_dec_to_input", True) and not d_out:  # a transcoder never subtracts b_dec
        b_enc, folded = b_enc + b_dec @ W_enc, True
        if arch == "gated":  # the magnitude path reads xc W_enc ⊙ exp(r_mag) too
            extra["b_mag"] = extra["b_mag"] + (b_dec @ W_enc) * extra["r_mag"].exp()

    config = _config(cfg, arch, d_in, n, tensors, W_dec, where, d_out, skip)
    state = {"W_enc": W_enc, "b_enc": b_enc, "b_dec": b_dec, **extra}
    if config.arch == "jumprelu":
        state["log_threshold"] = tensors["threshold"].double().clamp_min(0).log()
    if config.tied:
        if folded or not torch.equal(tensors["W_dec"], tensors["W_enc"].T):
            raise ValueError(
                f"{where} says tied, but W_dec is not the transpose of W_enc; "
                "remove 'tied' from metadata.polylens to import it untied"
            )
    else:
        state["W_dec"] = W_dec
    shared = config.arch in ("batchtopk", "matryoshka")
    state["threshold"] = tensors["threshold"][0].double() if shared else torch.zeros((), dtype=torch.float64)
    sae = SparseAutoencoder(config, generator=torch.Generator().manual_seed(0)).to(dtype)  # weights replaced below
    sae.load_state_dict({k: v.to(dtype) for k, v in state.items()})
    return sae.eval()


def _read(folder: Path) -> tuple[dict, dict[str, Tensor]]:
    if not folder.is_dir():
        raise FileNotFoundError(f"SAELens folder {folder} does not exist")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder} has no {name}; a SAELens SAE folder holds {CONFIG_FILE} and {WEIGHTS_FILE}"
            )
    cfg = read_json(folder / CONFIG_FILE)
    if not isinstance(cfg, dict):
        raise ValueError(f"{folder / CONFIG_FILE} must hold a JSON object; got {type(cfg).__name__}")
    tensors, _ = load_tensors(folder / WEIGHTS_FILE)
    return cfg, tensors


def _check(cfg: dict, tensors: dict[str, Tensor], folder: Path) -> tuple[str, int, int, int, bool]:
    """The architecture (a transcoder's as its SAE's: standard or jumprelu), sizes d_in, d_sae,
    d_out (0: an SAE) and skip, after checking that we can represent this SAE exactly."""
    where, wfile = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    arch = cfg.get("architecture", "standard")
    if arch not in ("standard", "topk", "jumprelu", "gated", *_FROM_TRANSCODER):
        raise ValueError(
            f"{where}: architecture={arch!r} is not supported; polylens reads standard, topk, jumprelu, gated and "
            f"the transcoders {', '.join(_FROM_TRANSCODER)}"
        )
    arch, skip = _FROM_TRANSCODER.get(arch, (arch, False))
    for key, ok in (("normalize_activations", ("none", None, False)), ("reshape_activations", ("none", None))):
        if cfg.get(key) not in ok:
            raise ValueError(f"{where}: {key}={cfg.get(key)!r} is not supported; only 'none' can be imported")
    transcoder = cfg.get("architecture", "").endswith("transcoder")
    try:
        d_in, n = int(cfg["d_in"]), int(cfg["d_sae"])
        d_out = int(cfg["d_out"]) if transcoder else 0
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where} lacks a valid d_in/d_sae{'/d_out' if transcoder else ''} ({err})") from None
    if transcoder and d_out < 1:
        raise ValueError(f"{where}: d_out={d_out} must be a positive integer for a transcoder")
    if transcoder and cfg.get("apply_b_dec_to_input", False):
        raise ValueError(f"{where}: a transcoder with apply_b_dec_to_input true is not SAELens's; it cannot be read")
    d = d_out or d_in
    shapes = {"W_enc": (d_in, n), "W_dec": (n, d), "b_enc": (n,), "b_dec": (d,)}
    if skip:
        shapes["W_skip"] = (d_out, d_in)
    if arch == "jumprelu":
        shapes["threshold"] = (n,)
    if arch == "gated":
        del shapes["b_enc"]
        shapes.update(b_gate=(n,), r_mag=(n,), b_mag=(n,))
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise ValueError(f"{wfile} lacks {', '.join(missing)} (architecture {arch!r} needs {', '.join(shapes)})")
    for key in sorted(set(tensors) - set(shapes)):
        if key not in _IGNORED_KEYS or not bool((tensors[key] == 1).all()):
            raise ValueError(
                f"{wfile} holds {key!r}, which polylens cannot represent (expected only {', '.join(shapes)})"
            )
    for key, shape in shapes.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(
                f"{wfile}: {key} has shape {tuple(tensors[key].shape)}, "
                f"but cfg.json (d_in={d_in}, d_sae={n}{f', d_out={d_out}' if d_out else ''}) needs {shape}"
            )
    return arch, d_in, n, d_out, skip


def _config(
    cfg: dict,
    arch: str,
    d_in: int,
    n: int,
    tensors: dict[str, Tensor],
    W_dec: Tensor,
    where: Path,
    d_out: int = 0,
    skip: bool = False,
) -> SAEConfig:
    """Our config: cfg.json's SAELens fields win; the rest from metadata.polylens when present."""
    meta = _dict(cfg.get("metadata"))
    ours = _dict(meta.get("polylens"))
    known = {f.name for f in dataclasses.fields(SAEConfig)}
    fields = {k: v for k, v in ours.items() if k in known}
    fields.update(d_in=d_in, dict_size=n, arch={"standard": "relu", "topk": "topk", "gated": "gated"}.get(arch, ""))
    fields.update(d_out=d_out, skip=skip)
    details = _dict(meta.get("training_architecture_details"))
    if arch == "topk":
        fields["k"] = cfg.get("k")
    elif arch == "jumprelu":
        fields["arch"] = _jumprelu_kind(tensors["threshold"], ours.get("arch"), meta.get("training_architecture"))
        if fields["arch"] == "jumprelu":
            fields.pop("prefixes", None)
            if "l0_coefficient" in details and "l0" not in ours:
                fields["l0"] = float(details["l0_coefficient"])
        elif "k" in details:
            fields["k"] = max(1, round(float(details["k"])))  # SAELens's BatchTopK k is a float
        if (
            fields["arch"] == "matryoshka"
            and "prefixes" not in ours
            and isinstance(details.get("matryoshka_widths"), list)
        ):
            fields["prefixes"] = tuple(int(w) for w in details["matryoshka_widths"])
    elif "l1_coefficient" in details and "l1" not in ours:
        fields["l1"] = float(details["l1_coefficient"])
    if "k" in fields and not isinstance(fields["k"], int):
        if not isinstance(fields["k"], (int, float)) or fields["k"] != int(fields["k"]):
            raise ValueError(f"{where}: k={fields['k']!r} must be a positive integer")
        fields["k"] = int(fields["k"])
    if "decoder_norm" not in ours:
        unit = bool(torch.allclose(W_dec.norm(dim=1), torch.ones(n, dtype=W_dec.dtype), atol=1e-4))
        fields["decoder_norm"] = "unit" if unit else "weighted_l1"  # free rows: keep them as they are
    try:
        return SAEConfig(**fields)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _jumprelu_kind(threshold: Tensor, ours: str | None, training: str | None) -> str:
    """Which of our rules a SAELens ``jumprelu`` folder is: a threshold per latent is JumpReLU; one
    shared threshold is BatchTopK (how SAELens saves it), or Matryoshka or JumpReLU when the metadata
    (ours, or SAELens's ``training_architecture``) says so."""
    if not bool((threshold == threshold[0]).all()):
        return "jumprelu"
    if ours in ("jumprelu", "matryoshka", "batchtopk"):
        return ours
    return {"jumprelu": "jumprelu", "matryoshka_batchtopk": "matryoshka"}.get(str(training), "batchtopk")


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}
