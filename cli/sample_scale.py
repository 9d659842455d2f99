"""``POLYLENS_SAMPLE_SCALE``: the one knob that shrinks training counts, read here and nowhere else.

The documentation's commands run in the test suite exactly as printed; what they train on must
shrink there, and only that: the SAE trainer's samples (``--samples``, ``--eval-samples`` and their
defaults) and compare's training steps (``--steps``, ``--sae-steps`` and their defaults) are
multiplied by the scale. No flag's meaning changes and unset, the scale is 1.
"""

from __future__ import annotations

import os

ENV = "POLYLENS_SAMPLE_SCALE"


def sample_scale() -> float:
    """The scale in (0, 1] that ``$POLYLENS_SAMPLE_SCALE`` names (1 when unset)."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return 1.0
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise ValueError(f"{ENV}={text!r} must be a number in (0, 1]; unset it for the full sample counts")
    return value


def scaled(n: int, minimum: int = 1) -> int:
    """``n`` times the scale, rounded, at least ``minimum`` (and never more than ``n``)."""
    scale = sample_scale()
    if scale == 1.0:
        return n
    return min(n, max(minimum, round(n * scale)))
