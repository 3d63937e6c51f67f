"""Convex hull of the most important pixels: RC and RS (Mazini Rodrigues et al., GAD, Section 5).

The paper groups the most important pixels of an attribution map into one region, their convex
hull ``CH``, represented as a binary mask ``M`` ("internal or boundary pixels within the convex
hull are assigned 1"). To build it, the least important 50 % of pixels are filtered out.

* Eq. 1: ``RC = A(CH_GAD) / A(CH_Orig)``, a ratio of two hull areas. The service reports one
  heatmap at a time, so :func:`hull_area_ratio` divides by the area of a reference hull when
  given, and by the image area otherwise (the proto's ``area_ratio``: hull area / image area).
* Eq. 2: ``RS(I, M, a) = |N_a(I) − N_a(I × (1 − M))| / Σ_{i,j} M_{i,j}``. ``N_a`` is the
  network's *raw* output for class ``a``: the paper works on pre-softmax activations throughout
  (Section 3) and its Table 2 values (×10²) only fit output changes on the logit scale. The
  occlusion ``I × (1 − M)`` zeroes the hull's pixels in image space (black on 0..255).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from xaiserve.contracts.models import BlackBoxModel
from xaiserve.errors import InvalidInput

_TOLERANCE = 1e-9


@dataclass(frozen=True)
class ConvexHullResult:
    """Field names follow the proto ``ConvexHull`` message: RC (Eq. 1) and RS (Eq. 2)."""

    area_ratio: float
    sensitivity: float


def important_pixels(heatmap: np.ndarray, keep_fraction: float = 0.5) -> np.ndarray:
    """The most important pixels: those at or above the ``k``-th largest heatmap value, with
    ``k = ceil(keep_fraction · H · W)``. Pixels tied with the ``k``-th value are all kept (no
    raster-order bias), so slightly more than the fraction may be kept."""
    hm = np.asarray(heatmap, dtype=np.float64)
    if hm.ndim != 2 or hm.size == 0:
        raise InvalidInput(f"heatmap has shape {hm.shape}; it must be a non-empty (H, W)")
    if not np.all(np.isfinite(hm)):
        raise InvalidInput("heatmap contains NaN or infinite values; send finite relevances")
    if not 0.0 < keep_fraction <= 1.0:
        raise InvalidInput(f"hull_keep_fraction is {keep_fraction}; it must be in (0, 1]")
    k = int(np.ceil(keep_fraction * hm.size - 1e-9))
    threshold = np.partition(hm.ravel(), hm.size - k)[hm.size - k]
    return hm >= threshold


def convex_hull_mask(mask: np.ndarray) -> np.ndarray:
    """Pixels whose centres lie inside or on the convex hull of the centres of ``mask``'s pixels.

    Collinear selections give the segment's pixels, a single pixel gives itself.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise InvalidInput(f"mask has shape {m.shape}; it must be (H, W)")
    if not m.any():
        raise InvalidInput("mask selects no pixels; there is no convex hull")
    # Only each row's first and last selected pixel can be a hull vertex.
    rows = np.flatnonzero(m.any(axis=1))
    first = m[rows].argmax(axis=1)
    last = m.shape[1] - 1 - m[rows, ::-1].argmax(axis=1)
    ends = np.concatenate([np.column_stack([rows, first]), np.column_stack([rows, last])])
    points = np.unique(ends, axis=0).astype(np.float64)
    grid = np.indices(m.shape).reshape(2, -1).T.astype(np.float64)
    try:
        hull = ConvexHull(points)
    except (QhullError, ValueError):
        return _segment_mask(points, grid, m.shape)
    # hull.equations: normal · p + offset ≤ 0 inside.
    inside = grid @ hull.equations[:, :2].T + hull.equations[:, 2] <= _TOLERANCE
    return inside.all(axis=1).reshape(m.shape)


def _segment_mask(points: np.ndarray, grid: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Degenerate hull (a point or collinear points): the pixels on the segment."""
    a = points[0]
    d = points - a
    far = points[np.argmax((d**2).sum(axis=1))]
    v = far - a
    length2 = float(v @ v)
    if length2 == 0.0:
        return ((grid == a).all(axis=1)).reshape(shape)
    g = grid - a
    cross = g[:, 0] * v[1] - g[:, 1] * v[0]
    t = (g @ v) / length2
    on = (np.abs(cross) <= _TOLERANCE * np.sqrt(length2)) & (t >= -_TOLERANCE)
    on &= t <= 1 + _TOLERANCE
    return on.reshape(shape)


def convex_hull(heatmap: np.ndarray, keep_fraction: float = 0.5) -> np.ndarray:
    """The hull mask ``M`` of the ``keep_fraction`` most important pixels (paper: 0.5)."""
    return convex_hull_mask(important_pixels(heatmap, keep_fraction))


def hull_area_ratio(hull_mask: np.ndarray, reference_mask: np.ndarray | None = None) -> float:
    """RC (Eq. 1): the hull's area over the reference hull's area, or over the image area when
    there is no reference (proto ``ConvexHull.area_ratio``)."""
    m = np.asarray(hull_mask, dtype=bool)
    if reference_mask is None:
        return float(m.sum() / m.size)
    ref = np.asarray(reference_mask, dtype=bool)
    if ref.shape != m.shape:
        raise InvalidInput(f"reference hull has shape {ref.shape}, the hull {m.shape}")
    if not ref.any():
        raise InvalidInput("reference hull is empty; RC is undefined")
    return float(m.sum() / ref.sum())


def hull_sensitivity(
    model: BlackBoxModel, image: np.ndarray, hull_mask: np.ndarray, target_index: int
) -> float:
    """RS (Eq. 2): ``|N_a(I) − N_a(I × (1 − M))| / Σ M`` with ``N_a`` the raw output (logit) of
    class ``a = target_index``; one ``predict`` call of two images."""
    img = np.asarray(image, dtype=np.float32)
    m = np.asarray(hull_mask, dtype=bool)
    if img.ndim != 3 or img.shape[2] != 3:
        raise InvalidInput(f"image has shape {img.shape}; it must be (H, W, 3) RGB")
    if m.shape != img.shape[:2]:
        raise InvalidInput(f"hull mask has shape {m.shape} but the image grid is {img.shape[:2]}")
    area = int(m.sum())
    if area == 0:
        raise InvalidInput("hull mask is empty; RS divides by its area")
    if not 0 <= target_index < model.num_classes:
        raise InvalidInput(
            f"target index {target_index} is out of range; the model has {model.num_classes} classes"
        )
    occluded = img * (1.0 - m[..., None].astype(np.float32))
    raw = np.asarray(model.predict(np.stack([img, occluded]), output="raw"), dtype=np.float64)
    return float(abs(raw[0, target_index] - raw[1, target_index]) / area)


def convex_hull_scores(
    model: BlackBoxModel,
    image: np.ndarray,
    heatmap: np.ndarray,
    target_index: int,
    keep_fraction: float = 0.5,
) -> ConvexHullResult:
    """RC (hull area / image area) and RS of the hull of the most important pixels."""
    hull = convex_hull(heatmap, keep_fraction)
    return ConvexHullResult(
        area_ratio=hull_area_ratio(hull),
        sensitivity=hull_sensitivity(model, image, hull, target_index),
    )
