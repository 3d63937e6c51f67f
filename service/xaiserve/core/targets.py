"""Target resolution: which class to explain (and contrast), and the probabilities it took."""

from __future__ import annotations

import numpy as np

from xaiserve.core.types import ClassRef
from xaiserve.errors import InvalidInput
from xaiserve.methods.base import Target
from xaiserve.models.model import Model


def resolve_class(ref: ClassRef, model: Model, field: str) -> int | None:
    """Class index for a reference; ``None`` means "the predicted class" (unset or predicted)."""
    if ref.index is not None:
        if ref.index >= model.num_classes:
            raise InvalidInput(
                f"{field}.index {ref.index} is out of range: model {model.name!r} has "
                f"{model.num_classes} classes (0..{model.num_classes - 1})"
            )
        return int(ref.index)
    if ref.label is not None:
        try:
            return model.labels.index(ref.label)
        except ValueError:
            shown = ", ".join(model.labels[:20])
            raise InvalidInput(
                f"{field}.label {ref.label[:64]!r} is not a label of {model.name!r} ({shown})"
            ) from None
    return None


def resolve_target(
    model: Model, image: np.ndarray, target: ClassRef, contrast: ClassRef | None
) -> tuple[Target, np.ndarray | None]:
    """The target (and contrast) classes; the probabilities when a prediction was needed to
    find them (the predicted class), else ``None``."""
    index = resolve_class(target, model, "target")
    contrast_index = None
    if contrast is not None and contrast.is_set:
        contrast_index = resolve_class(contrast, model, "contrast")
    contrast_predicted = contrast is not None and contrast.predicted
    probs = None
    if index is None or contrast_predicted:
        probs = model.predict(image[None])[0]
        predicted = int(np.argmax(probs))
        index = predicted if index is None else index
        if contrast_predicted:
            contrast_index = predicted
    return Target(index=index, contrast=contrast_index), probs


def probabilities(model: Model, image: np.ndarray, known: np.ndarray | None) -> np.ndarray:
    """The model's probabilities for ``image``: those already computed, else one forward pass
    (the probability backfill of a response)."""
    return known if known is not None else model.predict(image[None])[0]
