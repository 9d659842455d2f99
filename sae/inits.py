"""Initialisation schemes, selected by name (``SAEConfig.init``).

* ``kaiming``: encoder and decoder Kaiming-uniform, independently (PyTorch's Linear default).
* ``orthogonal``: decoder rows (semi-)orthogonal (Sharkey replication); encoder Kaiming.
* ``enc_dec_transpose``: Kaiming decoder, encoder = decoderᵀ (Anthropic Apr-2024, Gao et al.).
* ``data``: decoder row i = p·(x_i − μ)/‖·‖ + (1 − p)·random unit direction, encoder = decoderᵀ
  (Anthropic Jan-2025 datapoint init; p = ``init_blend``).
* ``pca``: decoder rows = the data's top principal directions, cycled when n > d, plus Gaussian
  noise of norm ≈ ``init_noise``; encoder = decoderᵀ.
* ``unit``: decoder rows = standard-basis vectors (cycled) plus noise (privileged-basis guess).
* ``svd``: decoder rows = the left singular vectors of the weight matrix W ``[d, fan_in]`` that
  produces the layer (z = W x + b: the major axes of the pre-activations' variation), in order of
  their singular values, cycled when n > rank, plus noise as ``pca``; encoder = decoderᵀ. No SAE
  library has it; the seeds' proposal. W comes from ``SAEConfig.init_matrix`` or an activation store.
Decoder rows are unit-norm afterwards in ``decoder_norm="unit"`` mode (norm 0.1 in weighted-L1
mode, as SAELens). ``b_dec`` = data mean when data is given, else 0. A transcoder's decoder rows
and b_dec come from its targets y (the rows' last d_out columns); its encoder is Kaiming.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sae.geometry import unit_rows

NEEDS_DATA = ("data", "pca")


def _kaiming(rows: int, cols: int, gen: torch.Generator | None) -> Tensor:
    """Kaiming-uniform with a = √5 (nn.Linear's default) for a [rows, cols] weight, fan_in = cols."""
    bound = 1 / math.sqrt(cols)
    return (torch.rand(rows, cols, generator=gen) * 2 - 1) * bound


def _noise(n: int, d: int, scale: float, gen) -> Tensor:
    """Gaussian noise rows of expected norm ≈ ``scale`` (per-coordinate sd scale/√d), so a copied
    unit direction keeps cos ≈ 1/√(1 + scale²) with its source whatever d is."""
    return torch.randn(n, d, generator=gen) * (scale / math.sqrt(d))


def svd_directions(matrix: Tensor, d: int) -> Tensor:
    """Left singular vectors ``[rank, d]`` (rows, by decreasing singular value) of the weight matrix
    whose output space is R^d: ``matrix`` is ``[d, fan_in]``, or ``[fan_in, d]`` (transposed here)."""
    W = matrix.detach().float()
    if W.dim() != 2 or d not in W.shape:
        raise ValueError(f"the init matrix has shape {tuple(W.shape)}; the 'svd' init needs one side equal to d_in={d}")
    bad = int((~torch.isfinite(W)).sum())
    if bad:
        raise ValueError(
            f"the init matrix holds {bad} NaN or inf entries of {W.numel()}; the 'svd' init needs finite weights"
        )
    if W.shape[0] != d:
        W = W.T
    U, S, _ = torch.linalg.svd(W, full_matrices=False)
    keep = S > S[0] * 1e-6 if S.numel() and S[0] > 0 else torch.zeros_like(S, dtype=torch.bool)
    if not bool(keep.any()):
        raise ValueError("the init matrix is zero: it has no singular directions")
    return U[:, keep].T


def initial_decoder(
    init: str, n: int, d: int, data: Tensor | None, gen, blend: float, noise: float, matrix: Tensor | None = None
) -> Tensor:
    """Decoder rows ``[n, d]`` (unit norm) for scheme ``init``; ``data [N, d]`` for 'data'/'pca',
    the layer's weight ``matrix`` for 'svd'."""
    if init in NEEDS_DATA and data is None:
        raise ValueError(f"init={init!r} needs a data sample; pass data= to initialize (or use another init)")
    if init == "svd":
        if matrix is None:
            raise ValueError(
                "init='svd' needs the weight matrix of the layer: "
                "train on an activation store (polylens cache records it) "
                "or give --init-matrix FILE.safetensors:KEY"
            )
        base = svd_directions(matrix, d)
        return unit_rows(base[torch.arange(n) % base.shape[0]] + _noise(n, d, noise, gen))
    if init in ("kaiming", "enc_dec_transpose"):
        return unit_rows(_kaiming(n, d, gen))
    if init == "orthogonal":
        # QR of a Gaussian matrix: orthonormal rows when n <= d, orthonormal columns otherwise.
        A = torch.randn(max(n, d), min(n, d), generator=gen)
        Q, R = torch.linalg.qr(A)
        Q = Q * torch.sign(torch.diagonal(R)).unsqueeze(0)
        W = Q if n >= d else Q.T  # [n, d]
        return unit_rows(W)
    if init == "unit":
        basis = torch.eye(d)[torch.arange(n) % d]
        return unit_rows(basis + _noise(n, d, noise, gen))
    X = data.detach().float().reshape(-1, d)
    Xc = X - X.mean(0)
    if init == "data":
        idx = torch.randint(0, Xc.shape[0], (n,), generator=gen)
        return unit_rows(blend * unit_rows(Xc[idx]) + (1 - blend) * unit_rows(torch.randn(n, d, generator=gen)))
    # pca
    _, _, Vh = torch.linalg.svd(Xc, full_matrices=False)  # rows of Vh: principal directions
    rank = Vh.shape[0]
    base = Vh[torch.arange(n) % rank]
    return unit_rows(base + _noise(n, d, noise, gen))


@torch.no_grad()
def initialize(
    sae,
    data: Tensor | None = None,
    generator: torch.Generator | None = None,
    placeholder: bool = False,
    matrix: Tensor | None = None,
) -> None:
    """(Re-)initialise ``sae`` in place according to ``sae.config.init`` (a data sample for 'data'/'pca').

    ``placeholder=True`` (used by the constructor) lets a data-dependent init start from Kaiming
    weights until the trainer calls ``initialize(sae, data)``.
    """
    c = sae.config
    d = c.d_target
    if data is not None:  # the decoder's rows and b_dec live where the reconstruction does
        data = sae.target(data.detach().float().reshape(-1, data.shape[-1]))
    if (c.init in NEEDS_DATA and data is None or c.init == "svd" and matrix is None) and placeholder:
        # Constructed without data: a placeholder until the trainer calls initialize(sae, data).
        dec = unit_rows(_kaiming(c.dict_size, d, generator))
    else:
        dec = initial_decoder(c.init, c.dict_size, d, data, generator, c.init_blend, c.init_noise, matrix)
    if c.decoder_norm == "weighted_l1":
        dec = 0.1 * dec
    if c.tied:
        sae.W_enc.copy_(dec.T)
    else:
        sae.W_dec.copy_(dec)
        if c.init in ("kaiming", "orthogonal") or c.transcoder:  # a transcoder's encoder reads another space
            sae.W_enc.copy_(_kaiming(c.dict_size, c.d_in, generator).T)
        else:
            sae.W_enc.copy_(dec.T)
    sae.b_enc.zero_()
    if sae.W_skip is not None:
        sae.W_skip.zero_()
    centred = data is not None and c.learn_b_dec
    sae.b_dec.copy_(data.mean(0) if centred else torch.zeros(d))
    sae.threshold.zero_()
