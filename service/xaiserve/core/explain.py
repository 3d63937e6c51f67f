"""``explain``: one method on one image, with the service's decisions around it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from xaiserve.core.methods import ResolvedMethod, resolve_method, run_method
from xaiserve.core.predict import load_image
from xaiserve.core.services import Services
from xaiserve.core.targets import probabilities, resolve_target
from xaiserve.core.types import ClassRef, ClassScore, MethodChoice, Provenance, Timings
from xaiserve.imaging.decode import ImageInput
from xaiserve.methods.base import Explanation, Target
from xaiserve.models.model import Model
from xaiserve.runtime import context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExplainInput:
    model: str
    version: str
    image: ImageInput
    method: MethodChoice
    target: ClassRef = field(default_factory=ClassRef)
    contrast: ClassRef | None = None


@dataclass(frozen=True)
class ExplainResult:
    """The method's explanation (heatmap made finite), the scored target and contrast, the
    forward passes the request made, its timings and provenance."""

    model: Model
    method: ResolvedMethod
    explanation: Explanation
    heatmap: np.ndarray
    target: ClassScore
    contrast: ClassScore | None
    forward_passes: int
    timings: Timings
    provenance: Provenance


def explain(services: Services, request: ExplainInput) -> ExplainResult:
    ctx = context.current()
    start = time.perf_counter()
    model = services.repository.get(request.model, request.version)
    method = resolve_method(services, model, request.method)
    image, decode_s = load_image(services, model, request.image)
    target, probs = resolve_target(model, image, request.target, request.contrast)
    t1 = time.perf_counter()
    with services.memory.reserve(method.footprint.bytes, method.footprint.knob):
        explanation = run_method(model, image, target, method)
    method_s = time.perf_counter() - t1
    ctx.check()
    if probs is None and (explanation.target_probability is None or target.contrast is not None):
        probs = probabilities(model, image, probs)
    return ExplainResult(
        model=model,
        method=method,
        explanation=explanation,
        heatmap=finite(explanation.heatmap, "heatmap"),
        target=ClassScore.of(model, target.index, _target_probability(explanation, probs, target)),
        contrast=_contrast(model, target, probs),
        forward_passes=ctx.forward_passes,
        timings=Timings.since(start, decode_s, ctx, method_s),
        provenance=Provenance.of(
            model, method.spec.name, method.params_dict, method.seed, method.spec.model_backend
        ),
    )


def _target_probability(
    explanation: Explanation, probs: np.ndarray | None, target: Target
) -> float:
    if probs is not None:
        return float(probs[target.index])
    return float(explanation.target_probability or 0.0)


def _contrast(model: Model, target: Target, probs: np.ndarray | None) -> ClassScore | None:
    if target.contrast is None or probs is None:
        return None
    return ClassScore.of(model, target.contrast, float(probs[target.contrast]))


def finite(array: np.ndarray, what: str) -> np.ndarray:
    """``float32``, with non-finite values replaced by 0 (and a warning in the log)."""
    arr = np.asarray(array, dtype=np.float32)
    if not np.isfinite(arr).all():
        log.warning("%s had non-finite values; replaced by 0", what)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    return arr
