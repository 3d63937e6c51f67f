"""Activations: standard ``torch.nn`` layers, plus :class:`Unary` for parameter-free math."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import onnx
import torch
import torch.fx
from torch import nn

from xaiserve.runtime.onnx_ops.nodes import (
    as_constant,
    as_runtime,
    as_scalar,
    as_tensor,
    attributes,
    fail,
    optional_constant,
)
from xaiserve.runtime.onnx_ops.values import BuildContext, Builder, Value


class Unary(nn.Module):
    """An elementwise function without parameters (``torch.erf``, ``torch.exp``, ...)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.fn: Callable[[torch.Tensor], torch.Tensor] = getattr(torch, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the function."""
        return self.fn(x)

    def extra_repr(self) -> str:
        """Show the function name."""
        return self.name


class HardSigmoid(nn.Module):
    """``clamp(alpha * x + beta, 0, 1)`` for alpha/beta other than ``nn.Hardsigmoid``'s."""

    def __init__(self, alpha: float, beta: float) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the clamped affine map."""
        return torch.clamp(x * self.alpha + self.beta, 0.0, 1.0)


def simple(factory: Callable[[dict[str, Any]], nn.Module]) -> Builder:
    """Builder for an op with one runtime input whose module depends only on attributes."""

    def build(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
        x = as_runtime(node, inputs[0])
        return [ctx.emit_module(node, factory(attributes(node)), x)]

    return build


def _hard_sigmoid(attrs: dict[str, Any]) -> nn.Module:
    alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and math.isclose(beta, 0.5):
        return nn.Hardsigmoid()
    return HardSigmoid(alpha, beta)


def build_clip(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
    """``Clip`` -> ``nn.ReLU``, ``nn.ReLU6`` or ``nn.Hardtanh``."""
    x = as_runtime(node, inputs[0])
    attrs = attributes(node)
    low = optional_constant(node, inputs, 1, "min")
    high = optional_constant(node, inputs, 2, "max")
    lo = as_scalar(low, float(attrs.get("min", -math.inf)))
    hi = as_scalar(high, float(attrs.get("max", math.inf)))
    module: nn.Module
    if lo == 0.0 and hi == 6.0:
        module = nn.ReLU6()
    elif lo == 0.0 and hi >= 3.0e38:
        module = nn.ReLU()
    else:
        module = nn.Hardtanh(lo, hi)
    return [ctx.emit_module(node, module, x)]


def build_softmax(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``Softmax``/``LogSoftmax`` -> ``nn.Softmax``/``nn.LogSoftmax``."""
    x = as_runtime(node, inputs[0])
    attrs = attributes(node)
    axis = int(attrs.get("axis", -1 if ctx.opset >= 13 else 1))
    if ctx.opset < 13:  # old semantics flatten dims from axis on; equal when axis is the last
        rank = ctx.rank(x)
        if axis % rank != rank - 1:
            raise fail(node, f"opset-{ctx.opset} softmax over flattened dims from axis {axis}")
    module = nn.Softmax(dim=axis) if node.op_type == "Softmax" else nn.LogSoftmax(dim=axis)
    return [ctx.emit_module(node, module, x)]


def build_prelu(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
    """``PRelu`` with a per-channel (or single) constant slope -> ``nn.PReLU``."""
    x = as_runtime(node, inputs[0])
    slope = as_constant(node, inputs[1], "slope")
    squeezed = slope.reshape(-1)
    rank = ctx.rank(x)
    per_channel = slope.ndim <= rank - 1 and all(s == 1 for s in slope.shape[1:])
    if squeezed.size != 1 and not (per_channel and slope.ndim == rank - 1):
        raise fail(node, f"slope of shape {slope.shape} is not per channel")
    prelu = nn.PReLU(num_parameters=squeezed.size)
    prelu.weight = nn.Parameter(as_tensor(squeezed))
    return [ctx.emit_module(node, prelu, x)]


_UNARY_TORCH = {
    "Erf": "erf",
    "Exp": "exp",
    "Log": "log",
    "Sqrt": "sqrt",
    "Neg": "neg",
    "Abs": "abs",
    "Reciprocal": "reciprocal",
    "Floor": "floor",
    "Ceil": "ceil",
}


def _unary_factory(name: str) -> Callable[[dict[str, Any]], nn.Module]:
    return lambda attrs: Unary(name)


BUILDERS: dict[str, Builder] = {
    "Relu": simple(lambda a: nn.ReLU()),
    "Sigmoid": simple(lambda a: nn.Sigmoid()),
    "Tanh": simple(lambda a: nn.Tanh()),
    "HardSwish": simple(lambda a: nn.Hardswish()),
    "HardSigmoid": simple(_hard_sigmoid),
    "LeakyRelu": simple(lambda a: nn.LeakyReLU(float(a.get("alpha", 0.01)))),
    "Elu": simple(lambda a: nn.ELU(float(a.get("alpha", 1.0)))),
    "Selu": simple(lambda a: nn.SELU()),
    "Softplus": simple(lambda a: nn.Softplus()),
    "Gelu": simple(lambda a: nn.GELU(approximate=a.get("approximate", "none"))),
    "Clip": build_clip,
    "PRelu": build_prelu,
    "Softmax": build_softmax,
    "LogSoftmax": build_softmax,
    **{op: simple(_unary_factory(fn)) for op, fn in _UNARY_TORCH.items()},
}
