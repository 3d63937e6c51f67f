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

# Upper bounds checked at validation, so that segmentation time is bounded by the image alone
# (a Gaussian of σ touches ~8σ pixels per pixel and axis; quickshift a (6·kernel_size)² window).
MAX_SEGMENTS = 1 << 20
MAX_COMPACTNESS = 1e4
MAX_SIGMA = 16.0
MAX_SCALE = 1e6
MAX_MIN_SIZE = 1 << 20
MAX_KERNEL_SIZE = 16.0
MAX_DIST = 1e4


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
        if not 1 <= self.n_segments <= MAX_SEGMENTS:
            raise InvalidInput(
                f"segmentation.n_segments must be at least 1 and at most {MAX_SEGMENTS}"
            )
        if not 0 < self.compactness <= MAX_COMPACTNESS:
            raise InvalidInput(f"segmentation.compactness must be in (0, {MAX_COMPACTNESS:g}]")
        if not 0 <= self.sigma <= MAX_SIGMA:
            raise InvalidInput(
                f"segmentation.sigma is {self.sigma:g}; it must be in 0..{MAX_SIGMA:g} (pixels)"
            )
        if not 0 < self.scale <= MAX_SCALE:
            raise InvalidInput(f"segmentation.scale must be in (0, {MAX_SCALE:g}]")
        if not 0 <= self.min_size <= MAX_MIN_SIZE:
            raise InvalidInput(f"segmentation.min_size must be in 0..{MAX_MIN_SIZE} (pixels)")
        if not 0 < self.kernel_size <= MAX_KERNEL_SIZE:
            raise InvalidInput(
                f"segmentation.kernel_size is {self.kernel_size:g}; it must be in "
                f"(0, {MAX_KERNEL_SIZE:g}] (quickshift's cost grows with its square)"
            )
        if not 0 < self.max_dist <= MAX_DIST:
            raise InvalidInput(f"segmentation.max_dist must be in (0, {MAX_DIST:g}]")
        if not 0 <= self.ratio <= 1:
            raise InvalidInput("segmentation.ratio must be in 0..1")

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
