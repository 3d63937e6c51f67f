"""Padding: ONNX ``Pad`` and the explicit/SAME padding that convolutions and pools need."""

from __future__ import annotations

import math
from collections.abc import Sequence

import onnx
import torch
import torch.fx
from torch import nn
from torch.nn import functional as F

from xaiserve.runtime.onnx_ops.nodes import (
    as_constant,
    as_runtime,
    as_scalar,
    attributes,
    fail,
    optional_constant,
    spatial_pads,
    torch_pads,
)
from xaiserve.runtime.onnx_ops.values import BuildContext, Builder, Value


class Pad(nn.Module):
    """``F.pad`` with torch-ordered pads (last dim first), a mode and a fill value."""

    def __init__(self, pads: Sequence[int], mode: str = "constant", value: float = 0.0) -> None:
        super().__init__()
        self.pads = tuple(int(p) for p in pads)
        self.mode = mode
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad ``x``."""
        if self.mode == "constant":
            return F.pad(x, self.pads, mode="constant", value=self.value)
        return F.pad(x, self.pads, mode=self.mode)

    def extra_repr(self) -> str:
        """Show the pads."""
        return f"pads={self.pads}, mode={self.mode}, value={self.value}"


class SamePad(nn.Module):
    """Runtime padding for ``auto_pad=SAME_UPPER/SAME_LOWER`` (output size = ceil(in/stride))."""

    def __init__(
        self,
        kernel: Sequence[int],
        strides: Sequence[int],
        dilations: Sequence[int],
        lower: bool,
        value: float = 0.0,
    ) -> None:
        super().__init__()
        self.kernel = tuple(kernel)
        self.strides = tuple(strides)
        self.dilations = tuple(dilations)
        self.lower = lower
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad the spatial dims of ``x``."""
        flat: list[int] = []
        spatial = x.shape[2:]
        for size, k, s, d in zip(spatial, self.kernel, self.strides, self.dilations, strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            flat = [big, small, *flat] if self.lower else [small, big, *flat]
        return F.pad(x, flat, mode="constant", value=self.value)


def pre_pad(
    ctx: BuildContext,
    node: onnx.NodeProto,
    x: torch.fx.Node,
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    value: float,
) -> tuple[torch.fx.Node, list[int]]:
    """Handle ``auto_pad``/``pads``: return the (maybe padded) input and symmetric layer pads."""
    dims = len(kernel)
    attrs = attributes(node)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        same = SamePad(kernel, strides, dilations, auto_pad == "SAME_LOWER", value)
        return ctx.emit_module(node, same, x), [0] * dims
    if auto_pad == "VALID":
        return x, [0] * dims
    begin, end = spatial_pads(node, dims)
    if begin == end:
        return x, begin
    pad = Pad(torch_pads(begin, end), "constant", value)
    return ctx.emit_module(node, pad, x), [0] * dims


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def build_pad(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
    """``Pad`` with constant pads -> :class:`Pad`."""
    x = as_runtime(node, inputs[0])
    attrs = attributes(node)
    mode = attrs.get("mode", "constant")
    if mode not in _PAD_MODES:
        raise fail(node, f"mode {mode!r}")
    if "pads" in attrs:  # opset < 11
        pads = [int(p) for p in attrs["pads"]]
        value = float(attrs.get("value", 0.0))
        axes: list[int] | None = None
    else:
        pads = as_constant(node, inputs[1], "pads").astype(int).tolist()
        value = as_scalar(optional_constant(node, inputs, 2, "constant_value"), 0.0)
        axes_c = optional_constant(node, inputs, 3, "axes")
        axes = None if axes_c is None else axes_c.astype(int).tolist()
    rank = ctx.rank(x) if axes is not None else len(pads) // 2
    count = len(pads) // 2
    begin, end = [0] * rank, [0] * rank
    for i, axis in enumerate(axes if axes is not None else range(count)):
        begin[axis % rank], end[axis % rank] = pads[i], pads[count + i]
    # F.pad pads trailing dims only; non-constant modes pad exactly the dims after N and C
    keep = 0 if mode == "constant" else max(rank - 2, 0)
    while rank > keep and begin[0] == 0 and end[0] == 0:
        begin, end, rank = begin[1:], end[1:], rank - 1
    if rank > keep and mode != "constant":
        raise fail(node, f"{mode} padding of the batch or channel dim")
    module = Pad(torch_pads(begin, end), _PAD_MODES[mode], value)
    return [ctx.emit_module(node, module, x)]


BUILDERS: dict[str, Builder] = {"Pad": build_pad}
