"""The one place polylens checks its arguments. Each check names the parameter, its value, the rule
and the bound, as scikit-learn does ("n_components=9 must be between 1 and n_features=5"), and
raises ``ValueError`` (``TypeError`` for a value of the wrong type). Messages name Python parameters;
the CLI maps them to its flags."""

from __future__ import annotations

import math
from collections.abc import Iterable


def check_int(name: str, value, *, low: int | None = 1, high: int | None = None, high_name: str | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (None: unbounded); a bool or a float is refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        if not (hasattr(value, "__index__") and not isinstance(value, bool)):
            raise TypeError(f"{name}={value!r} must be an integer")
        value = int(value)
    if low is not None and high is not None and not low <= value <= high:
        raise ValueError(f"{name}={value} must be between {low} and {high_name + '=' if high_name else ''}{high}")
    if low is not None and value < low:
        raise ValueError(f"{name}={value} must be {'a positive integer' if low == 1 else f'an integer >= {low}'}")
    if high is not None and value > high:
        raise ValueError(f"{name}={value} must be at most {high_name + '=' if high_name else ''}{high}")
    return value


def check_float(
    name: str, value, *, low: float | None = None, high: float | None = None, open_low: bool = False
) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``open_low``)."""
    if isinstance(value, bool):
        raise TypeError(f"{name}={value!r} must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}={value!r} must be a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{name}={value} must be a finite number")
    if low is not None and (number <= low if open_low else number < low):
        raise ValueError(f"{name}={value} must be {'>' if open_low else '>='} {low}")
    if high is not None and number > high:
        raise ValueError(f"{name}={value} must be <= {high}")
    return number


def check_choice(name: str, value, choices: Iterable):
    """``value`` if it is one of ``choices``."""
    options = list(choices)
    if value not in options:
        raise ValueError(f"{name}={value!r} must be one of {', '.join(map(repr, options))}")
    return value
