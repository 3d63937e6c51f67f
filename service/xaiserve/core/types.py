"""Domain value types of the use cases (what ``api/`` converts protobuf to and from)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from xaiserve.models.model import Model
from xaiserve.runtime.context import RequestContext


@dataclass(frozen=True)
class ClassRef:
    """A class as the client named it: an ``index``, a ``label``, ``predicted`` (the model's
    top class) or nothing (for a target: the predicted class; for a contrast: none)."""

    index: int | None = None
    label: str | None = None
    predicted: bool = False

    @property
    def is_set(self) -> bool:
        return self.index is not None or self.label is not None or self.predicted


@dataclass(frozen=True)
class MethodChoice:
    """A method by its registered name with the parameters the client set (a plain mapping;
    unset fields take the method's defaults). ``name=None``: the client chose none."""

    name: str | None
    params: Mapping[str, Any] = field(default_factory=dict)
    field: str = "method"


@dataclass(frozen=True)
class ClassScore:
    index: int
    label: str
    probability: float

    @classmethod
    def of(cls, model: Model, index: int, probability: float) -> ClassScore:
        return cls(index=index, label=model.labels[index], probability=float(probability))


@dataclass(frozen=True)
class Timings:
    total_seconds: float = 0.0
    decode_seconds: float = 0.0
    method_seconds: float = 0.0
    inference_seconds: float = 0.0
    queue_seconds: float = 0.0

    @classmethod
    def since(
        cls, start: float, decode_s: float, ctx: RequestContext, method_s: float = 0.0
    ) -> Timings:
        """Wall time since ``start`` (``time.perf_counter``), with the request's inference and
        queue time from its context."""
        return cls(
            total_seconds=time.perf_counter() - start,
            decode_seconds=decode_s,
            method_seconds=method_s,
            inference_seconds=ctx.inference_seconds,
            queue_seconds=ctx.queue_seconds,
        )


@dataclass(frozen=True)
class Provenance:
    """What produced a result: the model version, the method and its effective parameters
    (seed included), and the backend it ran on."""

    model: str
    version: str
    model_sha256: str
    method: str
    parameters: dict[str, Any]
    seed: int | None
    backend: str

    @classmethod
    def of(
        cls, model: Model, method: str, parameters: dict[str, Any], seed: int | None, backend: str
    ) -> Provenance:
        return cls(model.name, model.version, model.sha256, method, parameters, seed, backend)
