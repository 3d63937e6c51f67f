"""Superpixel segmentation (scikit-image) into interpretable regions.

All functions take an image-space image ``(H, W, 3)`` float32 on 0..255 and return an ``int32``
label map ``(H, W)`` with contiguous labels ``0..K-1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from skimage.segmentation import felzenszwalb, quickshift, slic

from xaiserve.errors import InvalidInput

Algorithm = Literal["slic", "felzenszwalb", "quickshift"]


@dataclass(frozen=True)
class SegmentationParams:
    """Parameters of the superpixel algorithms (scikit-image names).

    ``n_segments`` applies to SLIC; ``scale``/``sigma``/``min_size`` to Felzenszwalb;
    ``kernel_size``/``max_dist``/``ratio`` to quickshift. ``compactness`` and ``sigma`` apply to SLIC.
    """

    algorithm: Algorithm = "slic"
    n_segments: int = 50
    compactness: float = 10.0
    sigma: float = 1.0
    scale: float = 100.0
    min_size: int = 20
    kernel_size: float = 3.0
    max_dist: float = 6.0
    ratio: float = 0.5
    slic_zero: bool = True

    def __post_init__(self) -> None:
        if self.n_segments < 1:
            raise InvalidInput("segmentation.n_segments must be at least 1")
        if self.compactness <= 0:
            raise InvalidInput("segmentation.compactness must be positive")
        if self.sigma < 0:
            raise InvalidInput("segmentation.sigma must not be negative")


def superpixels(image: np.ndarray, params: SegmentationParams) -> np.ndarray:
    """Segment ``image`` with the chosen algorithm; labels are contiguous from 0."""
    rgb = np.clip(image, 0, 255).astype(np.float64) / 255.0
    if params.algorithm == "slic":
        labels = slic(
            rgb,
            n_segments=params.n_segments,
            compactness=params.compactness,
            sigma=params.sigma,
            start_label=0,
            channel_axis=-1,
            slic_zero=params.slic_zero,
        )
    elif params.algorithm == "felzenszwalb":
        labels = felzenszwalb(
            rgb, scale=params.scale, sigma=params.sigma, min_size=params.min_size, channel_axis=-1
        )
    elif params.algorithm == "quickshift":
        labels = quickshift(
            rgb,
            kernel_size=params.kernel_size,
            max_dist=params.max_dist,
            ratio=params.ratio,
            sigma=params.sigma,
            channel_axis=-1,
        )
    else:
        raise InvalidInput(
            f"segmentation.algorithm {params.algorithm!r} is unknown; "
            "choose slic, felzenszwalb or quickshift"
        )
    return relabel_contiguous(labels)


def relabel_contiguous(labels: np.ndarray) -> np.ndarray:
    """Map arbitrary integer labels onto ``0..K-1`` preserving their order."""
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int32)


def region_masks(labels: np.ndarray) -> np.ndarray:
    """Boolean masks ``(K, H, W)``, one per region of a contiguous label map."""
    k = int(labels.max()) + 1
    return labels[None, :, :] == np.arange(k, dtype=labels.dtype)[:, None, None]
