"""Per-operator builders that turn ONNX nodes into real PyTorch layers.

Each builder receives the node, its already converted inputs and a :class:`BuildContext`
(implemented by :mod:`xaiserve.runtime.onnx_to_torch`) and emits ``torch.fx`` nodes that call
submodules. Standard layers are used wherever one exists (``nn.Conv2d``, ``nn.Linear``,
``nn.BatchNorm2d``, ``nn.ReLU``, ...) so that rule-based attribution libraries (zennit, captum)
can attach to them by type. Operations without a standard layer get the small explicit modules
defined here; a residual ``Add`` becomes ``torch.stack`` followed by :class:`Sum`, a subclass of
``zennit.layer.Sum``, exactly the form zennit's own canonizers produce.

A converted value is one of three things (see :data:`Value`):

* ``numpy.ndarray`` -- a constant known at conversion time (initializers, ``Constant`` nodes
  and everything computed from constants only),
* ``torch.fx.Node`` -- a tensor computed at run time from the model input,
* :class:`BatchShape` -- a small integer array (shape arithmetic) that depends on the batch size.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import onnx
import torch
import torch.fx
import zennit.layer
from torch import nn
from torch.nn import functional as F

from xaiserve.errors import Unimplemented

# --------------------------------------------------------------------------------------------
# errors and values
# --------------------------------------------------------------------------------------------


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

# --------------------------------------------------------------------------------------------
# explicit modules for operations without a standard torch layer
# --------------------------------------------------------------------------------------------


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


class MatMul(nn.Module):
    """Matrix product of two runtime tensors."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Return ``a @ b``."""
        return torch.matmul(a, b)


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


# --------------------------------------------------------------------------------------------
# helpers for builders
# --------------------------------------------------------------------------------------------


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """The node's attributes as Python values (strings decoded)."""
    result: dict[str, Any] = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        result[attr.name] = value.decode() if isinstance(value, bytes) else value
    return result


def _fail(node: onnx.NodeProto, detail: str) -> UnsupportedOperator:
    return UnsupportedOperator(node.op_type, node.name, detail)


def _runtime(node: onnx.NodeProto, value: Value | None, what: str = "input") -> torch.fx.Node:
    if not isinstance(value, torch.fx.Node):
        raise _fail(node, f"{what} must be a runtime tensor")
    return value


def _constant(node: onnx.NodeProto, value: Value | None, what: str) -> np.ndarray:
    if isinstance(value, BatchShape):
        raise _fail(node, f"{what} depends on the batch size")
    if not isinstance(value, np.ndarray):
        raise _fail(node, f"{what} must be a constant")
    return value


