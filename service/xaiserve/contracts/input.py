"""A model's input: the grid it takes and how image-space pixels become its input tensor.

:class:`Preprocessing` is validated once, when it is built (for a served model: when its
``config.toml`` is loaded, as part of :class:`InputConfig`). Every consumer — the numpy path
(:func:`xaiserve.imaging.preprocess.to_network_input`) and the torch path
(:class:`xaiserve.runtime.torch_backend.TorchLease`) — reads the same validated object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from xaiserve.errors import InvalidInput

Layout = Literal["NCHW", "NHWC"]
ChannelOrder = Literal["RGB", "BGR"]
Resize = Literal["stretch", "center_crop"]


@dataclass(frozen=True)
class Preprocessing:
    """How image-space pixels (RGB, 0..255) become the network's input tensor.

    Pixel ``p`` maps linearly onto ``value_range``: ``v = lo + (hi - lo) * p / 255``; then the
    channels are put in ``channel_order`` and normalised per channel, ``(v - mean[c]) / std[c]``
    (``mean``/``std`` given in the model's channel order); finally the tensor takes ``layout``.
    """

    layout: Layout = "NCHW"
    channel_order: ChannelOrder = "RGB"
    value_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.layout not in ("NCHW", "NHWC"):
            raise InvalidInput(f"layout {self.layout!r} is unknown; choose NCHW or NHWC")
        if self.channel_order not in ("RGB", "BGR"):
            raise InvalidInput(f"channel_order {self.channel_order!r}: choose RGB or BGR")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise InvalidInput("mean and std need one value per colour channel (3)")
        if any(s <= 0 for s in self.std):
            raise InvalidInput("std values must be positive")
        lo, hi = self.value_range
        if not hi > lo:
            raise InvalidInput(f"value_range {self.value_range!r} must be increasing")

    @property
    def channel_axis(self) -> int:
        """Axis of the colour channels in the network's input tensor."""
        return 1 if self.layout == "NCHW" else 3


@dataclass(frozen=True, kw_only=True)
class InputConfig(Preprocessing):
    """The ``[input]`` table of a model's ``config.toml``: its grid, its input's name, how
    images are resized onto the grid, and its preprocessing."""

    height: int
    width: int
    name: str = ""
    resize: Resize = "stretch"
