"""sae: a sparse-autoencoder trainer with ground-truth synthetic data and recovery metrics.

Independent of ``polylens`` (the two never import each other). The public names are imported on
first use (PEP 562), so ``import sae.config`` (what the CLI reads) does not import torch.
The one-call functions live in their modules: ``sae.train.train``, ``sae.sweep.sweep``,
``sae.runs.train_run`` / ``resume_run`` / ``eval_run`` and ``sae.sweep.sweep_run`` (the CLI's).
"""

from __future__ import annotations

import importlib

# public name -> module that defines it
_EXPORTS = {
    "SAEConfig": "sae.config",
    "TrainConfig": "sae.config",
    "SparseAutoencoder": "sae.model",
    "Trainer": "sae.train",
    "load_sae": "sae.train",
    "evaluate": "sae.metrics",
    "SharkeyData": "sae.synthetic",
    "export_saelens": "sae.export",
    "import_saelens": "sae.export",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sae' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