def _optional_constant(node: onnx.NodeProto, inputs: list[Value | None], i: int, what: str):
    """The i-th input as a constant, or None when it is absent."""
    if i >= len(inputs) or inputs[i] is None:
        return None
    return _constant(node, inputs[i], what)


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor owning a C-contiguous copy of ``array`` (ONNX arrays are read-only views)."""
    return torch.from_numpy(np.array(array, order="C", copy=True))


def _scalar(array: np.ndarray | None, default: float) -> float:
    return default if array is None else float(np.asarray(array).reshape(-1)[0])


def _axes(node: onnx.NodeProto, inputs: list[Value | None], input_index: int) -> list[int] | None:
    """Axes from the ``axes`` attribute (old opsets) or the given input (new opsets)."""
    attrs = attributes(node)
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    axes = _optional_constant(node, inputs, input_index, "axes")
    return None if axes is None else [int(a) for a in axes.reshape(-1)]


def _spatial_pads(node: onnx.NodeProto, dims: int) -> tuple[list[int], list[int]]:
    """(begin, end) pads of the spatial dims from the ``pads`` attribute."""
    pads = [int(p) for p in attributes(node).get("pads", [0] * (2 * dims))]
    return pads[:dims], pads[dims:]


def _torch_pads(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """ONNX (begin..., end...) pads to ``F.pad`` order (last dim first)."""
    return [p for b, e in zip(reversed(begin), reversed(end), strict=True) for p in (b, e)]


# --------------------------------------------------------------------------------------------
# builders: convolution, linear, normalization
# --------------------------------------------------------------------------------------------

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _pre_pad(
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
    begin, end = _spatial_pads(node, dims)
    if begin == end:
        return x, begin
    pad = Pad(_torch_pads(begin, end), "constant", value)
    return ctx.emit_module(node, pad, x), [0] * dims


def build_conv(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
    """``Conv`` -> ``nn.Conv{1,2,3}d`` (asymmetric or SAME pads as a separate pad module)."""
    x = _runtime(node, inputs[0])
    weight = _constant(node, inputs[1], "weight")
    bias = _optional_constant(node, inputs, 2, "bias")
    dims = weight.ndim - 2
    if dims not in _CONV:
        raise _fail(node, f"{dims}-D convolution")
    attrs = attributes(node)
    kernel = [int(k) for k in attrs.get("kernel_shape", weight.shape[2:])]
    strides = [int(s) for s in attrs.get("strides", [1] * dims)]
    dilations = [int(d) for d in attrs.get("dilations", [1] * dims)]
    groups = int(attrs.get("group", 1))
    x, padding = _pre_pad(ctx, node, x, kernel, strides, dilations, 0.0)
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
    conv.weight = nn.Parameter(_tensor(weight))
    if bias is not None:
        conv.bias = nn.Parameter(_tensor(bias.reshape(-1)))
    return [ctx.emit_module(node, conv, x)]


def _linear(weight: np.ndarray, bias: np.ndarray | None) -> nn.Linear:
    """``nn.Linear`` with ``weight`` of shape (out, in)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(_tensor(weight))
    if bias is not None:
        linear.bias = nn.Parameter(_tensor(np.broadcast_to(bias, (weight.shape[0],))))
    return linear


