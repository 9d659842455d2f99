"""``polylens sae eval RUN --model M --layer L``: an SAE judged inside the model it was trained on.

The layer's output is replaced by the SAE's reconstruction of its rows (``polylens.rows``: every
token but the BOS, every spatial position's channel vector, or the whole vector) and the model runs
on to its output. What changes there is the measure, beside two ablations of the same rows that
bound it from below (zero, and the rows' mean):

- language models with a head (``output_kind="next_token"``): next-token cross-entropy with the
  SAE spliced in, clean and ablated, and ``ce_loss_recovered`` = (CE_ablated − CE_spliced) /
  (CE_ablated − CE_clean) (SAELens's CE loss score; 1: nothing lost, 0: as bad as the ablation);
- classifiers: ``kl_div`` KL(p_clean ‖ p_spliced) per input, the share of inputs whose top class
  is kept, and the accuracy change where the inputs carry labels;
- sentence encoders (``output_kind="embedding"``): the embedding cosine kept, cos(clean, spliced);

and ``kl_div_score`` = 1 − KL_spliced / KL_zero-ablated wherever the output is a distribution. On
the rows themselves: explained variance, L0, dead and dense latents, shrinkage ‖x̂‖/‖x‖
(``sae.metrics``). A transcoder reads ``layer`` and writes ``pair_layer``: its prediction from
the rows of ``layer`` in the same forward pass replaces the rows of ``pair_layer`` (the ablations,
and the measures on the rows, are of ``pair_layer``'s rows). ``polylens`` runs the model and
``sae`` the SAE; they meet here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

DENSE = 0.1
"""A latent is dense when it fires on more than this share of the rows."""


@dataclass(frozen=True)
class SplicedEvaluation:
    """What ``spliced_evaluation`` measured (``to_json``: the command's JSON). Output measures that
    do not apply to the model's kind are None."""

    model: str
    layer: str
    pair_layer: str | None
    """A transcoder's: the site whose rows its output replaces (None for an SAE)."""
    output_kind: str
    n_inputs: int
    n_rows: int
    d_in: int
    d_out: int
    dict_size: int
    arch: str
    explained_variance: float
    l0: float
    mse: float
    dead_fraction: float
    dense_fraction: float
    dense_threshold: float
    shrinkage: float
    kl_div: float | None
    kl_div_zero_ablation: float | None
    kl_div_mean_ablation: float | None
    kl_div_score: float | None
    ce_loss_clean: float | None
    ce_loss_spliced: float | None
    ce_loss_zero_ablation: float | None
    ce_loss_mean_ablation: float | None
    ce_loss_recovered: float | None
    ce_loss_recovered_mean_ablation: float | None
    top1_kept: float | None
    accuracy_clean: float | None
    accuracy_spliced: float | None
    accuracy_change: float | None
    cosine_kept: float | None
    cosine_kept_zero_ablation: float | None
    cosine_kept_mean_ablation: float | None

    def to_json(self) -> dict:
        return asdict(self)


def _kl(ref, out) -> float:
    """Mean KL(softmax(ref) ‖ softmax(out)) over the leading positions ``[..., C]``."""
    import torch

    logp, logq = torch.log_softmax(ref.double(), -1), torch.log_softmax(out.double(), -1)
    return float((logp.exp() * (logp - logq)).sum(-1).mean())


def _next_token_ce(logits, tokens) -> float:
    """Mean cross-entropy of the next token, from the positions whose rows are spliced (after the
    BOS) to the last but one: logits ``[n, T, V]`` at 1..T−2 predict tokens 2..T−1."""
    import torch

    pred, target = logits[:, 1:-1].double(), tokens[:, 2:]
    return float(torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1)))


TINY = 1e-12
"""An ablation that moves the output by less than this (KL in nats, CE difference) leaves nothing to
recover: the score is undefined (None), not a ratio of roundoff."""


def _ratio(num: float, den: float) -> float | None:
    return None if abs(den) <= TINY else num / den


