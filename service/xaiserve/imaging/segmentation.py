"""Superpixel segmentation (scikit-image) into interpretable regions.

All functions take an image-space image ``(H, W, 3)`` float32 on 0..255 and return an ``int32``
label map ``(H, W)`` with contiguous labels ``0..K-1``.

SLIC in two halves. scikit-image's ``slic`` first prepares the image — rescale to 0..1, CIELAB,
Gaussian smoothing of width ``sigma``, × ``1/compactness`` — and then clusters it for the
requested ``n_segments``. The preparation (≈ 40 % of a call at 224²) does not depend on the
count, and Algorithm 3 segments one image at six or more counts, so :func:`slic_input` prepares
once and :func:`slic_from_input` runs scikit-image's own clustering and connectivity steps on the
prepared image: the labels are those of ``slic`` bit for bit (tested against it, and checked at
first use: if this scikit-image differs, :func:`superpixels` calls ``slic`` as a whole).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Literal

import numpy as np
from skimage.segmentation import felzenszwalb, quickshift, slic

from xaiserve.errors import InvalidInput

log = logging.getLogger(__name__)

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


def superpixels(
    image: np.ndarray, params: SegmentationParams, prepared: np.ndarray | None = None
) -> np.ndarray:
    """Segment ``image`` with the chosen algorithm; labels are contiguous from 0.

    ``prepared`` (SLIC only) is :func:`slic_input` of ``image`` with ``params``' ``sigma`` and
    ``compactness``, shared by the calls of one image at several counts.
    """
    if params.algorithm == "slic" and (prepared is not None or split_slic_usable()):
        if prepared is None:
            prepared = slic_input(image, params)
        return relabel_contiguous(slic_from_input(prepared, params))
    rgb = _unit_rgb(image)
    if params.algorithm == "slic":
        labels = _slic_whole(rgb, params)
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


def _unit_rgb(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0, 255).astype(np.float64) / 255.0


def _slic_whole(rgb: np.ndarray, params: SegmentationParams) -> np.ndarray:
    """scikit-image's ``slic`` called whole on a 0..1 RGB image, as the service calls it."""
    return np.asarray(
        slic(
            rgb,
            n_segments=params.n_segments,
            compactness=params.compactness,
            sigma=params.sigma,
            start_label=0,
            channel_axis=-1,
            slic_zero=params.slic_zero,
        )
    )


SLIC_MAX_ITER = 10
"""scikit-image's default ``max_num_iter`` (what :func:`superpixels` has always used)."""


def slic_input(image: np.ndarray, params: SegmentationParams) -> np.ndarray:
    """The image as scikit-image's ``slic`` clusters it: ``(1, H, W, 3)`` float64.

    The steps of ``skimage.segmentation.slic`` (0.24–0.26) before its clustering, for an RGB
    image without mask or spacing: rescale to 0..1 by the image's own range, CIELAB, Gaussian of
    ``sigma`` (reflect), × ``1/compactness``. Depends on ``sigma`` and ``compactness`` only.
    Shared between calls: :func:`slic_from_input` reads it and never writes it.
    """
    from skimage._shared.filters import gaussian
    from skimage.color import rgb2lab

    rgb = _unit_rgb(image)  # what superpixels() hands to slic; img_as_float keeps float64 as is
    lo, hi = rgb.min(), rgb.max()
    if np.isnan(lo):
        raise InvalidInput("the image has NaN pixels")
    rgb -= lo
    if hi != lo:
        rgb /= hi - lo
    lab = rgb2lab(rgb[np.newaxis])
    sigma = np.array([params.sigma] * 3, dtype=np.float64)
    sigma /= np.ones(3, dtype=np.float64)  # slic divides by the (unit) spacing
    if (sigma > 0).any():
        lab = gaussian(lab, sigma=[*sigma, 0], mode="reflect")
    # writeable: scikit-image's Cython takes a writeable buffer (it only reads it)
    return np.ascontiguousarray(lab * (1.0 / params.compactness), dtype=np.float64)


