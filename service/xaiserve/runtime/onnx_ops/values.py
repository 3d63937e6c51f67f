"""The values a converted ONNX graph passes between nodes, and the builders' contract.

A converted value is one of three things (see :data:`Value`):

* ``numpy.ndarray`` -- a constant known at conversion time (initializers, ``Constant`` nodes
  and everything computed from constants only),
* ``torch.fx.Node`` -- a tensor computed at run time from the model input,
* :class:`BatchShape` -- a small integer array (shape arithmetic) that depends on the batch size.

A :data:`Builder` receives the node, its converted inputs and a :class:`BuildContext`
(implemented by :mod:`xaiserve.runtime.onnx_to_torch`) and returns the node's outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import onnx
import torch
import torch.fx
from torch import nn

from xaiserve.errors import Unimplemented


class UnsupportedOperator(Unimplemented):
    """An ONNX node that the converter cannot turn into PyTorch layers.

    ``op_type`` and ``node_name`` identify the node; ``detail`` says what is unsupported when the
    operator itself is known but this use of it is not.
    """

    def __init__(self, op_type: str, node_name: str, detail: str | None = None) -> None:
        message = f"unsupported ONNX operator '{op_type}' at node '{node_name}'"
        if detail:
            message += f": {detail}"
        else:
            # the registry imports every op family, which raise this error: import on use
            from xaiserve.runtime.onnx_ops.registry import supported_operators

            message += f" (supported: {', '.join(supported_operators())})"
        super().__init__(message)
        self.op_type = op_type
        self.node_name = node_name
        self.detail = detail


@dataclass(frozen=True)
class BatchShape:
    """An integer array that depends on the batch size, e.g. ``Shape(x)`` of a runtime tensor.

    It is known at two probe batch sizes (:data:`PROBE_BATCHES`); every element is affine in the
    batch size, ``offset + per_batch * batch``.
    """

    at_probes: tuple[np.ndarray, np.ndarray]

    @property
    def per_batch(self) -> np.ndarray:
        """Coefficient of the batch size, per element."""
        low, high = self.at_probes
        return (high - low) // (PROBE_BATCHES[1] - PROBE_BATCHES[0])

    @property
    def offset(self) -> np.ndarray:
        """Batch-independent part, per element."""
        return self.at_probes[0] - self.per_batch * PROBE_BATCHES[0]


#: Batch sizes used to probe shapes; two values so batch-dependent dims can be told apart.
PROBE_BATCHES = (2, 3)


Value = np.ndarray | torch.fx.Node | BatchShape


class BuildContext(Protocol):
    """What a builder may ask the converter for."""

    opset: int
    #: The batch size fixed in the ONNX input (``None`` when the batch dim is symbolic).
    static_batch: int | None

    def emit_module(self, node: onnx.NodeProto, module: nn.Module, *args: Any) -> torch.fx.Node:
        """Add ``module`` as a submodule named after ``node`` and call it on ``args``."""

    def emit_function(self, fn: Callable[..., Any], *args: Any) -> torch.fx.Node:
        """Call a plain function (no parameters) on ``args``."""

    def emit_constant(self, array: np.ndarray) -> torch.fx.Node:
        """Register ``array`` as a buffer and return a node reading it."""

    def rank(self, value: torch.fx.Node) -> int:
        """Number of dimensions of a runtime tensor."""

    def shape(self, value: torch.fx.Node) -> tuple[int | None, ...]:
        """Shape of a runtime tensor; ``None`` for dims that depend on the batch size."""

    def numel_per_item(self, value: torch.fx.Node) -> int:
        """Number of elements of a runtime tensor per batch item (probed)."""

    def producer(self, value: torch.fx.Node) -> nn.Module | None:
        """The submodule whose output ``value`` is, if any."""

    def sole_consumer(self, value_name: str) -> bool:
        """Whether the ONNX value is read by exactly one node and is no graph output."""


Builder = Callable[[BuildContext, onnx.NodeProto, list[Value | None]], list[Value]]
