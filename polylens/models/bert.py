"""A BERT encoder (Devlin et al. 2019) with TransformerLens's hook names, written to read a
HuggingFace ``BertModel`` state dict (all-MiniLM-L6-v2: 6 layers, d_model 384, 12 heads, d_mlp 1536).

BERT is post-LN: each block computes ``h = LN(x + attn(x))`` then ``LN(h + mlp(h))``. The readable
sites are identity modules named as TransformerLens names them: ``blocks.L.hook_resid_pre`` (the
block's input), ``blocks.L.attn.hook_z`` (heads' mixed values), ``blocks.L.hook_resid_mid`` (after
the first LayerNorm), ``blocks.L.mlp.hook_pre`` (the GELU's input), ``blocks.L.mlp.hook_post`` (its
output), ``blocks.L.hook_mlp_out`` (the MLP's output, before it joins the residual: with
``hook_resid_mid``, its input, the two sites a transcoder of the MLP reads and writes),
``blocks.L.hook_resid_post`` (the block's output, the hidden state HuggingFace reports).

The module maps token ids ``[n, seq]`` to the sentence embedding ``[n, d_model]``: the mean of the
last hidden states over the tokens that are not padding (id ``pad_id``), L2-normalised, as
sentence-transformers pools all-MiniLM-L6-v2. Padding is read from the ids, so one tensor is the
whole input and batches of unequal sentences need no separate mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class BertConfig:
    """The architecture; defaults are all-MiniLM-L6-v2's."""

    n_layers: int = 6
    d_model: int = 384
    n_heads: int = 12
    d_mlp: int = 1536
    d_vocab: int = 30522
    n_ctx: int = 512
    n_types: int = 2
    eps: float = 1e-12
    pad_id: int = 0


class Hook(nn.Identity):
    """A named site whose output capture reads (TransformerLens's HookPoint, without its machinery)."""


class Attention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.query, self.key, self.value = (nn.Linear(cfg.d_model, cfg.d_model) for _ in range(3))
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.hook_z = Hook()

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        n, seq, d = x.shape
        q, k, v = (
            lin(x).reshape(n, seq, self.n_heads, -1).transpose(1, 2) for lin in (self.query, self.key, self.value)
        )
        mask = keep[:, None, None, :]  # [n, 1, 1, seq]: padding is never attended to
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [n, heads, seq, d_head]
        z = self.hook_z(z.transpose(1, 2))  # [n, seq, heads, d_head]
        return self.out(z.reshape(n, seq, d))


class MLP(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.inner = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.outer = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.hook_pre, self.hook_post = Hook(), Hook()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(self.hook_post(F.gelu(self.hook_pre(self.inner(x)))))  # exact (erf) GELU, as BERT's "gelu"


class Block(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.hook_resid_pre, self.hook_resid_mid, self.hook_resid_post = Hook(), Hook(), Hook()
        self.hook_mlp_out = Hook()
        self.attn, self.ln1 = Attention(cfg), nn.LayerNorm(cfg.d_model, eps=cfg.eps)
        self.mlp, self.ln2 = MLP(cfg), nn.LayerNorm(cfg.d_model, eps=cfg.eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        h = self.hook_resid_mid(self.ln1(x + self.attn(x, keep)))
        return self.hook_resid_post(self.ln2(h + self.hook_mlp_out(self.mlp(h))))


class Bert(nn.Module):
    """Token ids ``[n, seq]`` (first ``[CLS]``, padding ``pad_id`` at the end) → the normalised
    mean-pooled embedding ``[n, d_model]``."""

    def __init__(self, cfg: BertConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or BertConfig()
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.type_embed = nn.Embedding(cfg.n_types, cfg.d_model)
        self.ln_embed = nn.LayerNorm(cfg.d_model, eps=cfg.eps)
        self.hook_embed = Hook()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))

    def hidden(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last hidden states ``[n, seq, d_model]`` and which tokens are not padding ``[n, seq]``."""
        keep = ids != self.cfg.pad_id
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embed(ids) + self.pos_embed(positions)[None] + self.type_embed(torch.zeros_like(ids))
        x = self.hook_embed(self.ln_embed(x))
        for block in self.blocks:
            x = block(x, keep)
        return x, keep

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x, keep = self.hidden(ids)
        w = keep.to(x.dtype)[..., None]
        pooled = (x * w).sum(1) / w.sum(1).clamp_min(1)
        return F.normalize(pooled, dim=-1)


def hf_state_dict(state: dict[str, torch.Tensor], cfg: BertConfig) -> dict[str, torch.Tensor]:
    """A HuggingFace ``BertModel`` state dict (keys ``embeddings.*``, ``encoder.layer.L.*``) renamed to
    this module's names; the pooler and ``position_ids`` buffer, which the embedding never uses, are dropped."""
    rename = {
        "embeddings.word_embeddings": "embed",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.token_type_embeddings": "type_embed",
        "embeddings.LayerNorm": "ln_embed",
    }
    per_layer = {
        "attention.self.query": "attn.query",
        "attention.self.key": "attn.key",
        "attention.self.value": "attn.value",
        "attention.output.dense": "attn.out",
        "attention.output.LayerNorm": "ln1",
        "intermediate.dense": "mlp.inner",
        "output.dense": "mlp.outer",
        "output.LayerNorm": "ln2",
    }
    for layer in range(cfg.n_layers):
        rename.update({f"encoder.layer.{layer}.{k}": f"blocks.{layer}.{v}" for k, v in per_layer.items()})
    out = {}
    for key, tensor in state.items():
        stem, _, leaf = key.rpartition(".")
        if stem.startswith("pooler") or key.endswith("position_ids"):
            continue
        out[f"{rename.get(stem, stem)}.{leaf}"] = tensor
    return out
