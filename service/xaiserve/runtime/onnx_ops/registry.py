"""Which builder converts which ONNX operator: the union of the op families' tables."""

from __future__ import annotations

from xaiserve.runtime.onnx_ops import (
    activations,
    arithmetic,
    indexing,
    linear,
    padding,
    pooling,
    shapes,
)
from xaiserve.runtime.onnx_ops.values import Builder

_FAMILIES = (linear, activations, pooling, arithmetic, shapes, indexing, padding)


def _merge() -> dict[str, Builder]:
    builders: dict[str, Builder] = {}
    for family in _FAMILIES:
        overlap = builders.keys() & family.BUILDERS.keys()
        if overlap:
            raise AssertionError(f"{family.__name__} redefines builders for {sorted(overlap)}")
        builders.update(family.BUILDERS)
    return builders


#: ONNX operator name -> builder, for nodes with runtime inputs.
BUILDERS: dict[str, Builder] = _merge()

#: Ops handled by the converter itself (on constants and shapes) rather than by a builder.
CONSTANT_ONLY_OPS = ("Constant", "Shape", "Size")


def supported_operators() -> list[str]:
    """Names of all ONNX operators the converter handles on runtime tensors or constants."""
    return sorted(set(BUILDERS) | set(CONSTANT_ONLY_OPS))
