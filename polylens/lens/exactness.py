"""Certify that a network is piecewise-linear between two of its layers, so that exact boundary
counting applies there.

One forward pass watches everything that runs after the path's layer up to the last counted
layer: every leaf module (a module without children) must be of a piecewise-linear kind —
linear, convolution, ReLU and its piecewise-linear relatives, max- and average-pooling, padding,
flatten, identity, and batch-norm or dropout in eval mode — or of a kind the adapter declares
piecewise-linear (``ModelAdapter.piecewise_linear_modules``); and no smooth torch function
(tanh, sigmoid, softmax, GELU, SiLU, layer/group/local-response norm, exp, log, sqrt, pow, …) may
run outside such a module, in a container's own ``forward``. The first offender is named.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

PIECEWISE_LINEAR_MODULES: tuple[type, ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.ReLU,
    nn.LeakyReLU,
    nn.ReLU6,
    nn.PReLU,
    nn.Hardtanh,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.ZeroPad2d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ConstantPad3d,
    nn.ReflectionPad1d,
    nn.ReflectionPad2d,
    nn.ReplicationPad1d,
    nn.ReplicationPad2d,
    nn.Embedding,
)
EVAL_ONLY: tuple[type, ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
)
SMOOTH_FUNCTIONS = frozenset(
    {
        "tanh",
        "tanh_",
        "sigmoid",
        "sigmoid_",
        "exp",
        "exp_",
        "expm1",
        "log",
        "log_",
        "log1p",
        "log2",
        "log10",
        "sqrt",
        "sqrt_",
        "rsqrt",
        "rsqrt_",
        "erf",
        "erfc",
        "softmax",
        "log_softmax",
        "softmin",
        "gelu",
        "silu",
        "mish",
        "softplus",
        "elu",
        "selu",
        "celu",
        "logsigmoid",
        "hardswish",
        "hardsigmoid",
        "layer_norm",
        "group_norm",
        "instance_norm",
        "local_response_norm",
        "rms_norm",
        "normalize",
        "norm",
        "pow",
        "pow_",
        "__pow__",
        "__rpow__",
        "reciprocal",
        "sin",
        "cos",
        "atan",
        "glu",
        "scaled_dot_product_attention",
        "cosine_similarity",
    }
)


class _Watch(TorchFunctionMode):
    def __init__(self, state: dict):
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        st = self.state
        if st["active"] and st["depth"] == 0 and not st["offender"]:
            name = getattr(func, "__name__", str(func))
            if name in SMOOTH_FUNCTIONS:
                where = st["stack"][-1] if st["stack"] else None
                st["offender"] = f"{name}() in the forward of " + (
                    f"module {where[0]!r} ({where[1]})" if where else "the model"
                )
        return func(*args, **(kwargs or {}))


def _module_offence(module: nn.Module, name: str, extra: tuple[type, ...]) -> str | None:
    if isinstance(module, PIECEWISE_LINEAR_MODULES + extra):
        return None
    if isinstance(module, EVAL_ONLY):
        return (
            None
            if not module.training
            else f"module {name!r} ({type(module).__name__}) in training mode (switch the model to eval())"
        )
    return f"module {name!r} ({type(module).__name__})"


def first_smooth_step(
    model: nn.Module, inputs, after: str | None, until: str, *, declared: tuple[type, ...] = ()
) -> str | None:
    """What first makes ``model`` not piecewise-linear between the output of module ``after``
    (None: the input) and the output of module ``until``; None when nothing does."""
    modules = dict(model.named_modules())
    state = {"active": after is None, "depth": 0, "offender": None, "done": False, "stack": []}
    handles = []

    def pre(name, module):
        def hook(mod, args):
            if state["active"] and not state["done"]:
                if state["depth"] == 0 and not state["offender"]:
                    state["offender"] = _module_offence(mod, name, declared)
                state["depth"] += 1

        return hook

    def enter(name, module):
        def hook(mod, args):
            state["stack"].append((name, type(mod).__name__))

        return hook

    def leave(name, module):
        def hook(mod, args, out):
            state["stack"].pop()

        return hook

    def post(name, module, is_leaf):
        def hook(mod, args, out):
            if is_leaf and state["active"] and state["depth"] > 0:
                state["depth"] -= 1
            if name == until and state["active"]:
                state["done"], state["active"] = True, False
            if name == after:
                state["active"], state["depth"] = True, 0

        return hook

    try:
        for name, module in modules.items():
            is_leaf = not any(True for _ in module.children())
            if not name:
                continue
            if is_leaf:
                handles.append(module.register_forward_pre_hook(pre(name, module)))
            else:
                handles.append(module.register_forward_pre_hook(enter(name, module)))
                handles.append(module.register_forward_hook(leave(name, module)))
            if is_leaf or name in (after, until):
                handles.append(module.register_forward_hook(post(name, module, is_leaf)))
        batch = inputs if isinstance(inputs, tuple) else (inputs,)
        with torch.no_grad(), _Watch(state):
            model(*batch)
    finally:
        for h in handles:
            h.remove()
    return state["offender"]
