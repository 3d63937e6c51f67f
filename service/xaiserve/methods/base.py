"""The contract between explanation methods and the rest of the service.

A method is a pure function ``explain(model, image, target, params) -> Explanation``. It never
imports gRPC, onnxruntime or device-placement code: it receives a :class:`BlackBoxModel` (forward
passes only) or a :class:`WhiteBoxModel` (which also lends a PyTorch module) — both leaf
contracts of :mod:`xaiserve.contracts.models` — so every method can be tested with a ten-line
numpy model.

Image space: every image a method sees or produces is ``float32`` of shape ``(H, W, 3)``, RGB,
values on the 0..255 scale, already at the model's input size ``(H, W)``. Heatmaps are ``(H, W)``
``float32`` on the same grid. The model applies its own normalisation and layout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from xaiserve.contracts.footprint import MemoryShape, default_memory
from xaiserve.contracts.images import ImageBatch, OutputSpace
from xaiserve.contracts.models import BlackBoxModel, TorchBackend, WhiteBoxModel
from xaiserve.errors import Unimplemented

__all__ = [
    "BlackBoxModel",
    "Explanation",
    "ImageBatch",
    "MethodSpec",
    "OutputSpace",
    "Target",
    "TorchBackend",
    "WhiteBoxModel",
    "chunked",
    "get_method",
    "register_method",
    "registered_methods",
]


@dataclass(frozen=True)
class Target:
    """The class to explain, and optionally the class to contrast it with."""

    index: int
    contrast: int | None = None


@dataclass
class Explanation:
    """What a method returns.

    ``heatmap`` is ``(H, W)`` float32. ``signed`` says whether negative values carry meaning
    (evidence against). ``maps`` holds method extras that are arrays (per-scale maps, the
    contrast class's map, masks); ``values`` holds scalar extras. ``target_probability`` is
    p(target | image) if the method computed it anyway (saves the service a forward pass).
    """

    heatmap: np.ndarray
    signed: bool
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    target_probability: float | None = None


Backend = Literal["blackbox", "whitebox"]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its function, parameter type, backend, cost estimate and whether
    its maps are signed by default (``Explanation.signed`` says it per result).

    ``cost(params, (H, W))`` estimates the forward passes (images through the network) a
    request will need; admission control counts it against the per-request limit.
    """

    name: str
    explain: Callable[..., Explanation]
    params_type: type[Any]
    backend: Backend
    cost: Callable[[Any, tuple[int, int]], int]
    signed: bool
    memory: MemoryShape = default_memory
    """Peak bytes the method allocates for ``(params, (H, W), num_classes)``, in O(1) (see
    :mod:`xaiserve.contracts.footprint`)."""
    warmup: Callable[[Any, tuple[int, int]], Any] | None = None
    """``warmup(default_params, (H, W))`` → the parameters of the load-time warm-up run
    (:mod:`xaiserve.models.warmup`): the same code paths and batch shapes as a request, fewer
    forward passes. ``None``: the defaults are cheap enough as they are."""

    @property
    def model_backend(self) -> str:
        """The model backend the method runs on: ``"onnx"`` (forward passes) or ``"torch"``."""
        return "onnx" if self.backend == "blackbox" else "torch"


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    *,
    params: type[Any],
    backend: Backend,
    cost: Callable[[Any, tuple[int, int]], int],
    signed: bool,
    memory: MemoryShape = default_memory,
    warmup: Callable[[Any, tuple[int, int]], Any] | None = None,
) -> Callable[[Callable[..., Explanation]], Callable[..., Explanation]]:
    """Register ``explain`` under ``name`` (the paper's name, and the proto's oneof field)."""

    def decorate(fn: Callable[..., Explanation]) -> Callable[..., Explanation]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        _REGISTRY[name] = MethodSpec(name, fn, params, backend, cost, signed, memory, warmup)
        return fn

    return decorate


def get_method(name: str) -> MethodSpec:
    """The registered method, or :class:`Unimplemented` naming it."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise Unimplemented(f"method {name!r} is not implemented by this server") from None


def registered_methods() -> dict[str, MethodSpec]:
    return dict(_REGISTRY)


def chunked(images: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Group single images ``(H, W, 3)`` from an iterator into ``(n ≤ size, H, W, 3)`` chunks."""
    buf: list[np.ndarray] = []
    for image in images:
        buf.append(image)
        if len(buf) == size:
            yield np.stack(buf)
            buf = []
    if buf:
        yield np.stack(buf)