def _check_width(rows, width: int, layer: str, what: str, hint: str) -> None:
    if rows.shape[1] != width:
        raise ValueError(f"the SAE {what}, but {layer}'s rows are {rows.shape[1]} wide; {hint}")


def _transcoded(module, inputs, layer: str, pair_layer: str, predict, is_text: bool, batch_size: int):
    """The model's output with ``pair_layer``'s rows replaced by ``predict`` of ``layer``'s rows from
    the same forward pass (a transcoder spliced in)."""
    import torch

    from polylens.capture import recording
    from polylens.rows import map_rows, rows_of

    outs = []
    with torch.no_grad():
        for lo in range(0, inputs.shape[0], batch_size):

            def patch(v):
                if layer not in rec.activations:
                    raise ValueError(f"{pair_layer} runs before {layer}: a transcoder reads an earlier site")
                return map_rows(v, lambda _: predict(rows_of(rec.activations[layer], is_text)), is_text)

            with recording(module, [layer], patch={pair_layer: patch}) as rec:
                outs.append(module(inputs[lo : lo + batch_size]))
    return torch.cat(outs)


def spliced_evaluation(
    adapter,
    layer: str,
    inputs,
    sae,
    *,
    is_text: bool,
    labels=None,
    batch_size: int = 32,
    progress: bool = False,
    pair_layer: str | None = None,
) -> SplicedEvaluation:
    """Splice ``sae`` into ``layer`` of ``adapter`` and measure, over ``inputs`` (token ids for a
    language model, with ``is_text``), what its reconstruction keeps of the rows and of the output.
    ``labels [n]``: class labels, for the accuracy change of a classifier. A transcoder reads
    ``layer`` and replaces ``pair_layer`` (required for one, refused for an SAE)."""
    import torch

    from polylens.capture import capture
    from polylens.directions.ablation import run_model
    from polylens.progress import progress_bar
    from polylens.rows import map_rows, rows_of
    from sae.metrics import evaluate

    kind = adapter.output_kind
    module = adapter.module
    c = sae.config
    if c.arch == "gsae":
        raise ValueError("a g-SAE reads activations paired with gradients; splice an SAE trained on activations")
    if c.transcoder and pair_layer is None:
        raise ValueError("a transcoder replaces another site than it reads: give --pair-layer NAME, the site it writes")
    if not c.transcoder and pair_layer is not None:
        raise ValueError("--pair-layer is the site a transcoder writes; this is an SAE, which replaces --layer itself")
    sites = [layer] if pair_layer is None else [layer, pair_layer]
    rows, targets, clean = [], [], []
    bar = progress_bar(inputs.shape[0], f"{adapter.name} {layer}", enabled=progress)
    with torch.no_grad():
        for lo in range(0, inputs.shape[0], batch_size):
            got = capture(module, inputs[lo : lo + batch_size], sites, keep_output=True)
            if not isinstance(got.output, torch.Tensor):
                raise ValueError(f"model {adapter.name} does not return a tensor; its output cannot be compared")
            rows.append(rows_of(got.activations[layer], is_text))
            targets.append(rows_of(got.activations[sites[-1]], is_text))
            clean.append(got.output)
            bar.update(got.output.shape[0])
            if lo == 0:
                _check_width(
                    rows[0], c.d_in, layer, f"reads rows of width d_in={c.d_in}", "give the layer it was trained on"
                )
                writes = f"writes rows of width d_out={c.d_out}"
                _check_width(targets[0], c.d_target, sites[-1], writes, "give the site it was trained to write")
    bar.close()
    A, Y, clean = torch.cat(rows), torch.cat(targets), torch.cat(clean)
    device, dtype = sae.b_dec.device, sae.b_dec.dtype
    sae.eval()

    def reconstruct(x):
        with torch.no_grad():
            return sae.reconstruct(x.to(device, dtype)).to(x.device, x.dtype)

    mean = Y.mean(0)
    ablations = {
        "zero": lambda v: map_rows(v, torch.zeros_like, is_text),
        "mean": lambda v: map_rows(v, lambda x: mean.to(x.dtype).expand_as(x).clone(), is_text),
    }
    outs = {
        "spliced": (
            run_model(module, inputs, layer, batch_size=batch_size, patch=lambda v: map_rows(v, reconstruct, is_text))
            if pair_layer is None
            else _transcoded(module, inputs, layer, pair_layer, reconstruct, is_text, batch_size)
        ),
        **{name: run_model(module, inputs, sites[-1], batch_size=batch_size, patch=f) for name, f in ablations.items()},
    }
    on_rows = evaluate(sae, A.float() if pair_layer is None else torch.cat([A, Y], 1).float())
    fires = torch.zeros(sae.config.dict_size, dtype=torch.float64)
    with torch.no_grad():
        for lo in range(0, A.shape[0], 8192):
            fires += (sae.encode(A[lo : lo + 8192].to(device, dtype)) != 0).double().sum(0).cpu()
    out = dict.fromkeys(f.name for f in SplicedEvaluation.__dataclass_fields__.values())
    if kind == "embedding":

        def cos(a, b) -> float:
            return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).mean())

        out |= {
            "cosine_kept": cos(clean, outs["spliced"]),
            "cosine_kept_zero_ablation": cos(clean, outs["zero"]),
            "cosine_kept_mean_ablation": cos(clean, outs["mean"]),
        }
    else:
        # a language model's positions after the BOS are its rows (the BOS row is never spliced)
        pick = (lambda t: t[:, 1:]) if kind == "next_token" else (lambda t: t)
        kls = {name: _kl(pick(clean), pick(o)) for name, o in outs.items()}
        out |= {
            "kl_div": kls["spliced"],
            "kl_div_zero_ablation": kls["zero"],
            "kl_div_mean_ablation": kls["mean"],
            "kl_div_score": None if kls["zero"] <= TINY else 1.0 - kls["spliced"] / kls["zero"],
            "top1_kept": float((pick(outs["spliced"]).argmax(-1) == pick(clean).argmax(-1)).double().mean()),
        }
        if kind == "next_token":
            ce = {name: _next_token_ce(o, inputs) for name, o in {"clean": clean, **outs}.items()}
            out |= {
                "ce_loss_clean": ce["clean"],
                "ce_loss_spliced": ce["spliced"],
                "ce_loss_zero_ablation": ce["zero"],
                "ce_loss_mean_ablation": ce["mean"],
                "ce_loss_recovered": _ratio(ce["zero"] - ce["spliced"], ce["zero"] - ce["clean"]),
                "ce_loss_recovered_mean_ablation": _ratio(ce["mean"] - ce["spliced"], ce["mean"] - ce["clean"]),
            }
        elif labels is not None:
            acc = {
                name: float((o.argmax(-1) == labels).double().mean()) for name, o in (("clean", clean), *outs.items())
            }
            out |= {
                "accuracy_clean": acc["clean"],
                "accuracy_spliced": acc["spliced"],
                "accuracy_change": acc["spliced"] - acc["clean"],
            }
    out |= {
        "model": adapter.name,
        "layer": layer,
        "pair_layer": pair_layer,
        "d_out": int(c.d_out),
        "output_kind": kind,
        "n_inputs": int(inputs.shape[0]),
        "n_rows": int(A.shape[0]),
        "d_in": int(c.d_in),
        "dict_size": int(c.dict_size),
        "arch": c.arch,
        "explained_variance": on_rows.explained_variance,
        "l0": on_rows.l0,
        "mse": on_rows.mse,
        "dead_fraction": on_rows.dead_fraction,
        "dense_fraction": float((fires / A.shape[0] > DENSE).double().mean()),
        "dense_threshold": DENSE,
        "shrinkage": on_rows.shrinkage,
    }
    return SplicedEvaluation(**out)
