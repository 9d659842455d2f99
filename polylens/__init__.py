"""polylens: the polytope lens (spline codes, boundary density, the shell profile) and
activation- vs gradient-based direction finding for torch models.

The public names are imported on first use (PEP 562), so ``import polylens`` and the
``polylens`` command start without importing torch, scipy or any model library.
"""

from __future__ import annotations

import importlib

# public name -> module that defines it
_EXPORTS = {
    "capture": "polylens.capture",
    "load_model": "polylens.models",
    "SplineCodes": "polylens.lens.codes",
    "extract_codes": "polylens.lens.codes",
    "boundary_density": "polylens.lens.density",
    "shell_profile": "polylens.lens.shell",
    "interpolation_path": "polylens.lens.paths",
    "scaling_path": "polylens.lens.paths",
    "polyline_path": "polylens.lens.paths",
    "ActivationPCA": "polylens.directions.finders",
    "GradientPCA": "polylens.directions.finders",
    "LIB": "polylens.directions.finders",
    "score_directions": "polylens.directions.scoring",
    "HDBSCAN": "polylens.clustering.hdbscan",
    "KMedoids": "polylens.clustering.medoids",
    "Agglomerative": "polylens.clustering.agglomerative",
    "cluster_layer": "polylens.clustering.analysis",
    "digits_points": "polylens.clustering.points",
    "array_points": "polylens.clustering.points",
    "image_points": "polylens.clustering.points",
    "text_points": "polylens.clustering.points",
    "gpt2_points": "polylens.clustering.points",
    "codes_points": "polylens.clustering.points",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'polylens' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
