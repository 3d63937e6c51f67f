"""What methods and metrics may ask of a model.

A method receives a :class:`BlackBoxModel` (forward passes only) or a :class:`WhiteBoxModel`
(which also lends a PyTorch module), so it never imports gRPC, onnxruntime or device-placement
code, and every method can be tested with a ten-line numpy model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np

from xaiserve.contracts.images import ImageBatch, NetworkBatch, OutputSpace
from xaiserve.contracts.input import Preprocessing

if TYPE_CHECKING:
    import torch


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


@runtime_checkable
class NetworkInputModel(Protocol):
    """A :class:`BlackBoxModel` that also takes images already in its network's input format.

    Black-box methods that send many perturbed copies of one image may convert the image once
    (:func:`xaiserve.imaging.preprocess.to_network_input` with :attr:`preprocessing`), perturb
    the converted copies and hand them to :meth:`predict_network_input`, skipping the
    conversion of every copy. Since the conversion is elementwise, perturbing in network space
    with values converted the same way gives bit-identical inputs. A model without these two
    members (a test wrapper implementing ``predict`` only) gets image-space images through
    ``predict``: check with ``isinstance(model, NetworkInputModel)``.
    """

    @property
    def preprocessing(self) -> Preprocessing:
        """How the model turns image-space pixels into its input tensor."""
        ...

    def predict_network_input(
        self, inputs: NetworkBatch | Iterable[NetworkBatch], output: OutputSpace = "probabilities"
    ) -> np.ndarray:
        """As ``predict``, for ``(N, 3, H, W)`` (NCHW) or ``(N, H, W, 3)`` (NHWC) float32
        chunks already in the network's input format (``preprocessing`` applied)."""
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
