"""Elementwise arithmetic: ``Add``/``Sub``/``Mul``/``Div``/``Pow`` and n-ary ``Sum``.

A residual ``Add`` of two runtime tensors becomes ``torch.stack`` followed by :class:`Sum`, a
subclass of ``zennit.layer.Sum``, exactly the form zennit's own canonizers produce, so LRP
distributes relevance over the summands. ``x + c`` after a bias-free ``Linear``/``Conv`` is
folded into its bias.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
import torch
import torch.fx
import zennit.layer
from torch import nn

from xaiserve.runtime.onnx_ops.nodes import (
    as_constant,
    as_runtime,
    as_tensor,
    fail,
)
from xaiserve.runtime.onnx_ops.values import BuildContext, Builder, Value


class Sum(zennit.layer.Sum):
    """Sum of operands stacked along the last dim (residual ``Add``), as in ``zennit.layer.Sum``.

    zennit's composites map their ``Norm`` rule onto ``zennit.layer.Sum`` by type, so LRP
    distributes relevance over the summands.
    """

    def __init__(self) -> None:
        super().__init__(dim=-1)


def stack_operands(*tensors: torch.Tensor) -> torch.Tensor:
    """Broadcast ``tensors`` against each other and stack them along a new last dim."""
    return torch.stack(torch.broadcast_tensors(*tensors), dim=-1)


class Mul(nn.Module):
    """Elementwise product of two runtime tensors (e.g. squeeze-excitation gating)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Return ``a * b`` with broadcasting."""
        return a * b


class Sub(nn.Module):
    """Elementwise difference of two runtime tensors."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Return ``a - b`` with broadcasting."""
        return a - b


class Div(nn.Module):
    """Elementwise quotient of two runtime tensors."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Return ``a / b`` with broadcasting."""
        return a / b


_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.div,
    "pow": torch.pow,
}


class ConstantBinary(nn.Module):
    """Elementwise ``x <op> constant`` (or ``constant <op> x``) with the constant as a buffer."""

    constant: torch.Tensor

    def __init__(self, op: str, constant: torch.Tensor, constant_first: bool = False) -> None:
        super().__init__()
        self.op = op
        self.constant_first = constant_first
        self.register_buffer("constant", constant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the operation."""
        fn = _BINARY[self.op]
        return fn(self.constant, x) if self.constant_first else fn(x, self.constant)

    def extra_repr(self) -> str:
        """Show the operation and the constant's shape."""
        return f"op={self.op}, shape={tuple(self.constant.shape)}, first={self.constant_first}"


def _fold_bias(ctx: BuildContext, x_name: str, x: torch.fx.Node, c: np.ndarray) -> bool:
    """Fold ``x + c`` into the bias of the bias-free Linear/Conv producing ``x``, if possible.

    Only when ``x`` (ONNX value ``x_name``) feeds nothing but this addition.
    """
    layer = ctx.producer(x)
    if not ctx.sole_consumer(x_name) or getattr(layer, "bias", 0) is not None:
        return False
    if isinstance(layer, nn.Linear):
        channels = layer.out_features
        fits = c.size == channels and c.shape[-1] == channels
    elif isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        channels = layer.out_channels
        spatial = len(layer.kernel_size)
        fits = c.size == channels and c.ndim >= spatial + 1 and c.shape[-spatial - 1] == channels
    else:
        return False
    if not fits or c.dtype != np.float32:
        return False
    layer.bias = nn.Parameter(as_tensor(c.reshape(-1)))
    return True


def _stack_sum(
    ctx: BuildContext, node: onnx.NodeProto, operands: Sequence[torch.fx.Node]
) -> torch.fx.Node:
    stacked = ctx.emit_function(stack_operands, *operands)
    return ctx.emit_module(node, Sum(), stacked)


_TWO_RUNTIME: dict[str, Callable[[], nn.Module]] = {"Mul": Mul, "Sub": Sub, "Div": Div}


def build_binary(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``Add``/``Sub``/``Mul``/``Div``/``Pow`` of runtime tensors and constants."""
    a, b = inputs[0], inputs[1]
    op = node.op_type
    if isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node):
        if op == "Add":
            return [_stack_sum(ctx, node, [a, b])]
        if op not in _TWO_RUNTIME:
            raise fail(node, "both operands at run time")
        return [ctx.emit_module(node, _TWO_RUNTIME[op](), a, b)]
    constant_first = not isinstance(a, torch.fx.Node)
    x = as_runtime(node, b if constant_first else a)
    c = as_constant(node, a if constant_first else b, "constant operand")
    x_name = node.input[1] if constant_first else node.input[0]
    if op == "Add" and _fold_bias(ctx, x_name, x, c):
        return [x]
    module = ConstantBinary(op.lower(), as_tensor(c), constant_first)
    return [ctx.emit_module(node, module, x)]


def build_sum(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
    """n-ary ``Sum`` of runtime tensors -> stack + :class:`Sum`."""
    operands = [as_runtime(node, v) for v in inputs]
    if len(operands) == 1:
        return [ctx.emit_module(node, nn.Identity(), operands[0])]
    return [_stack_sum(ctx, node, operands)]


BUILDERS: dict[str, Builder] = {
    "Add": build_binary,
    "Sub": build_binary,
    "Mul": build_binary,
    "Div": build_binary,
    "Pow": build_binary,
    "Sum": build_sum,
}
