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

    ``nested`` applies to methods that segment at several scales (the regional prediction
    difference): segment once at the finest scale (the boundary prior's ``2^8`` regions) and
    derive the coarser scales by merging adjacent regions
    (:func:`xaiserve.imaging.exact_regions.nested_scales`) instead of one independent
    segmentation per scale (Seo et al.'s Algorithm 3, the default). Single-scale methods ignore it.
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
    nested: bool = False

    def __post_init__(self) -> None:
        if self.n_segments < 1:
            raise InvalidInput("segmentation.n_segments must be at least 1")
        if self.compactness <= 0:
            raise InvalidInput("segmentation.compactness must be positive")
        if self.sigma < 0:
            raise InvalidInput("segmentation.sigma must not be negative")

    def algorithm_key(self, with_count: bool = True) -> tuple[object, ...]:
        """The fields the chosen algorithm reads (a cache key: other fields cannot change labels).

        ``with_count=False`` leaves out ``n_segments``, for callers that set the count themselves
        (the exact-count segmentation). ``nested`` is not an algorithm parameter and never part of it.
        """
        if self.algorithm == "slic":
            count = (self.n_segments,) if with_count else ()
            return ("slic", *count, self.compactness, self.sigma, self.slic_zero)
        if self.algorithm == "felzenszwalb":
            return ("felzenszwalb", self.scale, self.sigma, self.min_size)
        return (self.algorithm, self.kernel_size, self.max_dist, self.ratio, self.sigma)


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
