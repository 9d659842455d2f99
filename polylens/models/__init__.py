"""Model adapters: every model polylens analyses sits behind ``ModelAdapter``.

``load_model(spec)`` picks the adapter by name; adding a model touches one file here
plus one line in ``_ADAPTERS``. Adapter modules are imported lazily so that a missing
optional extra (TransformerLens, torchvision) never breaks an unrelated command.
"""

from __future__ import annotations

import importlib
import inspect

from polylens.models.base import ModelAdapter

# spec prefix -> "module:function"; the function takes (spec, **options) and returns a ModelAdapter.
_ADAPTERS = {
    "digits": "polylens.models.digits:load",
    "gpt2": "polylens.models.gpt2:load",
    "inceptionv1": "polylens.models.inception:load",
    "torchvision": "polylens.models.torchvision:load",
}


def load_model(spec: str | None = None, **options) -> ModelAdapter:
    """Load a model by spec.

    - ``None`` or ``"digits"``: the embedded default (a small ReLU CNN on scikit-learn's digits);
    - ``"gpt2"``, ``"gpt2-medium"``, …: GPT-2 through TransformerLens;
    - ``"inceptionv1"``: InceptionV1 in the Lucid layout;
    - ``"torchvision:NAME"``: a torchvision model (optional extra);
    - ``"FILE.py:FUNCTION"``: any ``nn.Module`` returned by ``FUNCTION()`` in ``FILE.py``.
    """
    spec = spec or "digits"
    if spec.endswith(".py") or ".py:" in spec:
        target = "polylens.models.custom:load"
    else:
        key = spec.split(":", 1)[0]
        key = "gpt2" if key.startswith("gpt2") else key
        if key not in _ADAPTERS:
            raise ValueError(
                f"unknown model {spec!r}; use digits, gpt2[-medium|-large|-xl], inceptionv1, torchvision:NAME or FILE.py:FUNCTION"
            )
        target = _ADAPTERS[key]
    module_name, fn = target.split(":")
    loader = getattr(importlib.import_module(module_name), fn)
    accepted = [name for name, p in inspect.signature(loader).parameters.items() if p.kind == p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:  # a typo in an option is an error, never silently ignored
        raise ValueError(
            f"model {spec!r} takes no option {', '.join(map(repr, unknown))}; its options: {', '.join(accepted)}"
        )
    return loader(spec, **options)


__all__ = ["ModelAdapter", "load_model"]
