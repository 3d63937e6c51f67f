"""Cascading model-parameter randomisation of an ONNX graph (Adebayo et al., "Sanity Checks for
Saliency Maps", NeurIPS 2018, Sec. 3.1 and Fig. 2).

A *weighted layer* is a node whose own parameters are float initializers:

* a primary layer — ``Conv``, ``ConvTranspose``, ``Gemm``, ``MatMul``, ``Einsum`` — with at least
  one float initializer input (its weight; its bias joins it);
* the parameters of a node that only post-processes one layer's output join that layer: a
  ``BatchNormalization``/``InstanceNormalization``/``LayerNormalization`` scale and bias, the
  slope of a ``PRelu``, or the initializer of an ``Add``/``Mul`` (a bias split off ``MatMul``,
  a per-channel scale), as long as the node's data input comes straight from the layer (or
  from a node already joined to it);
* a normalisation or ``PRelu`` node that follows no layer is a weighted layer of its own.

Batch-norm running mean and variance are statistics, not parameters, and are kept (a
randomised variance could turn negative). Float constants of other nodes (input
normalisation, ε, scalars) are not parameters and are kept.

**Layer order** comes from the graph's topology: nodes are put in a stable topological order
(Kahn's algorithm, ties broken by file order) and the weighted layers are listed from the
output (the logits) down to the input. Variant ``k`` re-initialises the first ``k`` of them, so
the variants cascade: every variant randomises everything the previous one did, plus one more
layer (or stop) further down.

**Distribution:** each re-initialised tensor ``W`` is replaced by independent draws from the
normal distribution with the same mean and standard deviation as ``W`` itself,
``N(mean(W), std(W)²)``, cast back to ``W``'s dtype (shape and name kept). A tensor whose values
are all equal therefore keeps them. The draws come from ``numpy.random.Generator(PCG64)`` seeded
with ``SeedSequence([seed, layer position, tensor position])``: the same seed gives the same
variants, and a layer's random values are the same in every variant that randomises it.

This module is pure ONNX + numpy; onnxruntime and torch never appear here.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = [
    "DEFAULT_MAX_EVERY_LAYER",
    "DEFAULT_SPREAD_STOPS",
    "DISTRIBUTION",
    "MAX_STOPS",
    "RandomisationPlan",
    "WeightedLayer",
    "layer_stops",
    "plan_randomisation",
    "randomised_model",
    "randomised_tensors",
    "topological_order",
    "weighted_layers",
]

PRIMARY_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum"})
STANDALONE_OPS = frozenset(
    {"BatchNormalization", "InstanceNormalization", "LayerNormalization", "PRelu"}
)
JOINING_OPS = STANDALONE_OPS | {"Add", "Mul"}
# Inputs of these operators that are parameters (others are statistics, shapes or flags).
_PARAMETER_INPUTS: dict[str, tuple[int, ...]] = {
    "BatchNormalization": (1, 2),  # scale, B (input_mean and input_var are kept)
    "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "PRelu": (1,),
    "Add": (0, 1),
    "Mul": (0, 1),
}
_FLOAT_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.BFLOAT16,
    }
)

#: Default stops: every weighted layer for networks with at most this many …
DEFAULT_MAX_EVERY_LAYER = 20
#: … else this many stops spread evenly down the network (the last is full randomisation).
DEFAULT_SPREAD_STOPS = 10
#: The re-initialisation, in words (responses carry it).
DISTRIBUTION = (
    "each parameter tensor W of a randomised layer redrawn i.i.d. from N(mean(W), std(W)^2), "
    "same shape and dtype (numpy PCG64, SeedSequence([seed, layer, tensor])); batch-norm "
    "running statistics kept"
)
#: The most stops a caller may ask for (each stop is one full method call per request).
MAX_STOPS = 64


@dataclass(frozen=True)
class WeightedLayer:
    """One weighted layer: the node that names it and the initializers re-initialised with it."""

    name: str
    op_type: str
    initializers: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.name} ({self.op_type})"


@dataclass(frozen=True)
class RandomisationPlan:
    """Which variants to build: ``stops[i]`` layers (from the output down) are randomised in
    variant ``i``. ``layers`` is the whole list of weighted layers, output first."""

    layers: tuple[WeightedLayer, ...]
    stops: tuple[int, ...]
    seed: int

    @property
    def total_layers(self) -> int:
        return len(self.layers)

    def deepest_layer(self, stop: int) -> WeightedLayer:
        """The last layer randomised when ``stop`` layers are (the curve's x-axis label)."""
        return self.layers[stop - 1]


def topological_order(graph: onnx.GraphProto) -> list[int]:
    """Indices of ``graph.node`` in a stable topological order (file order among ready nodes).

    Raises ``ValueError`` for a graph with a cycle or a node input nobody produces.
    """
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    producer: dict[str, int] = {}
    for idx, node in enumerate(graph.node):
        for out in node.output:
            if out:
                producer[out] = idx
    waiting: list[int] = []
    consumers: dict[int, list[int]] = {}
    for idx, node in enumerate(graph.node):
        deps = set()
        for name in node.input:
            if name in available:
                continue
            if name not in producer:
                raise ValueError(
                    f"node {node.name or node.op_type!r} reads {name!r}, which no node produces"
                )
            deps.add(producer[name])
        waiting.append(len(deps))
        for d in deps:
            consumers.setdefault(d, []).append(idx)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        idx = heapq.heappop(ready)
        order.append(idx)
        for c in consumers.get(idx, ()):
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, c)
    if len(order) != len(graph.node):
        raise ValueError("the graph has a cycle")
    return order


