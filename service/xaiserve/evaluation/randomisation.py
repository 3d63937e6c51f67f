"""Similarity of a heatmap before and after model-parameter randomisation (Adebayo et al.,
"Sanity Checks for Saliency Maps", NeurIPS 2018, Sec. 3.1, Fig. 2 and Fig. 4).

For the original map ``a`` and the map ``b`` of the same method on a randomised model:

* ``spearman_abs`` — Spearman rank correlation of ``|a|`` and ``|b|`` (Adebayo et al.'s main
  figure), ``spearman_signed`` — of ``a`` and ``b``. Ties get average ranks. A constant map has
  no ranking: the correlation is defined as 1 when both maps are constant and 0 when only one is.
* ``ssim`` — structural similarity (Wang et al. 2004, Eq. 13; scikit-image, 7×7 uniform window,
  sample covariance, K1 = 0.01, K2 = 0.03) of the two maps after Adebayo et al.'s
  normalisation: absolute value, then scaled to [0, 1] by each map's min and max
  (``data_range = 1``).
* ``hog`` — Pearson correlation of the histograms of oriented gradients (Dalal & Triggs;
  scikit-image ``hog`` with 9 orientations, 8×8-pixel cells, 3×3-cell blocks, L2-Hys) of the
  same normalised maps, as Adebayo et al. used. Maps smaller than one block (24×24 pixels) have
  no HOG: the value is NaN and :data:`HOG_UNAVAILABLE` says why.

Low similarity after randomisation is what a model-dependent method shows; a method whose
map barely changes reflects the image more than the model. The summary number per method is
``spearman_abs`` at full randomisation (low is good).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats
from skimage.feature import hog
from skimage.metrics import structural_similarity

__all__ = [
    "HOG_UNAVAILABLE",
    "METRICS",
    "MapSimilarity",
    "RandomisationCurve",
    "map_similarity",
    "mean_curve",
    "normalise_abs",
    "randomisation_curve",
    "spearman",
]

HOG_CELL = 8
HOG_BLOCK = 3
HOG_UNAVAILABLE = (
    f"HOG needs maps of at least {HOG_CELL * HOG_BLOCK}×{HOG_CELL * HOG_BLOCK} pixels "
    f"({HOG_BLOCK}×{HOG_BLOCK} cells of {HOG_CELL}×{HOG_CELL})"
)
METRICS = ("spearman_abs", "spearman_signed", "ssim", "hog")


@dataclass(frozen=True)
class MapSimilarity:
    """The four similarities of one original/randomised map pair (NaN where undefined)."""

    spearman_abs: float
    spearman_signed: float
    ssim: float
    hog: float

    def as_dict(self) -> dict[str, float]:
        return {m: float(getattr(self, m)) for m in METRICS}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ of two maps (Pearson correlation of average ranks)."""
    x = np.asarray(a, np.float64).ravel()
    y = np.asarray(b, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"maps of different sizes: {a.shape} and {b.shape}")
    const_x = bool(np.all(x == x[0])) if x.size else True
    const_y = bool(np.all(y == y[0])) if y.size else True
    if const_x or const_y:
        return 1.0 if const_x and const_y else 0.0
    return float(stats.spearmanr(x, y).statistic)


def normalise_abs(heatmap: np.ndarray) -> np.ndarray:
    """``|h|`` scaled to [0, 1] by its min and max (all zeros for a constant map)."""
    h = np.abs(np.asarray(heatmap, np.float64))
    lo, hi = float(h.min()), float(h.max())
    if not hi > lo:
        return np.zeros_like(h)
    return (h - lo) / (hi - lo)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    side = min(a.shape)
    win = 7 if side >= 7 else (side if side % 2 else side - 1)
    if win < 3:
        return math.nan
    return float(structural_similarity(a, b, data_range=1.0, win_size=win))


