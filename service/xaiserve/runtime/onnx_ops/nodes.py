"""Reading an ONNX node in a builder: attributes, inputs that must be runtime or constant, pads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import torch
import torch.fx

from xaiserve.runtime.onnx_ops.values import BatchShape, UnsupportedOperator, Value


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """The node's attributes as Python values (strings decoded)."""
    result: dict[str, Any] = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        result[attr.name] = value.decode() if isinstance(value, bytes) else value
    return result


def fail(node: onnx.NodeProto, detail: str) -> UnsupportedOperator:
    """The error for an unsupported use of ``node`` (the caller raises it)."""
    return UnsupportedOperator(node.op_type, node.name, detail)


def as_runtime(node: onnx.NodeProto, value: Value | None, what: str = "input") -> torch.fx.Node:
    """``value`` if it is a runtime tensor, else an :class:`UnsupportedOperator`."""
    if not isinstance(value, torch.fx.Node):
        raise fail(node, f"{what} must be a runtime tensor")
    return value


def as_constant(node: onnx.NodeProto, value: Value | None, what: str) -> np.ndarray:
    """``value`` if it is a conversion-time constant, else an :class:`UnsupportedOperator`."""
    if isinstance(value, BatchShape):
        raise fail(node, f"{what} depends on the batch size")
    if not isinstance(value, np.ndarray):
        raise fail(node, f"{what} must be a constant")
    return value


def optional_constant(
    node: onnx.NodeProto, inputs: list[Value | None], i: int, what: str
) -> np.ndarray | None:
    """The i-th input as a constant, or None when it is absent."""
    if i >= len(inputs) or inputs[i] is None:
        return None
    return as_constant(node, inputs[i], what)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor owning a C-contiguous copy of ``array`` (ONNX arrays are read-only views)."""
    return torch.from_numpy(np.array(array, order="C", copy=True))


def as_scalar(array: np.ndarray | None, default: float) -> float:
    """The first element of ``array`` as a float, or ``default`` when it is absent."""
    return default if array is None else float(np.asarray(array).reshape(-1)[0])


def axes_of(node: onnx.NodeProto, inputs: list[Value | None], input_index: int) -> list[int] | None:
    """Axes from the ``axes`` attribute (old opsets) or the given input (new opsets)."""
    attrs = attributes(node)
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    axes = optional_constant(node, inputs, input_index, "axes")
    return None if axes is None else [int(a) for a in axes.reshape(-1)]


def spatial_pads(node: onnx.NodeProto, dims: int) -> tuple[list[int], list[int]]:
    """(begin, end) pads of the spatial dims from the ``pads`` attribute."""
    pads = [int(p) for p in attributes(node).get("pads", [0] * (2 * dims))]
    return pads[:dims], pads[dims:]


def torch_pads(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """ONNX (begin..., end...) pads to ``F.pad`` order (last dim first)."""
    return [p for b, e in zip(reversed(begin), reversed(end), strict=True) for p in (b, e)]
