"""Indexing with constant indices: ``Gather``/``GatherND``, ``Slice`` and ``Split``."""

from __future__ import annotations

import operator
from collections.abc import Sequence

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
from xaiserve.runtime.onnx_ops.values import BuildContext, Builder, Value


class Slice(nn.Module):
    """Basic slicing with positive steps along some dims."""

    def __init__(self, slices: dict[int, tuple[int | None, int | None, int]]) -> None:
        super().__init__()
        self.slices = slices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Slice ``x``."""
        index: list[slice] = [slice(None)] * x.dim()
        for dim, (start, stop, step) in self.slices.items():
            index[dim] = slice(start, stop, step)
        return x[tuple(index)]


class Gather(nn.Module):
    """ONNX ``Gather`` of a runtime tensor with constant indices."""

    indices: torch.Tensor

    def __init__(self, dim: int, indices: torch.Tensor) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("indices", indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Index ``x`` along ``dim``."""
        size = x.shape[self.dim]
        indices = torch.where(self.indices < 0, self.indices + size, self.indices)
        if indices.dim() == 0:
            return x.select(self.dim, int(indices))
        flat = torch.index_select(x, self.dim, indices.reshape(-1))
        dim = self.dim % x.dim()
        return flat.reshape(*x.shape[:dim], *indices.shape, *x.shape[dim + 1 :])


class GatherND(nn.Module):
    """ONNX ``GatherND`` (``batch_dims=0``) of a runtime tensor with constant indices."""

    indices: torch.Tensor

    def __init__(self, indices: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("indices", indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gather slices of ``x`` addressed by the last index dim."""
        depth = self.indices.shape[-1]
        return x[tuple(self.indices[..., i] for i in range(depth))]


class Split(nn.Module):
    """Split a runtime tensor into pieces of the given sizes along ``dim``."""

    def __init__(self, sizes: Sequence[int], dim: int) -> None:
        super().__init__()
        self.sizes = [int(s) for s in sizes]
        self.dim = dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return the pieces."""
        return tuple(torch.split(x, self.sizes, dim=self.dim))


def build_gather(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``Gather``/``GatherND`` of a runtime tensor with constant indices."""
    x = as_runtime(node, inputs[0], "data")
    indices = as_constant(node, inputs[1], "indices").astype(np.int64)
    attrs = attributes(node)
    if node.op_type == "GatherND":
        if int(attrs.get("batch_dims", 0)):
            raise fail(node, "batch_dims != 0")
        return [ctx.emit_module(node, GatherND(as_tensor(indices)), x)]
    return [ctx.emit_module(node, Gather(int(attrs.get("axis", 0)), as_tensor(indices)), x)]


def build_slice(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
    """``Slice`` with constant bounds and positive steps -> :class:`Slice`."""
    x = as_runtime(node, inputs[0])
    attrs = attributes(node)
    if "starts" in attrs:  # opset < 10
        starts, ends = attrs["starts"], attrs["ends"]
        axes = attrs.get("axes", list(range(len(starts))))
        steps: Sequence[int] = [1] * len(starts)
    else:
        starts = as_constant(node, inputs[1], "starts").tolist()
        ends = as_constant(node, inputs[2], "ends").tolist()
        axes_c = optional_constant(node, inputs, 3, "axes")
        steps_c = optional_constant(node, inputs, 4, "steps")
        axes = list(range(len(starts))) if axes_c is None else axes_c.tolist()
        steps = [1] * len(starts) if steps_c is None else steps_c.tolist()
    rank = ctx.rank(x)
    big = 2**62
    slices: dict[int, tuple[int | None, int | None, int]] = {}
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        if step <= 0:
            raise fail(node, "non-positive step")
        lo = None if start <= -big else min(int(start), big)
        hi = None if end >= big else max(int(end), -big)
        slices[int(axis) % rank] = (lo, hi, int(step))
    return [ctx.emit_module(node, Slice(slices), x)]


def build_split(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
    """``Split`` -> :class:`Split` plus one ``getitem`` per output."""
    x = as_runtime(node, inputs[0])
    attrs = attributes(node)
    axis = int(attrs.get("axis", 0))
    sizes = attrs.get("split")
    if sizes is None:
        given = optional_constant(node, inputs, 1, "split")
        sizes = None if given is None else given.tolist()
    outputs = len(node.output)
    if sizes is None:
        length = ctx.shape(x)[axis]
        if length is None:
            raise fail(node, "even split along the batch dim")
        chunk = -(-length // outputs)
        sizes = [min(chunk, length - i * chunk) for i in range(outputs)]
    pieces = ctx.emit_module(node, Split(sizes, axis), x)
    return [ctx.emit_function(operator.getitem, pieces, i) for i in range(outputs)]


BUILDERS: dict[str, Builder] = {
    "Gather": build_gather,
    "GatherND": build_gather,
    "Slice": build_slice,
    "Split": build_split,
}
