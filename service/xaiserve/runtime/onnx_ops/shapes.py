"""Shape manipulation: identity, flatten, reshape, transpose, (un)squeeze, concat, cast, expand."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
import torch
import torch.fx
from torch import nn

from xaiserve.runtime.onnx_ops.nodes import (
    as_constant,
    as_runtime,
    attributes,
    axes_of,
    fail,
)
from xaiserve.runtime.onnx_ops.values import BatchShape, BuildContext, Builder, Value


class Concat(nn.Module):
    """Concatenate runtime tensors along ``dim``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        """Return ``torch.cat(tensors, dim)``."""
        return torch.cat(tensors, dim=self.dim)

    def extra_repr(self) -> str:
        """Show the dim."""
        return f"dim={self.dim}"


class Reshape(nn.Module):
    """ONNX ``Reshape``: ``-1`` infers a dim; ``0`` copies the input's dim unless ``allowzero``."""

    def __init__(self, shape: Sequence[int], allowzero: bool = False) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.allowzero = allowzero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reshape ``x``."""
        if self.allowzero or 0 not in self.shape:
            return x.reshape(self.shape)
        return x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(self.shape)])

    def extra_repr(self) -> str:
        """Show the target shape."""
        return f"shape={self.shape}"


class BatchReshape(nn.Module):
    """Reshape to ``offset + per_batch * batch`` where batch is ``x.numel() // numel_per_item``."""

    def __init__(self, offset: Sequence[int], per_batch: Sequence[int], numel_per_item: int):
        super().__init__()
        self.offset = tuple(int(v) for v in offset)
        self.per_batch = tuple(int(v) for v in per_batch)
        self.numel_per_item = numel_per_item

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reshape ``x`` for its batch size."""
        batch = x.numel() // self.numel_per_item
        return x.reshape([o + p * batch for o, p in zip(self.offset, self.per_batch, strict=True)])


class OnnxFlatten(nn.Module):
    """ONNX ``Flatten`` for ``axis != 1``: dims before ``axis`` and from ``axis`` on become two."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Flatten ``x`` to 2-D."""
        axis = self.axis % x.dim() if self.axis < 0 else self.axis
        lead = math.prod(x.shape[:axis])
        return x.reshape(lead, -1) if lead else x.reshape(0, math.prod(x.shape[axis:]))


