"""Localisation of relevance on a ground-truth object.

* Kohlbrenner et al., "Towards best practice in explaining neural network decisions with LRP",
  Section 3.2, Eq. 2: the inside-total relevance ratio ``μ = R_in / R_tot`` and its size-weighted
  variant ``μ_w = μ · S_tot / S_in``. ``R_in`` is the sum of *positive* relevance inside the
  object (bounding boxes or a mask), ``R_tot`` the sum of positive relevance in the image,
  ``S_in`` / ``S_tot`` the object's and the image's size in pixels. A uniform heatmap scores
  ``μ = S_in / S_tot`` and ``μ_w = 1`` (the paper's *Baseline*). Table 1's ``μ_{≤0.25}`` and
  ``μ_{≤0.5}`` are means of ``μ`` over the objects covering at most 25 % / 50 % of the image: a
  data-set filter, applied in :mod:`xaiserve.evaluation.aggregate` with :func:`object_fraction`.
* Seo et al., "Regional multi-scale approach for visually pleasing explanations of deep neural
  networks", Fig. 5: precision, recall and F-measure of the heatmap, min-max normalised to 0..1
  and thresholded, against the object mask, for thresholds from 0 to 1.

Several boxes (or several objects of the class) are one object: their union.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from xaiserve.errors import InvalidInput

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.linspace(0.0, 1.0, 21), 2).tolist())
"""0.0, 0.05, …, 1.0 (Seo et al. Fig. 5 sweeps the threshold from 0 to 1)."""


@dataclass(frozen=True)
class LocalisationResult:
    """Field names follow the proto ``Localisation`` message."""

    mu: float
    mu_weighted: float
    object_fraction: float
    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f_measure: np.ndarray


def boxes_to_mask(
    boxes: Sequence[tuple[float, float, float, float]], shape: tuple[int, int]
) -> np.ndarray:
    """The union of bounding boxes as a boolean ``(H, W)`` mask.

    A box is ``(x_min, y_min, x_max, y_max)`` in pixels on the heatmap grid, half-open (it covers
    columns ``x_min ≤ x < x_max`` and rows ``y_min ≤ y < y_max``), clipped to the grid. Fractional
    coordinates are rounded to the nearest pixel edge.
    """
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    for box in boxes:
        if len(box) != 4:
            raise InvalidInput(f"box {tuple(box)} must be (x_min, y_min, x_max, y_max)")
        x0, y0, x1, y1 = (round(float(v)) for v in box)
        if x1 <= x0 or y1 <= y0:
            raise InvalidInput(f"box {tuple(box)} is empty; it needs x_max > x_min, y_max > y_min")
        mask[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)] = True
    return mask


def _check(heatmap: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hm = np.asarray(heatmap, dtype=np.float64)
    m = np.asarray(mask)
    if hm.ndim != 2:
        raise InvalidInput(f"heatmap has shape {hm.shape}; it must be (H, W)")
    if m.shape != hm.shape:
        raise InvalidInput(f"mask has shape {m.shape} but the heatmap is {hm.shape}; send (H, W)")
    if not np.all(np.isfinite(hm)):
        raise InvalidInput("heatmap contains NaN or infinite values; send finite relevances")
    m = m.astype(bool)
    if not m.any():
        raise InvalidInput("mask has no object pixels; mark the object with non-zero values")
    return hm, m


def object_fraction(mask: np.ndarray) -> float:
    """``S_in / S_tot``: the fraction of the image the object covers."""
    m = np.asarray(mask, dtype=bool)
    return float(m.sum() / m.size)


def inside_total_relevance_ratio(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """``μ = R_in / R_tot`` over positive relevance (Kohlbrenner et al. Eq. 2).

    NaN when the heatmap has no positive relevance (``R_tot = 0``: μ is undefined); the
    aggregate skips NaN values and counts them.
    """
    hm, m = _check(heatmap, mask)
    positive = np.clip(hm, 0.0, None)
    r_tot = positive.sum()
    if r_tot <= 0:
        return float("nan")
    return float(positive[m].sum() / r_tot)


def weighted_inside_total_relevance_ratio(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """``μ_w = μ · S_tot / S_in`` (Kohlbrenner et al. Eq. 2); 1 for a uniform heatmap."""
    mu = inside_total_relevance_ratio(heatmap, mask)
    return mu / object_fraction(mask)


def normalise(heatmap: np.ndarray) -> np.ndarray:
    """Min-max normalisation to 0..1 (Seo et al.); a constant heatmap maps to all zeros."""
    hm = np.asarray(heatmap, dtype=np.float64)
    lo, hi = hm.min(), hm.max()
    if hi <= lo:
        return np.zeros_like(hm)
    return (hm - lo) / (hi - lo)


def precision_recall_f(
    heatmap: np.ndarray,
    mask: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    beta: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F-measure per threshold (Seo et al. Fig. 5).

    The binary map at threshold ``t`` is ``normalise(heatmap) ≥ t``. Precision is
    ``TP / (TP + FP)``, recall ``TP / (TP + FN)``, and
    ``F = (1 + β²) P R / (β² P + R)`` (β = 1: the harmonic mean; Seo et al. do not state β).
    When no pixel is selected precision is 0, and F is 0 when ``P + R = 0``.
    Returns ``(thresholds, precision, recall, f_measure)``.
    """
    hm, m = _check(heatmap, mask)
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 1 or t.size == 0 or np.any((t < 0) | (t > 1)):
        raise InvalidInput("thresholds must be a non-empty list of values in 0..1")
    if beta <= 0:
        raise InvalidInput(f"beta is {beta}; it must be positive")
    norm = normalise(hm)
    # Counts for all thresholds at once: sort the normalised values once.
    values = np.sort(norm.ravel())
    inside = np.sort(norm[m])
    selected = values.size - np.searchsorted(values, t, side="left")
    tp = inside.size - np.searchsorted(inside, t, side="left")
    precision = np.divide(tp, selected, out=np.zeros(t.size), where=selected > 0)
    recall = tp / inside.size
    b2 = beta * beta
    denom = b2 * precision + recall
    f = np.divide((1 + b2) * precision * recall, denom, out=np.zeros(t.size), where=denom > 0)
    return t, precision, recall, f


def localisation(
    heatmap: np.ndarray, mask: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> LocalisationResult:
    """All localisation figures of one heatmap against one object mask (proto ``Localisation``)."""
    t, p, r, f = precision_recall_f(heatmap, mask, thresholds)
    return LocalisationResult(
        mu=inside_total_relevance_ratio(heatmap, mask),
        mu_weighted=weighted_inside_total_relevance_ratio(heatmap, mask),
        object_fraction=object_fraction(mask),
        thresholds=t,
        precision=p,
        recall=r,
        f_measure=f,
    )
