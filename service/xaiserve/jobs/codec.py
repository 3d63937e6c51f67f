"""Exact JSON encoding of chunk results (per-image evaluations) for the state store.

A chunk's result must aggregate to *exactly* what one process would have computed, so the
encoding is lossless: numpy arrays travel as their raw little-endian bytes (base64) with dtype
and shape, non-finite floats are tagged (JSON has no NaN), and dataclasses are rebuilt by name
from an explicit allow-list (never ``pickle``: a database row must not be able to run code).
"""

from __future__ import annotations

import base64
import dataclasses
import math
from typing import Any

import numpy as np

from xaiserve.evaluation.aggregate import ImageEvaluation
from xaiserve.evaluation.complexity import ComplexityResult
from xaiserve.evaluation.convex_hull import ConvexHullResult
from xaiserve.evaluation.localisation import LocalisationResult
from xaiserve.evaluation.morf import MorfResult
from xaiserve.evaluation.randomisation import MapSimilarity, RandomisationCurve

_TYPES: dict[str, type] = {
    t.__name__: t
    for t in (
        ImageEvaluation,
        MorfResult,
        LocalisationResult,
        ComplexityResult,
        ConvexHullResult,
        RandomisationCurve,
        MapSimilarity,
    )
}


def encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if name not in _TYPES:
            raise TypeError(f"{name} is not an encodable result type")
        return {
            "__dc__": name,
            "f": {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)},
        }
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        return {
            "__nd__": dtype.str,
            "shape": list(arr.shape),
            "b64": base64.b64encode(arr.astype(dtype, copy=False).tobytes()).decode(),
        }
    if isinstance(value, np.generic):
        return encode(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return {"__f__": repr(value)}
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return {"__t__": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    return value


def decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "__dc__" in value:
            cls = _TYPES[value["__dc__"]]
            return cls(**{k: decode(v) for k, v in value["f"].items()})
        if "__nd__" in value:
            raw = base64.b64decode(value["b64"])
            return np.frombuffer(raw, dtype=np.dtype(value["__nd__"])).reshape(value["shape"]).copy()
        if "__f__" in value:
            return float(value["__f__"])
        if "__t__" in value:
            return tuple(decode(v) for v in value["__t__"])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value
