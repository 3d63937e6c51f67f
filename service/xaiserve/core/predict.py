"""``predict``: the model's top classes for one image."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from xaiserve.core.services import Services
from xaiserve.core.types import ClassScore, Timings
from xaiserve.errors import InvalidInput
from xaiserve.imaging.decode import ImageInput, decode_image
from xaiserve.imaging.preprocess import fit_to_input
from xaiserve.models.model import Model
from xaiserve.runtime import context

MAX_TOP_K = 1000
DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class PredictInput:
    model: str
    version: str
    image: ImageInput
    top_k: int | None = None


@dataclass(frozen=True)
class Prediction:
    model: Model
    classes: list[ClassScore]
    timings: Timings


def load_image(
    services: Services, model: Model, image: ImageInput, field: str = "image"
) -> tuple[np.ndarray, float]:
    """Decode once and fit onto the model's grid; returns the image and the seconds it took."""
    t0 = time.perf_counter()
    decoded = decode_image(image, services.limits, field, model.input_size)
    fitted = fit_to_input(decoded, model.preprocessing)
    return fitted, time.perf_counter() - t0


def predict(services: Services, request: PredictInput) -> Prediction:
    start = time.perf_counter()
    model = services.repository.get(request.model, request.version)
    top_k = DEFAULT_TOP_K if request.top_k is None else request.top_k
    if not 1 <= top_k <= MAX_TOP_K:
        raise InvalidInput(f"top_k {top_k} must be between 1 and {MAX_TOP_K}")
    image, decode_s = load_image(services, model, request.image)
    probs = model.predict(image[None])[0]
    order = np.argsort(-probs, kind="stable")[: min(top_k, model.num_classes)]
    return Prediction(
        model=model,
        classes=[ClassScore.of(model, int(i), float(probs[i])) for i in order],
        timings=Timings.since(start, decode_s, context.current()),
    )
