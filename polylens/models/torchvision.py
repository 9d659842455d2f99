"""torchvision classifiers (``torchvision:NAME``, e.g. ``torchvision:googlenet``), an optional extra.

torchvision is imported only here and only when such a model is asked for. When it cannot be
imported (not installed, or — as on CPU-only machines with PyPI's CUDA wheel — its C++ operators
fail to register: ``operator torchvision::nms does not exist``) ``load`` raises a one-line
``ValueError`` saying why; ``import polylens`` never touches torchvision.

Weights: ``weights=FILE`` (a safetensors or torch state dict, read with ``weights_only=True``),
``random_weights=True``, or the default: torchvision's pretrained weights (its ``weights="DEFAULT"``),
which needs download.pytorch.org or torch's hub cache.

Activation layers: the module feeding each ReLU (a Conv2d, BatchNorm2d or Linear), found by
tracing one forward pass (``polylens.models.custom.traced_activations``) plus the ``bn`` of each
``BasicConv2d`` (GoogLeNet, Inception3: functional ReLU), mapped to ``"relu"``. ReLUs are made
out-of-place so captured pre-activations stay intact. Inputs: ImageNet-normalised
``[n, 3, 224, 224]`` images (``polylens.models.images`` with ``normalize=True``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polylens.models import images
from polylens.models.base import ModelAdapter, load_weights
from polylens.models.custom import traced_activations


def import_torchvision():
    """Import torchvision, or raise a one-line ValueError saying why it is not usable here."""
    try:
        import torchvision  # noqa: F401
        import torchvision.models  # noqa: F401
    except ImportError as err:
        raise ValueError(
            f"torchvision is not usable here: it is not installed or fails to import ({err}); "
            "install a torchvision build matching your torch (pip install torchvision) or use inceptionv1"
        ) from None
    except RuntimeError as err:  # CUDA wheel against a CPU torch: "operator torchvision::nms does not exist"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"torchvision is not usable here: its compiled operators do not match the installed torch "
            f"({first}); install the torchvision build for this torch, or use inceptionv1"
        ) from None
    return torchvision


def torchvision_available() -> tuple[bool, str]:
    """(True, "") when torchvision imports cleanly, else (False, the reason)."""
    try:
        import_torchvision()
    except ValueError as err:
        return False, str(err)
    return True, ""


def _out_of_place(model: nn.Module) -> dict[str, str]:
    """Make every ReLU out-of-place and return the functional-ReLU sites of Inception-style blocks.

    torchvision applies ReLUs in place (``nn.ReLU(inplace=True)``, and ``F.relu(x, inplace=True)``
    inside GoogLeNet's / Inception3's ``BasicConv2d``), which would overwrite the pre-activation
    that ``capture`` just recorded. ``BasicConv2d`` instances get an out-of-place forward, and
    their ``bn`` output is the pre-activation of that ReLU.
    """
    import types

    import torch.nn.functional as F

    def basic_forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))

    sites = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
        elif type(module).__name__ == "BasicConv2d" and hasattr(module, "bn") and hasattr(module, "conv"):
            module.forward = types.MethodType(basic_forward, module)
            sites[f"{name}.bn"] = "relu"
    return sites


class TorchvisionAdapter(ModelAdapter):
    """A torchvision classifier: ImageNet-normalised images ``[n, 3, 224, 224]``, logits ``[n, 1000]``."""

    spec_pattern = r"torchvision:.*"
    spec_help = "torchvision:NAME"

    def __init__(self, model: nn.Module, name: str, facts: dict, *, device: str = "cpu"):
        example = torch.zeros(1, 3, 224, 224, device=device)
        functional = _out_of_place(model)
        traced, order = traced_activations(model, example)
        found = {**traced, **functional}
        super().__init__(
            name,
            model,
            {n: found[n] for n in order if n in found},  # forward order
            [n for n in order if n],  # every module that ran, in forward order
            provenance={"model": name, **facts},
        )
        self.device = device

    @classmethod
    def load(
        cls, spec: str, *, weights=None, random_weights: bool = False, device: str = "cpu", seed: int = 0
    ) -> TorchvisionAdapter:
        """``torchvision:NAME``: pretrained, from ``weights`` FILE, or random."""
        tv = import_torchvision()
        _, _, arch = spec.partition(":")
        available = tv.models.list_models(module=tv.models)
        if arch not in available:
            raise ValueError(f"unknown torchvision model {arch!r}; available: {', '.join(sorted(available)[:30])}, ...")
        torch.manual_seed(seed)
        if weights is not None or random_weights:
            extra = {"aux_logits": False, "init_weights": True} if arch in ("googlenet", "inception_v3") else {}
            model = tv.models.get_model(arch, weights=None, **extra)
            if weights is not None:
                load_weights(model, weights, what=f"torchvision {arch}")
                name, facts = f"torchvision:{arch}", {"weights": str(weights)}
            else:
                name, facts = f"torchvision:{arch} (random weights)", {"weights": "random", "seed": seed}
        else:
            model, name, facts = _pretrained(tv, arch), f"torchvision:{arch}", {"weights": "torchvision DEFAULT"}
        facts = {"torchvision": tv.__version__, **facts}
        return cls(model.to(device).eval(), name, facts, device=device)

    def prepare(self, raw) -> Tensor:
        return images.image_input(raw, normalize=True, device=self.device)

    def default_inputs(self, n: int) -> Tensor:
        return images.sample_images(n, normalize=True).to(self.device)

    def describe_output(self, out: Tensor) -> list[str]:
        return [f"class {i}" for i in out.reshape(out.shape[0], -1).argmax(1).tolist()]


def _pretrained(tv, arch: str) -> nn.Module:
    try:
        return tv.models.get_model(arch, weights="DEFAULT")
    except Exception as err:  # download errors come as URLError, HTTPError, OSError, RuntimeError
        raise ValueError(
            f"torchvision:{arch}: pretrained weights unavailable ({type(err).__name__}); "
            "use weights=FILE or random_weights=True"
        ) from None