def _hog(a: np.ndarray, b: np.ndarray) -> float:
    if min(a.shape) < HOG_CELL * HOG_BLOCK:
        return math.nan

    def features(x: np.ndarray) -> np.ndarray:
        return np.asarray(
            hog(
                x,
                orientations=9,
                pixels_per_cell=(HOG_CELL, HOG_CELL),
                cells_per_block=(HOG_BLOCK, HOG_BLOCK),
                block_norm="L2-Hys",
                feature_vector=True,
            ),
            np.float64,
        )

    fa, fb = features(a), features(b)
    if np.all(fa == fa[0]) or np.all(fb == fb[0]):
        return 1.0 if np.array_equal(fa, fb) else 0.0
    return float(stats.pearsonr(fa, fb).statistic)


def map_similarity(original: np.ndarray, randomised: np.ndarray) -> MapSimilarity:
    """All four similarities of two ``(H, W)`` maps (see the module docs)."""
    a = np.asarray(original, np.float64)
    b = np.asarray(randomised, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (H, W) maps of one size, got {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        nan = math.nan
        return MapSimilarity(nan, nan, nan, nan)
    na, nb = normalise_abs(a), normalise_abs(b)
    return MapSimilarity(
        spearman_abs=spearman(np.abs(a), np.abs(b)),
        spearman_signed=spearman(a, b),
        ssim=_ssim(na, nb),
        hog=_hog(na, nb),
    )


@dataclass(frozen=True)
class RandomisationCurve:
    """One method's similarities as randomisation cascades from the logits down.

    ``depths[i]`` layers were randomised for point ``i``; ``layers[i]`` names the deepest of
    them. ``images`` counts the maps averaged (1 for a single image).
    """

    method: str
    depths: tuple[int, ...]
    layers: tuple[str, ...]
    total_layers: int
    similarities: tuple[MapSimilarity, ...]
    images: int = 1
    notes: tuple[str, ...] = field(default=())

    @property
    def full(self) -> bool:
        """Whether the last point randomises every weighted layer."""
        return bool(self.depths) and self.depths[-1] == self.total_layers

    @property
    def summary(self) -> float:
        """``spearman_abs`` at the deepest stop (full randomisation by default; low is good)."""
        return self.similarities[-1].spearman_abs if self.similarities else math.nan

    def metric(self, name: str) -> list[float]:
        if name not in METRICS:
            raise ValueError(f"unknown similarity {name!r}; choose one of {', '.join(METRICS)}")
        return [float(getattr(s, name)) for s in self.similarities]

    def as_dict(self) -> dict[str, object]:
        return {
            "method": self.method,
            "depths": list(self.depths),
            "layers": list(self.layers),
            "total_layers": self.total_layers,
            "images": self.images,
            "summary": self.summary,
            "full_randomisation": self.full,
            **{m: self.metric(m) for m in METRICS},
            "notes": list(self.notes),
        }


def randomisation_curve(
    method: str,
    original: np.ndarray,
    randomised: Sequence[np.ndarray],
    depths: Sequence[int],
    layers: Sequence[str],
    total_layers: int,
) -> RandomisationCurve:
    """Similarity of ``original`` to each map in ``randomised`` (one per stop, in order)."""
    if not (len(randomised) == len(depths) == len(layers)):
        raise ValueError("one randomised map, depth and layer name per stop")
    sims = tuple(map_similarity(original, r) for r in randomised)
    notes = (HOG_UNAVAILABLE,) if min(np.shape(original)) < HOG_CELL * HOG_BLOCK else ()
    return RandomisationCurve(
        method, tuple(int(d) for d in depths), tuple(layers), int(total_layers), sims, 1, notes
    )


def mean_curve(curves: Sequence[RandomisationCurve]) -> RandomisationCurve:
    """The per-stop mean of one method's curves over many images (NaNs skipped)."""
    if not curves:
        raise ValueError("no curves to average")
    first = curves[0]
    for c in curves[1:]:
        if c.method != first.method or c.depths != first.depths:
            raise ValueError("curves of different methods or stops cannot be averaged")
    table = np.array([[s.as_dict()[m] for s in c.similarities for m in METRICS] for c in curves])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column stays NaN
        means = np.nanmean(table, axis=0).reshape(len(first.depths), len(METRICS))
    sims = tuple(MapSimilarity(*(float(v) for v in row)) for row in means)
    return RandomisationCurve(
        first.method,
        first.depths,
        first.layers,
        first.total_layers,
        sims,
        sum(c.images for c in curves),
        first.notes,
    )
