"""Convolution, linear layers and batch normalization as standard ``torch.nn`` layers.

``Conv`` becomes ``nn.Conv{1,2,3}d``, ``Gemm`` and ``MatMul`` with a constant weight become
``nn.Linear`` and ``BatchNormalization`` becomes ``nn.BatchNorm{1,2,3}d``, so that rule-based
attribution (zennit, captum) recognises them by type.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
import torch.fx
from torch import nn

from xaiserve.runtime.onnx_ops.nodes import (
    as_constant,
    as_runtime,
    as_tensor,
    attributes,
    fail,
    optional_constant,
)
from xaiserve.runtime.onnx_ops.padding import pre_pad
from xaiserve.runtime.onnx_ops.values import BuildContext, Builder, Value


class MatMul(nn.Module):
    """Matrix product of two runtime tensors."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Return ``a @ b``."""
        return torch.matmul(a, b)


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def build_conv(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
    """``Conv`` -> ``nn.Conv{1,2,3}d`` (asymmetric or SAME pads as a separate pad module)."""
    x = as_runtime(node, inputs[0])
    weight = as_constant(node, inputs[1], "weight")
    bias = optional_constant(node, inputs, 2, "bias")
    dims = weight.ndim - 2
    if dims not in _CONV:
        raise fail(node, f"{dims}-D convolution")
    attrs = attributes(node)
    kernel = [int(k) for k in attrs.get("kernel_shape", weight.shape[2:])]
    strides = [int(s) for s in attrs.get("strides", [1] * dims)]
    dilations = [int(d) for d in attrs.get("dilations", [1] * dims)]
    groups = int(attrs.get("group", 1))
    x, padding = pre_pad(ctx, node, x, kernel, strides, dilations, 0.0)
    conv_type: Any = _CONV[dims]  # the per-dim classes take tuples of matching length
    conv = conv_type(
        in_channels=weight.shape[1] * groups,
        out_channels=weight.shape[0],
        kernel_size=tuple(kernel),
        stride=tuple(strides),
        padding=tuple(padding),
        dilation=tuple(dilations),
        groups=groups,
        bias=bias is not None,
        device="meta",  # parameters are replaced below; skips the costly random init
    )
    conv.weight = nn.Parameter(as_tensor(weight))
    if bias is not None:
        conv.bias = nn.Parameter(as_tensor(bias.reshape(-1)))
    return [ctx.emit_module(node, conv, x)]


def _linear(weight: np.ndarray, bias: np.ndarray | None) -> nn.Linear:
    """``nn.Linear`` with ``weight`` of shape (out, in)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(as_tensor(weight))
    if bias is not None:
        linear.bias = nn.Parameter(as_tensor(np.broadcast_to(bias, (weight.shape[0],))))
    return linear


def build_gemm(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
    """``Gemm`` with constant B (and C) -> ``nn.Linear`` (alpha/beta folded in)."""
    x = as_runtime(node, inputs[0])
    b = as_constant(node, inputs[1], "B")
    c = optional_constant(node, inputs, 2, "C")
    attrs = attributes(node)
    if int(attrs.get("transA", 0)):
        raise fail(node, "transA=1")
    weight = b if int(attrs.get("transB", 0)) else b.T
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if alpha != 1.0:
        weight = (weight * alpha).astype(b.dtype)
    if c is not None:
        if c.size not in (1, weight.shape[0]) or (c.ndim == 2 and c.shape[0] != 1):
            raise fail(node, f"bias C of shape {c.shape} is not per output feature")
        c = (c.reshape(-1) * beta).astype(c.dtype)
    return [ctx.emit_module(node, _linear(weight, c), x)]


def build_matmul(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``MatMul`` with a constant 2-D right operand -> bias-free ``nn.Linear``.

    A following ``Add`` of a per-feature constant is folded into its bias (see
    :func:`~.arithmetic.build_binary`).
    """
    a, b = inputs[0], inputs[1]
    if isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node):
        return [ctx.emit_module(node, MatMul(), a, b)]
    x = as_runtime(node, a, "left operand")
    weight = as_constant(node, b, "right operand")
    if weight.ndim != 2:
        raise fail(node, f"constant right operand of rank {weight.ndim}")
    return [ctx.emit_module(node, _linear(weight.T, None), x)]


_BATCH_NORM = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def build_batch_norm(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``BatchNormalization`` (inference) -> ``nn.BatchNorm{1,2,3}d`` in eval mode."""
    x = as_runtime(node, inputs[0])
    scale, bias, mean, var = (
        as_constant(node, inputs[i], name)
        for i, name in enumerate(("scale", "bias", "mean", "var"), start=1)
    )
    attrs = attributes(node)
    if int(attrs.get("training_mode", 0)) or len([o for o in node.output if o]) > 1:
        raise fail(node, "training mode")
    rank = ctx.rank(x)
    if rank not in _BATCH_NORM:
        raise fail(node, f"input of rank {rank}")
    bn = _BATCH_NORM[rank](scale.shape[0], eps=float(attrs.get("epsilon", 1e-5)))
    bn.weight = nn.Parameter(as_tensor(scale))
    bn.bias = nn.Parameter(as_tensor(bias))
    bn.running_mean = as_tensor(mean)
    bn.running_var = as_tensor(var)
    bn.eval()
    return [ctx.emit_module(node, bn, x)]


BUILDERS: dict[str, Builder] = {
    "Conv": build_conv,
    "Gemm": build_gemm,
    "MatMul": build_matmul,
    "BatchNormalization": build_batch_norm,
}