class Permute(nn.Module):
    """ONNX ``Transpose``."""

    def __init__(self, perm: Sequence[int]) -> None:
        super().__init__()
        self.perm = tuple(int(p) for p in perm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Permute the dims of ``x``."""
        return x.permute(self.perm)

    def extra_repr(self) -> str:
        """Show the permutation."""
        return f"perm={self.perm}"


class Squeeze(nn.Module):
    """Remove the given size-1 dims."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = tuple(int(d) for d in dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Squeeze ``x``."""
        return torch.squeeze(x, self.dims)


class Unsqueeze(nn.Module):
    """Insert size-1 dims at the given (non-negative, output-indexed) positions."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = tuple(sorted(int(d) for d in dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Unsqueeze ``x``."""
        for dim in self.dims:
            x = x.unsqueeze(dim)
        return x


class Cast(nn.Module):
    """Convert a runtime tensor to another dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Cast ``x``."""
        return x.to(self.dtype)


class Expand(nn.Module):
    """ONNX ``Expand``: broadcast a runtime tensor against a constant shape."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Broadcast ``x``."""
        return torch.broadcast_to(x, torch.broadcast_shapes(x.shape, self.shape))


def build_identity(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``Identity``/``Dropout`` (inference) -> ``nn.Identity``."""
    if node.op_type == "Dropout" and len([o for o in node.output if o]) > 1:
        raise fail(node, "the mask output")
    return [ctx.emit_module(node, nn.Identity(), as_runtime(node, inputs[0]))]


def build_flatten(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``Flatten`` -> ``nn.Flatten`` (axis 1) or :class:`OnnxFlatten`."""
    x = as_runtime(node, inputs[0])
    axis = int(attributes(node).get("axis", 1))
    module = nn.Flatten(1) if axis == 1 else OnnxFlatten(axis)
    return [ctx.emit_module(node, module, x)]


def build_reshape(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``Reshape`` with a constant or batch-dependent target shape.

    A batch-dependent target (from ``Shape`` arithmetic) keeps the batch dimension dynamic: a
    single batch-dependent entry becomes ``-1``; otherwise :class:`BatchReshape` recomputes the
    target from the input's size.
    """
    x = as_runtime(node, inputs[0])
    allowzero = bool(attributes(node).get("allowzero", 0))
    target = inputs[1]
    module: nn.Module
    if isinstance(target, BatchShape):
        per_batch, offset = target.per_batch, target.offset
        dependent = np.nonzero(per_batch)[0]
        if len(dependent) == 1 and -1 not in offset:
            shape = offset.copy()
            shape[dependent[0]] = -1
            module = Reshape(shape.tolist(), allowzero=True)
        else:
            module = BatchReshape(offset.tolist(), per_batch.tolist(), ctx.numel_per_item(x))
        return [ctx.emit_module(node, module, x)]
    shape = as_constant(node, target, "shape").astype(np.int64).copy()
    static_batch = ctx.static_batch
    fixed_batch = static_batch is not None and shape.size and shape[0] == static_batch
    if fixed_batch and 0 not in shape and ctx.shape(x)[0] is None:
        shape[0] = 0  # exported with a fixed batch size: keep dim 0 dynamic
        allowzero = False
    return [ctx.emit_module(node, Reshape(shape.tolist(), allowzero), x)]


def build_transpose(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``Transpose`` -> :class:`Permute`."""
    x = as_runtime(node, inputs[0])
    perm = attributes(node).get("perm")
    if perm is None:
        perm = list(reversed(range(ctx.rank(x))))
    return [ctx.emit_module(node, Permute(perm), x)]


def build_squeeze(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``Squeeze`` -> :class:`Squeeze` (dims found from the static shape when absent)."""
    x = as_runtime(node, inputs[0])
    axes = axes_of(node, inputs, 1)
    if axes is None:
        axes = [i for i, s in enumerate(ctx.shape(x)) if s == 1]
    rank = ctx.rank(x)
    return [ctx.emit_module(node, Squeeze([a % rank for a in axes]), x)]


def build_unsqueeze(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``Unsqueeze`` -> :class:`Unsqueeze`."""
    x = as_runtime(node, inputs[0])
    axes = axes_of(node, inputs, 1) or []
    out_rank = ctx.rank(x) + len(axes)
    return [ctx.emit_module(node, Unsqueeze([a % out_rank for a in axes]), x)]


def build_concat(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``Concat`` -> :class:`Concat` (constant parts become buffers)."""
    parts: list[torch.fx.Node] = []
    for value in inputs:
        if isinstance(value, torch.fx.Node):
            parts.append(value)
        else:
            constant = as_constant(node, value, "input")
            if constant.size:
                parts.append(ctx.emit_constant(constant))
    axis = int(attributes(node)["axis"])
    return [ctx.emit_module(node, Concat(axis), *parts)]


def build_cast(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
    """``Cast`` of a runtime tensor -> :class:`Cast`."""
    x = as_runtime(node, inputs[0])
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(int(attributes(node)["to"]))
    dtype = torch.from_numpy(np.zeros(0, dtype=np_dtype)).dtype
    return [ctx.emit_module(node, Cast(dtype), x)]


def build_expand(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``Expand`` to a constant shape -> :class:`Expand`."""
    x = as_runtime(node, inputs[0])
    shape = as_constant(node, inputs[1], "shape").astype(int).tolist()
    return [ctx.emit_module(node, Expand(shape), x)]


BUILDERS: dict[str, Builder] = {
    "Identity": build_identity,
    "Dropout": build_identity,
    "Flatten": build_flatten,
    "Reshape": build_reshape,
    "Transpose": build_transpose,
    "Squeeze": build_squeeze,
    "Unsqueeze": build_unsqueeze,
    "Concat": build_concat,
    "Cast": build_cast,
    "Expand": build_expand,
}
