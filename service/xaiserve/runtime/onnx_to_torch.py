"""Rebuild an ONNX image-classifier graph as a ``torch.fx.GraphModule`` made of real layers.

The white-box explainers (zennit LRP, captum gradients) need a PyTorch module whose layers they
can recognise by type; the black-box path serves the same ONNX file with onnxruntime. This
module walks the ONNX graph once, in topological order, and:

* keeps initializers, ``Constant`` nodes and everything computed only from them as numpy
  constants (folded with ``onnx.reference``), so weights stored either way end up in layers;
* turns ``Shape``/``Size`` of runtime tensors into :class:`~.onnx_ops.BatchShape` values. Their
  batch-independent results fold to constants; batch-dependent ones stay symbolic, so the batch
  dimension of the converted module remains dynamic. Shapes are found by *probing*: running the
  part of the module built so far on random inputs of batch size 2 and 3, with the non-batch
  input dims taken from the ONNX input (they must be static when a probe is needed);
* hands every other node to a per-operator builder (:mod:`.onnx_ops`) that adds real layers to
  a ``torch.fx.Graph`` via ``call_module``.

Public API: :func:`convert_onnx`, :class:`UnsupportedOperator`.
"""

from __future__ import annotations

import ast
import os
import re
from collections import Counter
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.reference
import onnx.shape_inference
import torch
import torch.fx
from torch import nn

from xaiserve.errors import Unimplemented
from xaiserve.runtime.onnx_ops import (
    BUILDERS,
    PROBE_BATCHES,
    BatchShape,
    UnsupportedOperator,
    Value,
    supported_operators,
)

__all__ = ["UnsupportedOperator", "convert_onnx", "supported_operators"]

_RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial"}
)
_SKELETON_MAX_ELEMENTS = 64


def convert_onnx(model: onnx.ModelProto | str | os.PathLike[str]) -> torch.fx.GraphModule:
    """Return an eval-mode module whose forward(x) takes the ONNX graph's single input (a float32
    tensor) and returns its first output.

    ``model`` is a loaded ``ModelProto`` (with external data loaded) or a path to a ``.onnx`` file
    (external data next to it is loaded). Raises :class:`UnsupportedOperator` for an operator (or
    a use of one) the converter cannot express with PyTorch layers, and
    :class:`xaiserve.errors.Unimplemented` for graphs that do not have exactly one input.
    """
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model))
    return _Converter(proto).run()


# --------------------------------------------------------------------------------------------
# implementation
# --------------------------------------------------------------------------------------------


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    """The value of a ``Constant`` node."""
    attr = node.attribute[0]
    if attr.name == "value":
        return onnx.numpy_helper.to_array(attr.t)
    if attr.name in ("value_float", "value_floats"):
        return np.array(onnx.helper.get_attribute_value(attr), dtype=np.float32)
    if attr.name in ("value_int", "value_ints"):
        return np.array(onnx.helper.get_attribute_value(attr), dtype=np.int64)
    raise UnsupportedOperator(node.op_type, node.name, f"attribute {attr.name!r}")


def _sanitize(text: str) -> str:
    """A Python identifier made from ``text`` (for submodule names)."""
    name = re.sub(r"_+", "_", re.sub(r"[^0-9a-zA-Z_]", "_", text)).strip("_")
    return name if name and not name[0].isdigit() else f"m_{name}"


def _scope_path(parts: list[str]) -> str:
    """Module path from exporter scopes, e.g. ``layer1/layer1.0/conv1`` -> ``layer1.0.conv1``."""
    path: list[str] = []
    for part in parts:
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        elif part:
            path.append(part)
    return ".".join(path)


def _base_name(node: onnx.NodeProto) -> str:
    """Submodule name for a node: exporter module path + op type, else the node name.

    Dynamo exports carry the module path in the ``pkg.torch.onnx.name_scopes`` metadata,
    TorchScript exports in node names like ``/layer1/layer1.0/conv1/Conv``.
    """
    parts: list[str] = []
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                parts = [str(s) for s in ast.literal_eval(prop.value)][:-1]
            except (ValueError, SyntaxError):
                parts = []
    if not parts and node.name.startswith("/"):
        parts = node.name.strip("/").split("/")[:-1]
    path = _scope_path(parts)
    return _sanitize(f"{path}_{node.op_type}" if path else node.name or node.op_type.lower())


def _inferred_ranks(proto: onnx.ModelProto) -> dict[str, int]:
    """Ranks of graph values from ONNX shape inference on a copy without large weights."""
    skeleton = onnx.ModelProto()
    _copy_without_weights(proto, skeleton)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton)
    except Exception:  # inference is only a hint; probing is the fallback
        return {}
    ranks: dict[str, int] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        tensor_type = info.type.tensor_type
        if tensor_type.HasField("shape"):
            ranks[info.name] = len(tensor_type.shape.dim)
    return ranks


