"""The contract between explanation methods and the rest of the service.

A method is a pure function ``explain(model, image, target, params) -> Explanation``. It never
imports gRPC, onnxruntime or device-placement code: it receives a :class:`BlackBoxModel` (forward
passes only) or a :class:`WhiteBoxModel` (which also lends a PyTorch module), so every method can
be tested with a ten-line numpy model.

Image space: every image a method sees or produces is ``float32`` of shape ``(H, W, 3)``, RGB,
values on the 0..255 scale, already at the model's input size ``(H, W)``. Heatmaps are ``(H, W)``
``float32`` on the same grid. The model applies its own normalisation and layout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from xaiserve.errors import Unimplemented

if TYPE_CHECKING:
    import torch

ImageBatch = np.ndarray
"""``(N, H, W, 3)`` float32 RGB images on the 0..255 scale."""

OutputSpace = Literal["probabilities", "raw"]


class BlackBoxModel(Protocol):
    """What black-box methods may ask of a model: its input grid, its classes, forward passes."""

    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` of the images the model takes."""
        ...

    @property
    def num_classes(self) -> int: ...

    @property
    def output_kind(self) -> Literal["logits", "probabilities"]:
        """What the network itself outputs (``predict`` can return either space)."""
        ...

    def predict(
        self, images: ImageBatch | Iterable[ImageBatch], output: OutputSpace = "probabilities"
    ) -> np.ndarray:
        """Class scores ``(N, num_classes)`` float32 for ``N`` images, in order.

        ``images`` is one ``(N, H, W, 3)`` array or an iterable of such chunks; an iterable is
        consumed lazily (a chunk is produced while the previous one runs), so a method that
        needs thousands of forward passes yields chunks and never holds them all in memory.
        ``output="probabilities"`` applies softmax to logit models; ``"raw"`` returns the
        network's own output (logits for logit models).
        """
        ...


class TorchBackend(Protocol):
    """A PyTorch module leased to one request (hooks may be attached while it is held)."""

    @property
    def module(self) -> torch.nn.Module:
        """Eval-mode module mapping the normalised input tensor to raw outputs (logits)."""
        ...

    @property
    def device(self) -> torch.device: ...

    def to_input(self, images: ImageBatch) -> torch.Tensor:
        """Preprocess image-space images into the module's input (NCHW/NHWC, normalised)."""
        ...

    def to_heatmap(self, attribution: torch.Tensor) -> np.ndarray:
        """Input-space attributions ``(N, ...)`` → image-space maps ``(N, H, W)``
        by summing over the channel axis of the model's layout."""
        ...


class WhiteBoxModel(BlackBoxModel, Protocol):
    """A model that can also lend a PyTorch module for gradient and rule-based methods."""

    def torch_backend(self) -> contextlib.AbstractContextManager[TorchBackend]:
        """Lease a module for the duration of a ``with`` block.

        The lease is exclusive: attribution hooks registered on ``backend.module`` inside the
        block cannot affect another request; they must be removed before the block ends.
        """
        ...


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
    """A registered method: its function, parameter type, backend and cost estimate.

    ``cost(params, (H, W))`` estimates the forward passes (images through the network) a
    request will need; admission control counts it against the per-request limit.
    """

    name: str
    explain: Callable[..., Explanation]
    params_type: type[Any]
    backend: Backend
    cost: Callable[[Any, tuple[int, int]], int]
    signed: bool


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    *,
    params: type[Any],
    backend: Backend,
    cost: Callable[[Any, tuple[int, int]], int],
    signed: bool,
) -> Callable[[Callable[..., Explanation]], Callable[..., Explanation]]:
    """Register ``explain`` under ``name`` (the paper's name, and the proto's oneof field)."""

    def decorate(fn: Callable[..., Explanation]) -> Callable[..., Explanation]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        _REGISTRY[name] = MethodSpec(name, fn, params, backend, cost, signed)
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
