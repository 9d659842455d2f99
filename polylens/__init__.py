"""polylens: the polytope lens (spline codes, boundary density, code clustering) and
activation- vs gradient-based direction finding for torch models."""

from polylens.capture import Captured, capture, layer_names, recording, resolve_layers
from polylens.directions import ActivationPCA, DirectionScores, GradientPCA, score_directions

__all__ = [
    "capture",
    "recording",
    "Captured",
    "layer_names",
    "resolve_layers",
    "ActivationPCA",
    "GradientPCA",
    "score_directions",
    "DirectionScores",
]