def build_gemm(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
    """``Gemm`` with constant B (and C) -> ``nn.Linear`` (alpha/beta folded in)."""
    x = _runtime(node, inputs[0])
    b = _constant(node, inputs[1], "B")
    c = _optional_constant(node, inputs, 2, "C")
    attrs = attributes(node)
    if int(attrs.get("transA", 0)):
        raise _fail(node, "transA=1")
    weight = b if int(attrs.get("transB", 0)) else b.T
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if alpha != 1.0:
        weight = (weight * alpha).astype(b.dtype)
    if c is not None:
        if c.size not in (1, weight.shape[0]) or (c.ndim == 2 and c.shape[0] != 1):
            raise _fail(node, f"bias C of shape {c.shape} is not per output feature")
        c = (c.reshape(-1) * beta).astype(c.dtype)
    return [ctx.emit_module(node, _linear(weight, c), x)]


def build_matmul(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``MatMul`` with a constant 2-D right operand -> bias-free ``nn.Linear``.

    A following ``Add`` of a per-feature constant is folded into its bias (see ``build_add``).
    """
    a, b = inputs[0], inputs[1]
    if isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node):
        return [ctx.emit_module(node, MatMul(), a, b)]
    x = _runtime(node, a, "left operand")
    weight = _constant(node, b, "right operand")
    if weight.ndim != 2:
        raise _fail(node, f"constant right operand of rank {weight.ndim}")
    return [ctx.emit_module(node, _linear(weight.T, None), x)]


_BATCH_NORM = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def build_batch_norm(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``BatchNormalization`` (inference) -> ``nn.BatchNorm{1,2,3}d`` in eval mode."""
    x = _runtime(node, inputs[0])
    scale, bias, mean, var = (
        _constant(node, inputs[i], name)
        for i, name in enumerate(("scale", "bias", "mean", "var"), start=1)
    )
    attrs = attributes(node)
    if int(attrs.get("training_mode", 0)) or len([o for o in node.output if o]) > 1:
        raise _fail(node, "training mode")
    rank = ctx.rank(x)
    if rank not in _BATCH_NORM:
        raise _fail(node, f"input of rank {rank}")
    bn = _BATCH_NORM[rank](scale.shape[0], eps=float(attrs.get("epsilon", 1e-5)))
    bn.weight = nn.Parameter(_tensor(scale))
    bn.bias = nn.Parameter(_tensor(bias))
    bn.running_mean = _tensor(mean)
    bn.running_var = _tensor(var)
    bn.eval()
    return [ctx.emit_module(node, bn, x)]


# --------------------------------------------------------------------------------------------
# builders: activations
# --------------------------------------------------------------------------------------------


def _simple(factory: Callable[[dict[str, Any]], nn.Module]) -> Builder:
    """Builder for an op with one runtime input whose module depends only on attributes."""

    def build(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
        x = _runtime(node, inputs[0])
        return [ctx.emit_module(node, factory(attributes(node)), x)]

    return build


def _hard_sigmoid(attrs: dict[str, Any]) -> nn.Module:
    alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and math.isclose(beta, 0.5):
        return nn.Hardsigmoid()
    return HardSigmoid(alpha, beta)


def build_clip(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
    """``Clip`` -> ``nn.ReLU``, ``nn.ReLU6`` or ``nn.Hardtanh``."""
    x = _runtime(node, inputs[0])
    attrs = attributes(node)
    low = _optional_constant(node, inputs, 1, "min")
    high = _optional_constant(node, inputs, 2, "max")
    lo = _scalar(low, float(attrs.get("min", -math.inf)))
    hi = _scalar(high, float(attrs.get("max", math.inf)))
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
    x = _runtime(node, inputs[0])
    attrs = attributes(node)
    axis = int(attrs.get("axis", -1 if ctx.opset >= 13 else 1))
    if ctx.opset < 13:  # old semantics flatten dims from axis on; equal when axis is the last
        rank = ctx.rank(x)
        if axis % rank != rank - 1:
            raise _fail(node, f"opset-{ctx.opset} softmax over flattened dims from axis {axis}")
    module = nn.Softmax(dim=axis) if node.op_type == "Softmax" else nn.LogSoftmax(dim=axis)
    return [ctx.emit_module(node, module, x)]


def build_prelu(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
    """``PRelu`` with a per-channel (or single) constant slope -> ``nn.PReLU``."""
    x = _runtime(node, inputs[0])
    slope = _constant(node, inputs[1], "slope")
    squeezed = slope.reshape(-1)
    rank = ctx.rank(x)
    per_channel = slope.ndim <= rank - 1 and all(s == 1 for s in slope.shape[1:])
    if squeezed.size != 1 and not (per_channel and slope.ndim == rank - 1):
        raise _fail(node, f"slope of shape {slope.shape} is not per channel")
    prelu = nn.PReLU(num_parameters=squeezed.size)
    prelu.weight = nn.Parameter(_tensor(squeezed))
    return [ctx.emit_module(node, prelu, x)]


# --------------------------------------------------------------------------------------------
# builders: pooling and reductions
# --------------------------------------------------------------------------------------------

_MAX_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVG_POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_ADAPTIVE_AVG = {3: nn.AdaptiveAvgPool1d, 4: nn.AdaptiveAvgPool2d, 5: nn.AdaptiveAvgPool3d}
_ADAPTIVE_MAX = {3: nn.AdaptiveMaxPool1d, 4: nn.AdaptiveMaxPool2d, 5: nn.AdaptiveMaxPool3d}


def build_pool(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
    """``MaxPool``/``AveragePool`` -> ``nn.MaxPool*``/``nn.AvgPool*``."""
    x = _runtime(node, inputs[0])
    if len([o for o in node.output if o]) > 1:
        raise _fail(node, "the Indices output")
    attrs = attributes(node)
    kernel = [int(k) for k in attrs["kernel_shape"]]
    dims = len(kernel)
    if dims not in _MAX_POOL:
        raise _fail(node, f"{dims}-D pooling")
    strides = [int(s) for s in attrs.get("strides", [1] * dims)]
    dilations = [int(d) for d in attrs.get("dilations", [1] * dims)]
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    is_max = node.op_type == "MaxPool"
    include_pad = bool(attrs.get("count_include_pad", 0))
    begin, end = _spatial_pads(node, dims)
    fits = begin == end and all(2 * p <= k for p, k in zip(begin, kernel, strict=True))
    explicit = attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or not fits
    if explicit and not is_max and not include_pad and any(begin + end):
        raise _fail(node, "asymmetric or SAME padding with count_include_pad=0")
    if explicit:
        x, padding = _pre_pad(
            ctx, node, x, kernel, strides, dilations, -math.inf if is_max else 0.0
        )
    else:
        padding = [0] * dims if attrs.get("auto_pad") == "VALID" else begin
    if is_max:
        if int(attrs.get("storage_order", 0)):
            raise _fail(node, "storage_order=1")
        module: nn.Module = _MAX_POOL[dims](
            tuple(kernel), tuple(strides), tuple(padding), tuple(dilations), ceil_mode=ceil_mode
        )
    else:
        if any(d != 1 for d in dilations):
            raise _fail(node, "dilated average pooling")
        module = _AVG_POOL[dims](
            tuple(kernel), tuple(strides), tuple(padding), ceil_mode, include_pad
        )
    return [ctx.emit_module(node, module, x)]


def build_global_pool(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``GlobalAveragePool``/``GlobalMaxPool`` -> ``nn.AdaptiveAvgPool*(1)``/``AdaptiveMaxPool``."""
    x = _runtime(node, inputs[0])
    rank = ctx.rank(x)
    table = _ADAPTIVE_AVG if node.op_type == "GlobalAveragePool" else _ADAPTIVE_MAX
    if rank not in table:
        raise _fail(node, f"input of rank {rank}")
    return [ctx.emit_module(node, table[rank](1), x)]


def build_reduce(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``ReduceMean`` over H,W with keepdims -> ``nn.AdaptiveAvgPool2d(1)``; others -> Reduce."""
    x = _runtime(node, inputs[0])
    attrs = attributes(node)
    keepdims = bool(attrs.get("keepdims", 1))
    axes = _axes(node, inputs, 1)
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


# --------------------------------------------------------------------------------------------
# builders: elementwise arithmetic
# --------------------------------------------------------------------------------------------


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
    layer.bias = nn.Parameter(_tensor(c.reshape(-1)))
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
            raise _fail(node, "both operands at run time")
        return [ctx.emit_module(node, _TWO_RUNTIME[op](), a, b)]
    constant_first = not isinstance(a, torch.fx.Node)
    x = _runtime(node, b if constant_first else a)
    c = _constant(node, a if constant_first else b, "constant operand")
    x_name = node.input[1] if constant_first else node.input[0]
    if op == "Add" and _fold_bias(ctx, x_name, x, c):
        return [x]
    module = ConstantBinary(op.lower(), _tensor(c), constant_first)
    return [ctx.emit_module(node, module, x)]


def build_sum(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
    """n-ary ``Sum`` of runtime tensors -> stack + :class:`Sum`."""
    operands = [_runtime(node, v) for v in inputs]
    if len(operands) == 1:
        return [ctx.emit_module(node, nn.Identity(), operands[0])]
    return [_stack_sum(ctx, node, operands)]


# --------------------------------------------------------------------------------------------
# builders: shape manipulation
# --------------------------------------------------------------------------------------------


def build_identity(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``Identity``/``Dropout`` (inference) -> ``nn.Identity``."""
    if node.op_type == "Dropout" and len([o for o in node.output if o]) > 1:
        raise _fail(node, "the mask output")
    return [ctx.emit_module(node, nn.Identity(), _runtime(node, inputs[0]))]


def build_flatten(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``Flatten`` -> ``nn.Flatten`` (axis 1) or :class:`OnnxFlatten`."""
    x = _runtime(node, inputs[0])
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
    x = _runtime(node, inputs[0])
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
    shape = _constant(node, target, "shape").astype(np.int64).copy()
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
    x = _runtime(node, inputs[0])
    perm = attributes(node).get("perm")
    if perm is None:
        perm = list(reversed(range(ctx.rank(x))))
    return [ctx.emit_module(node, Permute(perm), x)]


def build_squeeze(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``Squeeze`` -> :class:`Squeeze` (dims found from the static shape when absent)."""
    x = _runtime(node, inputs[0])
    axes = _axes(node, inputs, 1)
    if axes is None:
        axes = [i for i, s in enumerate(ctx.shape(x)) if s == 1]
    rank = ctx.rank(x)
    return [ctx.emit_module(node, Squeeze([a % rank for a in axes]), x)]


def build_unsqueeze(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``Unsqueeze`` -> :class:`Unsqueeze`."""
    x = _runtime(node, inputs[0])
    axes = _axes(node, inputs, 1) or []
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
            constant = _constant(node, value, "input")
            if constant.size:
                parts.append(ctx.emit_constant(constant))
    axis = int(attributes(node)["axis"])
    return [ctx.emit_module(node, Concat(axis), *parts)]


def build_gather(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``Gather``/``GatherND`` of a runtime tensor with constant indices."""
    x = _runtime(node, inputs[0], "data")
    indices = _constant(node, inputs[1], "indices").astype(np.int64)
    attrs = attributes(node)
    if node.op_type == "GatherND":
        if int(attrs.get("batch_dims", 0)):
            raise _fail(node, "batch_dims != 0")
        return [ctx.emit_module(node, GatherND(_tensor(indices)), x)]
    return [ctx.emit_module(node, Gather(int(attrs.get("axis", 0)), _tensor(indices)), x)]


def build_slice(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
    """``Slice`` with constant bounds and positive steps -> :class:`Slice`."""
    x = _runtime(node, inputs[0])
    attrs = attributes(node)
    if "starts" in attrs:  # opset < 10
        starts, ends = attrs["starts"], attrs["ends"]
        axes = attrs.get("axes", list(range(len(starts))))
        steps: Sequence[int] = [1] * len(starts)
    else:
        starts = _constant(node, inputs[1], "starts").tolist()
        ends = _constant(node, inputs[2], "ends").tolist()
        axes_c = _optional_constant(node, inputs, 3, "axes")
        steps_c = _optional_constant(node, inputs, 4, "steps")
        axes = list(range(len(starts))) if axes_c is None else axes_c.tolist()
        steps = [1] * len(starts) if steps_c is None else steps_c.tolist()
    rank = ctx.rank(x)
    big = 2**62
    slices: dict[int, tuple[int | None, int | None, int]] = {}
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        if step <= 0:
            raise _fail(node, "non-positive step")
        lo = None if start <= -big else min(int(start), big)
        hi = None if end >= big else max(int(end), -big)
        slices[int(axis) % rank] = (lo, hi, int(step))
    return [ctx.emit_module(node, Slice(slices), x)]


def build_split(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
    """``Split`` -> :class:`Split` plus one ``getitem`` per output."""
    x = _runtime(node, inputs[0])
    attrs = attributes(node)
    axis = int(attrs.get("axis", 0))
    sizes = attrs.get("split")
    if sizes is None:
        given = _optional_constant(node, inputs, 1, "split")
        sizes = None if given is None else given.tolist()
    outputs = len(node.output)
    if sizes is None:
        length = ctx.shape(x)[axis]
        if length is None:
            raise _fail(node, "even split along the batch dim")
        chunk = -(-length // outputs)
        sizes = [min(chunk, length - i * chunk) for i in range(outputs)]
    pieces = ctx.emit_module(node, Split(sizes, axis), x)
    return [ctx.emit_function(operator.getitem, pieces, i) for i in range(outputs)]


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def build_pad(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
    """``Pad`` with constant pads -> :class:`Pad`."""
    x = _runtime(node, inputs[0])
    attrs = attributes(node)
    mode = attrs.get("mode", "constant")
    if mode not in _PAD_MODES:
        raise _fail(node, f"mode {mode!r}")
    if "pads" in attrs:  # opset < 11
        pads = [int(p) for p in attrs["pads"]]
        value = float(attrs.get("value", 0.0))
        axes: list[int] | None = None
    else:
        pads = _constant(node, inputs[1], "pads").astype(int).tolist()
        value = _scalar(_optional_constant(node, inputs, 2, "constant_value"), 0.0)
        axes_c = _optional_constant(node, inputs, 3, "axes")
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
        raise _fail(node, f"{mode} padding of the batch or channel dim")
    module = Pad(_torch_pads(begin, end), _PAD_MODES[mode], value)
    return [ctx.emit_module(node, module, x)]


def build_cast(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
    """``Cast`` of a runtime tensor -> :class:`Cast`."""
    x = _runtime(node, inputs[0])
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(int(attributes(node)["to"]))
    dtype = torch.from_numpy(np.zeros(0, dtype=np_dtype)).dtype
    return [ctx.emit_module(node, Cast(dtype), x)]


def build_expand(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value]:
    """``Expand`` to a constant shape -> :class:`Expand`."""
    x = _runtime(node, inputs[0])
    shape = _constant(node, inputs[1], "shape").astype(int).tolist()
    return [ctx.emit_module(node, Expand(shape), x)]


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------

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

BUILDERS: dict[str, Builder] = {
    "Conv": build_conv,
    "Gemm": build_gemm,
    "MatMul": build_matmul,
    "BatchNormalization": build_batch_norm,
    "Relu": _simple(lambda a: nn.ReLU()),
    "Sigmoid": _simple(lambda a: nn.Sigmoid()),
    "Tanh": _simple(lambda a: nn.Tanh()),
    "HardSwish": _simple(lambda a: nn.Hardswish()),
    "HardSigmoid": _simple(_hard_sigmoid),
    "LeakyRelu": _simple(lambda a: nn.LeakyReLU(float(a.get("alpha", 0.01)))),
    "Elu": _simple(lambda a: nn.ELU(float(a.get("alpha", 1.0)))),
    "Selu": _simple(lambda a: nn.SELU()),
    "Softplus": _simple(lambda a: nn.Softplus()),
    "Gelu": _simple(lambda a: nn.GELU(approximate=a.get("approximate", "none"))),
    "Clip": build_clip,
    "PRelu": build_prelu,
    "Softmax": build_softmax,
    "LogSoftmax": build_softmax,
    "MaxPool": build_pool,
    "AveragePool": build_pool,
    "GlobalAveragePool": build_global_pool,
    "GlobalMaxPool": build_global_pool,
    "ReduceMean": build_reduce,
    "ReduceSum": build_reduce,
    "ReduceMax": build_reduce,
    "ReduceMin": build_reduce,
    "Add": build_binary,
    "Sub": build_binary,
    "Mul": build_binary,
    "Div": build_binary,
    "Pow": build_binary,
    "Sum": build_sum,
    "Identity": build_identity,
    "Dropout": build_identity,
    "Flatten": build_flatten,
    "Reshape": build_reshape,
    "Transpose": build_transpose,
    "Squeeze": build_squeeze,
    "Unsqueeze": build_unsqueeze,
    "Concat": build_concat,
    "Gather": build_gather,
    "GatherND": build_gather,
    "Slice": build_slice,
    "Split": build_split,
    "Pad": build_pad,
    "Cast": build_cast,
    "Expand": build_expand,
}


def _unary_factory(name: str) -> Callable[[dict[str, Any]], nn.Module]:
    return lambda attrs: Unary(name)


for _op, _fn in _UNARY_TORCH.items():
    BUILDERS[_op] = _simple(_unary_factory(_fn))

#: Ops handled by the converter itself (on constants and shapes) rather than by a builder.
CONSTANT_ONLY_OPS = ("Constant", "Shape", "Size")


def supported_operators() -> list[str]:
    """Names of all ONNX operators the converter handles on runtime tensors or constants."""
    return sorted(set(BUILDERS) | set(CONSTANT_ONLY_OPS))