def _copy_without_weights(proto: onnx.ModelProto, skeleton: onnx.ModelProto) -> None:
    """Copy ``proto`` into ``skeleton``, turning large initializers into typed graph inputs."""
    skeleton.ir_version = proto.ir_version
    skeleton.opset_import.extend(proto.opset_import)
    graph = skeleton.graph
    graph.node.extend(proto.graph.node)
    graph.input.extend(proto.graph.input)
    graph.output.extend(proto.graph.output)
    known = {i.name for i in proto.graph.input}
    for init in proto.graph.initializer:
        if int(np.prod(init.dims)) <= _SKELETON_MAX_ELEMENTS:
            graph.initializer.append(init)
        elif init.name not in known:
            graph.input.append(
                onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )


class _Converter:
    """One conversion: walks the ONNX graph and builds the fx graph (implements BuildContext)."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.proto = proto
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.graph = torch.fx.Graph()
        self.root = nn.Module()
        self.values: dict[str, Value] = {}
        self.modules: dict[torch.fx.Node, nn.Module] = {}
        self.onnx_names: dict[torch.fx.Node, str] = {}
        self.used_names: set[str] = set()
        self.ranks = _inferred_ranks(proto)
        self.consumers = Counter(name for node in proto.graph.node for name in node.input)
        self.consumers.update(output.name for output in proto.graph.output)
        self.probes: dict[torch.fx.Node, tuple[Any, Any]] = {}
        self.static_batch: int | None = None
        self.probe_dims: list[int | None] = []
        for init in proto.graph.initializer:
            self.values[init.name] = onnx.numpy_helper.to_array(init)
        self._add_input()

    # ---- setup and main loop -----------------------------------------------------------------

    def _add_input(self) -> None:
        inputs = [i for i in self.proto.graph.input if i.name not in self.values]
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise Unimplemented(f"expected an ONNX graph with exactly one input, got: {names}")
        dims = inputs[0].type.tensor_type.shape.dim
        self.probe_dims = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if dims and dims[0].HasField("dim_value"):
            self.static_batch = dims[0].dim_value
        placeholder = self.graph.placeholder("x")
        self.values[inputs[0].name] = placeholder
        self.onnx_names[placeholder] = inputs[0].name

    def run(self) -> torch.fx.GraphModule:
        """Convert every node and return the assembled, eval-mode GraphModule."""
        for node in self.proto.graph.node:
            self._convert_node(node)
        output = self.values[self.proto.graph.output[0].name]
        if not isinstance(output, torch.fx.Node):
            raise Unimplemented("the ONNX graph's first output does not depend on its input")
        self.graph.output(output)
        module = torch.fx.GraphModule(self.root, self.graph, class_name="OnnxGraphModule")
        module.graph.eliminate_dead_code()
        module.delete_all_unused_submodules()
        module.recompile()
        leftover = [
            n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta
        ]
        if leftover:  # layers are built on the meta device and must get every tensor assigned
            raise AssertionError(f"converter left tensors without data: {leftover}")
        self.probes.clear()
        return module.eval()

    def _convert_node(self, node: onnx.NodeProto) -> None:
        if node.domain not in ("", "ai.onnx") or node.op_type in _RANDOM_OPS:
            raise UnsupportedOperator(node.op_type, node.name)
        inputs: list[Value | None] = [self.values[name] if name else None for name in node.input]
        runtime = any(isinstance(v, torch.fx.Node) for v in inputs)
        outputs: list[Value]
        if node.op_type == "Constant":
            outputs = [_constant_value(node)]
        elif node.op_type in ("Shape", "Size") and runtime:
            outputs = [self._shape_value(node, inputs[0])]
        elif not runtime:
            outputs = self._fold(node, inputs)
        elif node.op_type in BUILDERS:
            outputs = BUILDERS[node.op_type](self, node, inputs)
        else:
            raise UnsupportedOperator(node.op_type, node.name)
        for name, value in zip(node.output, outputs, strict=False):
            if name:
                self.values[name] = value
                if isinstance(value, torch.fx.Node):
                    self.onnx_names.setdefault(value, name)

    # ---- constants and shapes ----------------------------------------------------------------

    def _fold(self, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value]:
        """Evaluate a node whose inputs are constants or batch shapes."""
        if node.op_type == "Identity" and inputs[0] is not None:
            return [inputs[0]]
        if not any(isinstance(v, BatchShape) for v in inputs):
            return list(self._evaluate(node, inputs))
        per_probe = [
            self._evaluate(
                node, [v.at_probes[i] if isinstance(v, BatchShape) else v for v in inputs]
            )
            for i in range(2)
        ]
        return [_shape_or_constant(a, b) for a, b in zip(*per_probe, strict=True)]

    def _evaluate(self, node: onnx.NodeProto, inputs: list[Any]) -> list[np.ndarray]:
        feeds = {name: value for name, value in zip(node.input, inputs, strict=True) if name}
        graph = onnx.helper.make_graph(
            [node],
            "fold",
            [
                onnx.helper.make_tensor_value_info(
                    name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), value.shape
                )
                for name, value in feeds.items()
            ],
            [onnx.helper.make_empty_tensor_value_info(name) for name in node.output if name],
        )
        model = onnx.helper.make_model(graph, opset_imports=list(self.proto.opset_import))
        try:
            results = onnx.reference.ReferenceEvaluator(model).run(None, feeds)
        except Exception as error:  # report as an unsupported constant op
            raise UnsupportedOperator(
                node.op_type, node.name, f"cannot fold constant inputs ({error})"
            ) from error
        return [np.asarray(r) for r in results]

    def _shape_value(self, node: onnx.NodeProto, x: Value | None) -> Value:
        """``Shape``/``Size`` of a runtime tensor."""
        assert isinstance(x, torch.fx.Node)
        shapes = [np.array(t.shape, dtype=np.int64) for t in self._probe(x)]
        if node.op_type == "Size":
            return _shape_or_constant(*(np.array(np.prod(s), dtype=np.int64) for s in shapes))
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        start, end = attrs.get("start", 0), attrs.get("end")
        return _shape_or_constant(*(s[start:end] for s in shapes))

    # ---- probing -----------------------------------------------------------------------------

    def _probe(self, target: torch.fx.Node) -> tuple[Any, Any]:
        """Values of ``target`` for random inputs of the probe batch sizes."""
        if target in self.probes:
            return self.probes[target]
        rest = [d for d in self.probe_dims[1:] if d is not None]
        if len(rest) != len(self.probe_dims) - 1:
            raise Unimplemented(
                "converting this graph needs tensor shapes, but the ONNX input has dynamic "
                f"non-batch dims {self.probe_dims}"
            )
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for node in self.graph.nodes:
                if node in self.probes:
                    continue
                self.probes[node] = tuple(self._run_node(node, i, generator) for i in range(2))
                if node is target:
                    break
        return self.probes[target]

    def _run_node(self, node: torch.fx.Node, probe: int, generator: torch.Generator) -> Any:
        def arg(value: Any) -> Any:
            return self.probes[value][probe] if isinstance(value, torch.fx.Node) else value

        args = torch.fx.node.map_aggregate(node.args, arg)
        if node.op == "placeholder":
            rest = [int(d or 0) for d in self.probe_dims[1:]]
            return torch.randn([PROBE_BATCHES[probe], *rest], generator=generator)
        if node.op == "call_module":
            return self.root.get_submodule(str(node.target))(*args)
        if node.op == "call_function":
            return node.target(*args)  # type: ignore[operator]
        if node.op == "get_attr":
            return getattr(self.root, str(node.target))
        raise AssertionError(f"unexpected fx node {node.op}")

    # ---- BuildContext ------------------------------------------------------------------------

    def _unique(self, base: str) -> str:
        name, i = base, 1
        while name in self.used_names or hasattr(self.root, name):
            name, i = f"{base}_{i}", i + 1
        self.used_names.add(name)
        return name

    def emit_module(self, node: onnx.NodeProto, module: nn.Module, *args: Any) -> torch.fx.Node:
        """Add ``module`` as a submodule named after ``node`` and call it on ``args``."""
        name = self._unique(_base_name(node))
        self.root.add_module(name, module.eval())
        fx_node = self.graph.call_module(name, args)
        self.modules[fx_node] = module
        return fx_node

    def emit_function(self, fn: Any, *args: Any) -> torch.fx.Node:
        """Call a plain function on ``args``."""
        return self.graph.call_function(fn, args)

    def emit_constant(self, array: np.ndarray) -> torch.fx.Node:
        """Register ``array`` as a buffer and return a node reading it."""
        name = self._unique("constant")
        self.root.register_buffer(name, torch.from_numpy(np.array(array, copy=True)))
        return self.graph.get_attr(name)

    def rank(self, value: torch.fx.Node) -> int:
        """Number of dims of a runtime tensor (shape inference, else probing)."""
        name = self.onnx_names.get(value)
        if name is not None and name in self.ranks:
            return self.ranks[name]
        return int(self._probe(value)[0].dim())

    def shape(self, value: torch.fx.Node) -> tuple[int | None, ...]:
        """Shape of a runtime tensor, ``None`` for batch-dependent dims (probed)."""
        low, high = self._probe(value)
        return tuple(a if a == b else None for a, b in zip(low.shape, high.shape, strict=True))

    def numel_per_item(self, value: torch.fx.Node) -> int:
        """Elements per batch item of a runtime tensor (probed)."""
        low, high = self._probe(value)
        per_item = low.numel() // PROBE_BATCHES[0]
        if per_item * PROBE_BATCHES[1] != high.numel():
            raise Unimplemented("tensor size is not proportional to the batch size")
        return int(per_item)

    def producer(self, value: torch.fx.Node) -> nn.Module | None:
        """The submodule whose output ``value`` is, if any."""
        return self.modules.get(value)

    def sole_consumer(self, value_name: str) -> bool:
        """Whether the ONNX value is read exactly once and is no graph output."""
        return self.consumers[value_name] == 1


def _shape_or_constant(low: np.ndarray, high: np.ndarray) -> Value:
    """A constant when both probes agree, else a :class:`BatchShape`."""
    if low.shape == high.shape and np.array_equal(low, high):
        return low
    if low.shape != high.shape or low.dtype.kind not in "iu":
        raise Unimplemented("a batch-dependent value that is not integer shape arithmetic")
    return BatchShape((low.astype(np.int64), high.astype(np.int64)))
