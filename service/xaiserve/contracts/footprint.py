"""What a request will cost before it starts: peak memory, and batch sizes from a memory budget.

Every registered method declares, next to its forward-pass estimate (``cost``), the shape of its
memory (``memory``): a :class:`Footprint` computed in O(1) from the parameters and the model's
input grid — never by building the thing it measures. The service refuses a request whose
footprint is over the per-request limit (``max_request_bytes``) with RESOURCE_EXHAUSTED naming
``Footprint.knob``, the parameter to lower, and holds the footprint against the server-wide
budget (``memory_budget_bytes``) while the request runs.

The estimates count what the method itself allocates (perturbed-image chunks, integration
tables, noise samples, segment masks); the model's batches are bounded separately by the
batcher (``max_batch_size``) and, for torch methods, by :func:`torch_batch` below, whose
budget is part of every white-box footprint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xaiserve.errors import LimitExceeded

FLOAT32 = 4
FLOAT64 = 8

TORCH_BATCH_BYTES = 256 * 2**20
"""Default memory budget of one batch through a torch module (``torch_batch_bytes``)."""

ACTIVATION_FACTOR = 64
"""Activations plus gradients of a forward and backward pass, in multiples of the input
tensor's bytes. A conservative figure for image classifiers at their input resolution (small
CNNs need ~10×, a ResNet-50 at 224² ~150× but is rarely served on a memory-bound CPU): it
sets :func:`torch_batch`, which only decides how many images go through at once, never the
result."""


@dataclass(frozen=True)
class Footprint:
    """Peak bytes a request allocates beyond the model's own batches, and the parameter that
    drives them (named in the refusal so the client knows what to lower)."""

    bytes: int
    knob: str

    def __add__(self, other: Footprint) -> Footprint:
        knob = self.knob if self.bytes >= other.bytes else other.knob
        return Footprint(self.bytes + other.bytes, knob)


def image_bytes(size: tuple[int, int]) -> int:
    """One ``(H, W, 3)`` float32 image-space image."""
    return FLOAT32 * 3 * size[0] * size[1]


MemoryShape = Callable[[Any, tuple[int, int], int], Footprint]
"""``memory(params, (H, W), num_classes) -> Footprint``, declared by every method."""


def default_memory(params: Any, size: tuple[int, int], num_classes: int) -> Footprint:
    """A method that holds a handful of image-sized arrays (the image, its map, a fill)."""
    return Footprint(8 * image_bytes(size), "image")


def scores_bytes(passes: int, num_classes: int) -> int:
    """The ``(passes, C)`` scores one ``predict`` call returns, as float32 plus the float64
    copy (or softmax) methods take of them."""
    return (FLOAT32 + FLOAT64) * passes * max(1, num_classes)


def torch_batch(budget_bytes: int, size: tuple[int, int], requested: int = 0) -> int:
    """Images per batch through a torch module: what ``budget_bytes`` allows at
    :data:`ACTIVATION_FACTOR` × the input bytes, never more than ``requested`` when the client
    asked for fewer (0 = no request), never less than 1."""
    per_image = ACTIVATION_FACTOR * image_bytes(size)
    allowed = max(1, budget_bytes // per_image)
    return max(1, min(allowed, requested)) if requested > 0 else allowed


def torch_memory(budget_bytes: int, size: tuple[int, int], batch: int) -> int:
    """Peak bytes of ``batch`` images through a torch module (at most the batch budget)."""
    return min(budget_bytes, batch * ACTIVATION_FACTOR * image_bytes(size))


def check_footprint(footprint: Footprint, limit: int, what: str) -> None:
    """Refuse a request whose declared peak memory is over the per-request ``limit``."""
    if footprint.bytes > limit:
        raise LimitExceeded(
            f"{what} would need about {footprint.bytes / 2**20:.0f} MiB, over the per-request "
            f"limit of {limit / 2**20:.0f} MiB (max_request_bytes): lower {footprint.knob}"
        )