def weighted_layers(model: onnx.ModelProto) -> list[WeightedLayer]:
    """The weighted layers of ``model``'s main graph, from the output (logits) down."""
    graph = model.graph
    params = {t.name for t in graph.initializer if t.data_type in _FLOAT_TYPES}
    order = topological_order(graph)
    owner: dict[str, int] = {}  # value name → index (in ``groups``) of the layer producing it
    groups: list[tuple[onnx.NodeProto, list[str]]] = []
    claimed: set[str] = set()

    def take(names: Sequence[str]) -> list[str]:
        fresh = [n for n in names if n in params and n not in claimed and n]
        claimed.update(fresh)
        return fresh

    for idx in order:
        node = graph.node[idx]
        op = node.op_type
        if op in PRIMARY_OPS and any(n in params for n in node.input):
            groups.append((node, take(node.input)))
            for out in node.output:
                owner[out] = len(groups) - 1
            continue
        if op not in JOINING_OPS:
            continue
        slots = _PARAMETER_INPUTS[op]
        candidates = [node.input[i] for i in slots if i < len(node.input)]
        data_inputs = [n for n in node.input if n and n not in params]
        joined = [owner[n] for n in data_inputs if n in owner]
        if op in ("Add", "Mul") and not (len(data_inputs) == 1 and joined):
            continue  # a constant operation, not a layer's bias or scale
        constant = [n for n in candidates if n in params]
        if joined and len(data_inputs) == 1:
            group = joined[0]
            groups[group][1].extend(take(constant))
            for out in node.output:
                owner[out] = group
        elif op in STANDALONE_OPS and constant:
            groups.append((node, take(constant)))
            for out in node.output:
                owner[out] = len(groups) - 1
    layers = []
    names: set[str] = set()
    for position, (node, inits) in enumerate(groups):
        if not inits:
            continue
        name = node.name or f"{node.op_type}_{position}"
        while name in names:
            name = f"{name}_{position}"
        names.add(name)
        layers.append(WeightedLayer(name, node.op_type, tuple(inits)))
    layers.reverse()
    return layers


def layer_stops(n_layers: int, stops: int = 0) -> tuple[int, ...]:
    """How many layers each variant randomises (ascending; the last is ``n_layers``).

    ``stops = 0`` is the default: every layer when ``n_layers ≤ 20``, else 10 stops spread
    evenly. ``stops ≥ n_layers`` means every layer. Otherwise ``stops`` points spread evenly
    over ``1..n_layers`` (rounded; the first is layer 1, the last full randomisation).
    """
    if n_layers < 1:
        raise ValueError("the model has no weighted layer to randomise")
    if stops < 0 or stops > MAX_STOPS:
        raise ValueError(f"stops {stops} must be between 0 (default) and {MAX_STOPS}")
    if stops == 0:
        stops = n_layers if n_layers <= DEFAULT_MAX_EVERY_LAYER else DEFAULT_SPREAD_STOPS
    if stops >= n_layers:
        return tuple(range(1, n_layers + 1))
    if stops == 1:
        return (n_layers,)
    points = np.rint(np.linspace(1, n_layers, stops)).astype(int)
    return tuple(sorted({int(p) for p in points}))


def plan_randomisation(model: onnx.ModelProto, stops: int = 0, seed: int = 0) -> RandomisationPlan:
    """The layers of ``model`` and the stops to visit (see :func:`layer_stops`)."""
    layers = weighted_layers(model)
    if not layers:
        raise ValueError(
            "the graph has no parameter initializers to randomise (weights stored as "
            "Constant nodes or computed at run time are not supported)"
        )
    return RandomisationPlan(tuple(layers), layer_stops(len(layers), stops), int(seed))


def randomised_tensors(model: onnx.ModelProto, plan: RandomisationPlan) -> dict[str, np.ndarray]:
    """Re-initialised values of every parameter of every layer in ``plan`` (see module docs)."""
    by_name = {t.name: t for t in model.graph.initializer}
    out: dict[str, np.ndarray] = {}
    for position, layer in enumerate(plan.layers):
        for tensor_position, name in enumerate(layer.initializers):
            original = numpy_helper.to_array(by_name[name])
            rng = np.random.Generator(
                np.random.PCG64(np.random.SeedSequence([plan.seed, position, tensor_position]))
            )
            values = original.astype(np.float64)
            mean = float(values.mean()) if values.size else 0.0
            std = float(values.std()) if values.size else 0.0
            drawn = (
                rng.normal(mean, std, size=original.shape)
                if std > 0
                else np.full(original.shape, mean)
            )
            out[name] = drawn.astype(original.dtype)
    return out


def randomised_model(
    model: onnx.ModelProto,
    plan: RandomisationPlan,
    stop: int,
    tensors: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """A copy of ``model`` whose first ``stop`` layers (from the output) are re-initialised.

    ``tensors`` are the values from :func:`randomised_tensors` (computed when omitted; pass them
    to build several variants without drawing again). Structure, names, shapes and dtypes are
    those of ``model``.
    """
    if not 0 <= stop <= plan.total_layers:
        raise ValueError(f"stop {stop} is outside 0..{plan.total_layers}")
    values = tensors if tensors is not None else randomised_tensors(model, plan)
    replace = {name for layer in plan.layers[:stop] for name in layer.initializers}
    variant = onnx.ModelProto()
    variant.CopyFrom(model)
    inits = variant.graph.initializer
    for i, tensor in enumerate(inits):
        if tensor.name in replace:
            inits[i].CopyFrom(numpy_helper.from_array(values[tensor.name], tensor.name))
    return variant
