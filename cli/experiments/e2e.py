"""End-to-end SAE training (``polylens sae train --data STORE --loss kl|e2e+ds``; Braun et al. 2024,
"Identifying functionally important features with end-to-end sparse dictionary learning"):
the SAE is trained on what its reconstruction does to the model's output, not on the
reconstruction's error. Each step runs the model the activation store was written from on a batch
of the store's own inputs, once clean and once with the SAE's reconstruction in place of the
layer's rows (``polylens.rows``: every token but the BOS, every position's channel vector, or the
whole vector), and the loss is

- 'kl': the divergence of the spliced output from the clean one: KL(p_clean ‖ p_spliced) of the
  output distributions, averaged over inputs (a classifier) or over the positions after the BOS (a
  language model); for a sentence encoder, whose output is an embedding, 1 − cos(clean, spliced);
- 'e2e+ds': that, plus ``ds_coef`` × the squared error at every layer the model's adapter lists
  after the SAE's (each ‖a_spliced − a_clean‖² averaged over the layer's rows and divided by the
  clean rows' mean squared norm; then averaged over those layers),

plus the SAE's own sparsity terms (L1, L0, AuxK), as with the reconstruction loss. The model's
weights are frozen; gradients reach the SAE through the rest of the network.

The model and its inputs are rebuilt from the store's manifest (model, weights, inputs, context,
count) and checked against the SHA-256s the store recorded of both, so the SAE is trained end to
end on exactly the network and inputs whose rows it was initialised from.
"""

from __future__ import annotations

import argparse

EMBEDDING = "embedding"


def store_model(manifest: dict, where: str):
    """``(adapter, inputs, is_text)``: the model and inputs the store at ``where`` was written from,
    checked against the model and input SHA-256s its manifest recorded."""
    from cli.experiments.cache import module_sha256, tensor_sha256
    from cli.modelargs import load_from_args, model_inputs

    if not manifest.get("model_spec") or manifest.get("n") is None:
        raise ValueError(
            f"the store {where} does not record the model and inputs it was written from (model_spec, n); "
            "end-to-end training needs a store written by polylens cache"
        )
    args = argparse.Namespace(
        model=manifest["model_spec"],
        weights=manifest.get("weights_path"),
        random_weights=bool(manifest.get("random_weights")),
        device="cpu",
        activation=manifest.get("activation"),
        input=[i.get("path") or i.get("name") for i in manifest.get("inputs") or []],
        n=manifest["n"],
    )
    adapter = load_from_args(args)
    inputs, is_text, _ = model_inputs(adapter, args, context=manifest.get("context") or 128, n_default=args.n)
    for what, ours, theirs in (
        ("model's weights", module_sha256(adapter.module), manifest.get("model_sha256")),
        ("inputs", tensor_sha256(inputs), manifest.get("inputs_sha256")),
    ):
        if theirs is not None and ours != theirs:
            raise ValueError(
                f"the {what} rebuilt from the store {where}'s manifest are not those it was written from "
                f"(sha256 {ours[:12]}, the store says {theirs[:12]}); end-to-end training needs them unchanged"
            )
    return adapter, inputs, is_text


def divergence(kind: str, clean, spliced):
    """The output term of the 'kl' loss (see the module docstring); differentiable in ``spliced``."""
    import torch

    if kind == EMBEDDING:
        return 1 - torch.nn.functional.cosine_similarity(spliced, clean, dim=-1).mean()
    if kind == "next_token":  # the positions whose rows are spliced: after the BOS
        clean, spliced = clean[:, 1:], spliced[:, 1:]
    logp = torch.log_softmax(clean, -1)
    return (logp.exp() * (logp - torch.log_softmax(spliced, -1))).sum(-1).mean()


class SplicedObjective:
    """What ``sae.engine.Engine`` calls for end-to-end training: ``batch(step)`` draws the step's
    inputs (``rows`` rows, a function of the seed and the step), ``(forward, inputs)`` runs the model
    with the SAE spliced in and returns the SAE's ``SAEOutput`` with the end-to-end ``loss``."""

    def __init__(self, adapter, layer: str, inputs, *, is_text: bool, loss: str, ds_coef: float, rows: int, seed: int):
        import torch

        from polylens.capture import capture
        from polylens.rows import rows_of

        self.module, self.layer, self.inputs, self.is_text = adapter.module.eval(), layer, inputs, is_text
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.kind, self.seed = adapter.output_kind, seed
        with torch.no_grad():
            per_input = rows_of(capture(self.module, inputs[:1], [layer]).activations[layer], is_text).shape[0]
        self.per_step = max(1, -(-rows // per_input))
        self.rows = self.per_step * per_input
        """Rows a step splices (≥ the batch size asked for: whole inputs)."""
        names = list(adapter.space_layers)
        self.later = names[names.index(layer) + 1 :] if loss == "e2e+ds" and layer in names else []
        if loss == "e2e+ds" and not self.later:
            raise ValueError(f"--loss e2e+ds reads the layers after {layer}, and {adapter.name} lists none after it")
        self.ds_coef = ds_coef
        self._clean = None

    def batch(self, step: int):
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 7_919 + 11)
        return self.inputs[torch.randint(0, self.inputs.shape[0], (self.per_step,), generator=g)]

    def _clean_pass(self, x):
        """The clean output and later layers' rows for batch ``x`` (computed once for all members)."""
        import torch

        from polylens.capture import recording
        from polylens.rows import rows_of

        if self._clean is None or self._clean[0] is not x:
            with torch.no_grad(), recording(self.module, self.later or [self.layer]) as rec:
                out = self.module(x)
            later = {name: rows_of(rec.activations[name], self.is_text) for name in self.later}
            self._clean = (x, out, later)
        return self._clean[1], self._clean[2]

    def __call__(self, forward, x):
        import torch

        from polylens.capture import recording
        from polylens.rows import map_rows, rows_of

        clean, clean_later = self._clean_pass(x)
        outs = []

        def splice(rows):
            outs.append(forward(rows))
            return outs[-1].recon.to(rows.dtype)

        patch = {self.layer: lambda v: map_rows(v, splice, self.is_text)}
        watched = self.later or [self.layer]  # (recording wants a layer; the spliced one costs nothing)
        with torch.enable_grad(), recording(self.module, watched, keep_graph=True, patch=patch) as rec:
            spliced = self.module(x)
        out = outs[0]
        loss = divergence(self.kind, clean, spliced) + out.sparsity + out.aux + out.orth
        if self.later:
            terms = []
            for name in self.later:
                ref = clean_later[name]
                err = (rows_of(rec.activations[name], self.is_text) - ref).pow(2).sum(-1).mean()
                terms.append(err / ref.pow(2).sum(-1).mean().clamp_min(1e-12))
            loss = loss + self.ds_coef * torch.stack(terms).mean()
        return out._replace(loss=loss)


def open_objective(store, config, sae_config) -> SplicedObjective:
    """The objective of end-to-end training on ``store`` (``sae.runs.train_run``'s ``open_objective``)."""
    manifest = store.manifest
    adapter, inputs, is_text = store_model(manifest, str(store.path))
    if sae_config.d_in != manifest["width"]:
        raise ValueError(
            f"the SAE reads {sae_config.d_in} wide rows, the store's {manifest['layer']} is {manifest['width']}"
        )
    return SplicedObjective(
        adapter,
        manifest["layer"],
        inputs,
        is_text=is_text,
        loss=config.loss,
        ds_coef=config.ds_coef,
        rows=config.batch_size,
        seed=config.seed,
    )