def slic_from_input(prepared: np.ndarray, params: SegmentationParams) -> np.ndarray:
    """scikit-image's SLIC clustering and connectivity steps on :func:`slic_input`'s array.

    Returns the labels ``slic(..., start_label=0)`` returns (``(H, W)``, as scikit-image types
    them). ``prepared`` is read, never written.
    """
    from skimage.segmentation._slic import (
        _enforce_label_connectivity_cython,
        _slic_cython,
    )
    from skimage.segmentation.slic_superpixels import _get_grid_centroids

    centroids, steps = _get_grid_centroids(prepared, params.n_segments)
    n_centroids = centroids.shape[0]
    segments = np.ascontiguousarray(
        np.concatenate([centroids, np.zeros((n_centroids, prepared.shape[3]))], axis=-1),
        dtype=np.float64,
    )
    labels = _slic_cython(
        prepared,
        None,
        segments,
        max(steps),
        SLIC_MAX_ITER,
        np.ones(3, dtype=np.float64),
        params.slic_zero,
        ignore_color=False,
        start_label=0,
    )
    segment_size = math.prod(prepared.shape[:3]) / n_centroids
    labels = _enforce_label_connectivity_cython(
        labels, int(0.5 * segment_size), int(3 * segment_size), start_label=0
    )
    return labels[0]  # type: ignore[no-any-return]


_split_checked: bool | None = None
_split_lock = threading.Lock()


def split_slic_usable() -> bool:
    """Whether :func:`slic_from_input` reproduces this scikit-image's ``slic`` (checked once, on
    a small textured image at three counts and both ``slic_zero`` settings; a mismatch or an
    error logs a warning and :func:`superpixels` then calls ``slic`` whole)."""
    global _split_checked
    with _split_lock:
        if _split_checked is None:
            _split_checked = _check_split_slic()
        return _split_checked


def _check_split_slic() -> bool:
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:48, :40]
    image = np.stack([4.0 * yy, 5.0 * xx, 120.0 + 60.0 * np.sin(xx / 5.0)], axis=-1)
    image = np.clip(image + rng.normal(0.0, 12.0, image.shape), 0, 255).astype(np.float32)
    try:
        for n, zero, sigma in ((3, True, 1.0), (17, False, 0.0), (60, True, 2.0)):
            params = SegmentationParams(n_segments=n, slic_zero=zero, sigma=sigma)
            whole = _slic_whole(_unit_rgb(image), params)
            split = slic_from_input(slic_input(image, params), params)
            if not np.array_equal(whole, split):
                raise ValueError(f"labels differ at n_segments={n}")
    except Exception as exc:  # a scikit-image whose internals moved: use slic() as a whole
        log.warning("SLIC runs without sharing its preparation across counts: %s", exc)
        return False
    return True


def slic_input_bytes(shape: tuple[int, ...]) -> int:
    """Bytes of :func:`slic_input` for an image of ``shape`` ``(H, W, 3)``."""
    return 8 * int(np.prod(shape))


def relabel_contiguous(labels: np.ndarray) -> np.ndarray:
    """Map arbitrary integer labels onto ``0..K-1`` preserving their order."""
    if (
        labels.size
        and labels.dtype.kind in "iu"
        and 0 <= labels.min() <= labels.max() < 4 * labels.size
    ):
        present = np.bincount(labels.ravel()) > 0
        if present.all():  # already contiguous (SLIC with start_label=0): a copy, no sort
            return labels.astype(np.int32)
        remap = np.cumsum(present, dtype=np.int64) - 1
        return remap[labels].astype(np.int32)
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int32)


def region_masks(labels: np.ndarray) -> np.ndarray:
    """Boolean masks ``(K, H, W)``, one per region of a contiguous label map."""
    k = int(labels.max()) + 1
    return labels[None, :, :] == np.arange(k, dtype=labels.dtype)[:, None, None]
