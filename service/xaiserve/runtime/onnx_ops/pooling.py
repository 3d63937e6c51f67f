"""Pooling and reductions: ``nn.MaxPool*``/``nn.AvgPool*``/adaptive pools, else :class:`Reduce`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import onnx
import torch
import torch.fx
from torch import nn

from xaiserve.runtime.onnx_ops.nodes import (
    as_runtime,
    attributes,
    axes_of,
    fail,
    spatial_pads,
)
from xaiserve.runtime.onnx_ops.padding import pre_pad
from xaiserve.runtime.onnx_ops.values import BuildContext, Builder, Value

_REDUCE = {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "amax", "ReduceMin": "amin"}


class Reduce(nn.Module):
    """``mean``/``sum``/``amax``/``amin`` over some dims."""

    def __init__(self, op: str, dims: Sequence[int], keepdim: bool) -> None:
        super().__init__()
        self.op = op
        self.dims = tuple(int(d) for d in dims)
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reduce ``x``."""
        fn: Callable[..., torch.Tensor] = getattr(torch, self.op)
        return fn(x, dim=self.dims, keepdim=self.keepdim)

    def extra_repr(self) -> str:
        """Show the reduction."""
        return f"op={self.op}, dims={self.dims}, keepdim={self.keepdim}"


_MAX_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}


_AVG_POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


_ADAPTIVE_AVG = {3: nn.AdaptiveAvgPool1d, 4: nn.AdaptiveAvgPool2d, 5: nn.AdaptiveAvgPool3d}


_ADAPTIVE_MAX = {3: nn.AdaptiveMaxPool1d, 4: nn.AdaptiveMaxPool2d, 5: nn.AdaptiveMaxPool3d}


def build_pool(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
    """``MaxPool``/``AveragePool`` -> ``nn.MaxPool*``/``nn.AvgPool*``."""
    x = as_runtime(node, inputs[0])
    if len([o for o in node.output if o]) > 1:
        raise fail(node, "the Indices output")
    attrs = attributes(node)
    kernel = [int(k) for k in attrs["kernel_shape"]]
    dims = len(kernel)
    if dims not in _MAX_POOL:
        raise fail(node, f"{dims}-D pooling")
    strides = [int(s) for s in attrs.get("strides", [1] * dims)]
    dilations = [int(d) for d in attrs.get("dilations", [1] * dims)]
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    is_max = node.op_type == "MaxPool"
    include_pad = bool(attrs.get("count_include_pad", 0))
    begin, end = spatial_pads(node, dims)
    fits = begin == end and all(2 * p <= k for p, k in zip(begin, kernel, strict=True))
    explicit = attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or not fits
    if explicit and not is_max and not include_pad and any(begin + end):
        raise fail(node, "asymmetric or SAME padding with count_include_pad=0")
    if explicit:
        x, padding = pre_pad(ctx, node, x, kernel, strides, dilations, -math.inf if is_max else 0.0)
    else:
        padding = [0] * dims if attrs.get("auto_pad") == "VALID" else begin
    if is_max:
        if int(attrs.get("storage_order", 0)):
            raise fail(node, "storage_order=1")
        module: nn.Module = _MAX_POOL[dims](
            tuple(kernel), tuple(strides), tuple(padding), tuple(dilations), ceil_mode=ceil_mode
        )
    else:
        if any(d != 1 for d in dilations):
            raise fail(node, "dilated average pooling")
        module = _AVG_POOL[dims](
            tuple(kernel), tuple(strides), tuple(padding), ceil_mode, include_pad
        )
    return [ctx.emit_module(node, module, x)]


def build_global_pool(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``GlobalAveragePool``/``GlobalMaxPool`` -> ``nn.AdaptiveAvgPool*(1)``/``AdaptiveMaxPool``."""
    x = as_runtime(node, inputs[0])
    rank = ctx.rank(x)
    table = _ADAPTIVE_AVG if node.op_type == "GlobalAveragePool" else _ADAPTIVE_MAX
    if rank not in table:
        raise fail(node, f"input of rank {rank}")
    return [ctx.emit_module(node, table[rank](1), x)]


def build_reduce(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``ReduceMean`` over H,W with keepdims -> ``nn.AdaptiveAvgPool2d(1)``; others -> Reduce."""
    x = as_runtime(node, inputs[0])
    attrs = attributes(node)
    keepdims = bool(attrs.get("keepdims", 1))
    axes = axes_of(node, inputs, 1)
    rank = ctx.rank(x)
    if not axes:
        if int(attrs.get("noop_with_empty_axes", 0)):
            return [ctx.emit_module(node, nn.Identity(), x)]
        axes = list(range(rank))
    dims = sorted(a % rank for a in axes)
    if node.op_type == "ReduceMean" and rank == 4 and dims == [2, 3]:
        pooled = ctx.emit_module(node, nn.AdaptiveAvgPool2d(1), x)
        return [pooled if keepdims else ctx.emit_module(node, nn.Flatten(1), pooled)]
    return [ctx.emit_module(node, Reduce(_REDUCE[node.op_type], dims, keepdims), x)]


BUILDERS: dict[str, Builder] = {
    "MaxPool": build_pool,
    "AveragePool": build_pool,
    "GlobalAveragePool": build_global_pool,
    "GlobalMaxPool": build_global_pool,
    "ReduceMean": build_reduce,
    "ReduceSum": build_reduce,
    "ReduceMax": build_reduce,
    "ReduceMin": build_reduce,
}
