"""Model adapters: every model polylens analyses sits behind ``ModelAdapter``.

Each model is one ``ModelAdapter`` subclass in one file here; its class attribute ``spec_pattern``
registers it, so adding a model touches that file only. ``load_model(spec)`` imports adapter
modules lazily, those whose name begins the spec first (``gpt2`` for ``gpt2-medium``,
``inception`` for ``inceptionv1``), so that a missing optional extra (TransformerLens,
torchvision) never breaks an unrelated command and an offline error costs no torch import.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from polylens.models.base import ModelAdapter


def load_model(spec: str | None = None, **options) -> ModelAdapter:
    """Load a model by spec.

    - ``None`` or ``"digits"``: the embedded default (a small ReLU CNN on scikit-learn's digits);
    - ``"gpt2"``, ``"gpt2-medium"``, …: GPT-2 through TransformerLens;
    - ``"inceptionv1"``: InceptionV1 in the Lucid layout;
    - ``"torchvision:NAME"``: a torchvision model (optional extra);
    - ``"FILE.py:FUNCTION"``: any ``nn.Module`` returned by ``FUNCTION()`` in ``FILE.py``.

    ``options`` are the keyword-only parameters of the adapter's ``load``; any other is an error.
    """
    spec = spec or "digits"
    cls = adapter_class(spec)
    params = inspect.signature(cls.load).parameters.items()
    accepted = [name for name, p in params if p.kind == p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:  # a typo in an option is an error, never silently ignored
        raise ValueError(
            f"model {spec!r} takes no option {', '.join(map(repr, unknown))}; its options: {', '.join(accepted)}"
        )
    return cls.load(spec, **options)


def adapter_class(spec: str) -> type[ModelAdapter]:
    """The ``ModelAdapter`` subclass whose ``spec_pattern`` matches ``spec`` in full."""
    found = _claiming(spec)
    if not found:
        names = [m.name for m in pkgutil.iter_modules(__path__)]
        first = [n for n in names if spec.startswith(n)]
        for group in (first, [n for n in names if n not in first]):
            for name in group:
                importlib.import_module(f"{__name__}.{name}")
            found = _claiming(spec)
            if found:
                break
    if not found:
        forms = sorted((cls.spec_help or cls.spec_pattern for cls in ModelAdapter.registry.values()), key=str.lower)
        listed = " or ".join(filter(None, [", ".join(forms[:-1]), forms[-1]]))
        raise ValueError(f"unknown model {spec!r}; use {listed}")
    if len(found) > 1:
        raise ValueError(f"model {spec!r} matches several adapters: {', '.join(c.__name__ for c in found)}")
    return found[0]


def _claiming(spec: str) -> list[type[ModelAdapter]]:
    return [cls for cls in ModelAdapter.registry.values() if cls.matches(spec)]


__all__ = ["ModelAdapter", "adapter_class", "load_model"]
