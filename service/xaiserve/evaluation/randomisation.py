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
* ``hog`` — Pearson correlation of the histograms of oriented gradients (Dalal & Triggs; the
  descriptor of scikit-image's ``hog`` with 9 orientations, 8×8-pixel cells, 3×3-cell
  blocks, L2-Hys, computed by :func:`hog_descriptor`) of the same normalised maps, as Adebayo
  et al. used. Maps smaller than one block (24×24 pixels) have
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
from skimage.metrics import structural_similarity

__all__ = [
    "HOG_UNAVAILABLE",
    "METRICS",
    "MapSimilarity",
    "RandomisationCurve",
    "ReferenceMap",
    "curve_from_similarities",
    "hog_descriptor",
    "map_similarity",
    "mean_curve",
    "normalise_abs",
    "randomisation_curve",
    "spearman",
]

HOG_ORIENTATIONS = 9
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


def _ranks(x: np.ndarray) -> np.ndarray | None:
    """Average ranks of a flattened map, centred and scaled to unit norm (``None``: constant)."""
    flat = np.asarray(x, np.float64).ravel()
    if flat.size == 0 or np.all(flat == flat[0]):
        return None
    r = stats.rankdata(flat)
    r -= r.mean()
    return r / np.linalg.norm(r)


def _correlation(x: np.ndarray | None, y: np.ndarray | None) -> float:
    """Pearson correlation of two prepared (centred, unit-norm) vectors; a constant side has
    no ordering: 1 when both are constant, else 0."""
    if x is None or y is None:
        return 1.0 if x is None and y is None else 0.0
    return float(np.clip(np.dot(x, y), -1.0, 1.0))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ of two maps (Pearson correlation of average ranks)."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"maps of different sizes: {np.shape(a)} and {np.shape(b)}")
    return _correlation(_ranks(a), _ranks(b))


def normalise_abs(heatmap: np.ndarray) -> np.ndarray:
    """``|h|`` scaled to [0, 1] by its min and max (all zeros for a constant map)."""
    h = np.abs(np.asarray(heatmap, np.float64))
    lo, hi = float(h.min()), float(h.max())
    if not hi > lo:
        return np.zeros_like(h)
    return (h - lo) / (hi - lo)


def _ssim_window(shape: tuple[int, ...]) -> int:
    side = min(shape)
    return 7 if side >= 7 else (side if side % 2 else side - 1)


def hog_descriptor(x: np.ndarray) -> np.ndarray:
    """Dalal & Triggs HOG of a 2-D map exactly as scikit-image's ``hog`` computes it (9
    unsigned orientations, 8×8-pixel cells, 3×3-cell blocks, L2-Hys, no ``transform_sqrt``),
    vectorised with numpy: about 10× faster on a 224² map, which matters because the test
    compares one map per variant. ``tests/unit/test_randomisation_similarity.py`` checks it
    against ``skimage.feature.hog``.
    """
    img = np.asarray(x, np.float64)
    g_row = np.zeros_like(img)
    g_col = np.zeros_like(img)
    g_row[1:-1, :] = img[2:, :] - img[:-2, :]
    g_col[:, 1:-1] = img[:, 2:] - img[:, :-2]
    magnitude = np.hypot(g_col, g_row)
    orientation = np.rad2deg(np.arctan2(g_row, g_col)) % 180
    n_rows, n_cols = img.shape[0] // HOG_CELL, img.shape[1] // HOG_CELL
    h, w = n_rows * HOG_CELL, n_cols * HOG_CELL
    bins = np.minimum((orientation[:h, :w] // (180 / HOG_ORIENTATIONS)).astype(np.intp), 8)
    cell = (np.arange(h)[:, None] // HOG_CELL) * n_cols + (np.arange(w)[None, :] // HOG_CELL)
    hist = np.bincount(
        (cell * HOG_ORIENTATIONS + bins).ravel(),
        weights=magnitude[:h, :w].ravel(),
        minlength=n_rows * n_cols * HOG_ORIENTATIONS,
    ).reshape(n_rows, n_cols, HOG_ORIENTATIONS) / (HOG_CELL * HOG_CELL)
    b_rows, b_cols = n_rows - HOG_BLOCK + 1, n_cols - HOG_BLOCK + 1
    windows = np.lib.stride_tricks.sliding_window_view(hist, (HOG_BLOCK, HOG_BLOCK), axis=(0, 1))
    blocks = windows[:b_rows, :b_cols].transpose(0, 1, 3, 4, 2)  # (rows, cols, 3, 3, orient.)
    eps = 1e-5
    norm = np.sqrt((blocks**2).sum(axis=(2, 3, 4), keepdims=True) + eps**2)
    clipped = np.minimum(blocks / norm, 0.2)
    norm = np.sqrt((clipped**2).sum(axis=(2, 3, 4), keepdims=True) + eps**2)
    return np.asarray(clipped / norm).ravel()


def _hog_features(x: np.ndarray) -> np.ndarray | None:
    """HOG of a normalised map, centred and unit-norm (``None``: constant features)."""
    f = hog_descriptor(x)
    if np.all(f == f[0]):
        return None
    f = f - f.mean()
    return f / np.linalg.norm(f)


class ReferenceMap:
    """The original map, prepared once (ranks, normalised map, HOG features) so that comparing
    it with many randomised maps costs only the randomised side."""

    def __init__(self, heatmap: np.ndarray) -> None:
        a = np.asarray(heatmap, np.float64)
        if a.ndim != 2:
            raise ValueError(f"expected an (H, W) map, got shape {a.shape}")
        self.shape = a.shape
        self.finite = bool(np.all(np.isfinite(a)))
        self.has_hog = min(a.shape) >= HOG_CELL * HOG_BLOCK
        self.win = _ssim_window(a.shape)
        if not self.finite:
            return
        self._abs_ranks = _ranks(np.abs(a))
        self._ranks = _ranks(a)
        self._normalised = normalise_abs(a)
        self._hog = _hog_features(self._normalised) if self.has_hog else None

    def similarity(self, randomised: np.ndarray) -> MapSimilarity:
        """All four similarities to ``randomised`` (see the module docs)."""
        b = np.asarray(randomised, np.float64)
        if b.shape != self.shape:
            raise ValueError(
                f"expected two (H, W) maps of one size, got {self.shape} and {b.shape}"
            )
        if not (self.finite and np.all(np.isfinite(b))):
            nan = math.nan
            return MapSimilarity(nan, nan, nan, nan)
        nb = normalise_abs(b)
        ssim = (
            float(structural_similarity(self._normalised, nb, data_range=1.0, win_size=self.win))
            if self.win >= 3
            else math.nan
        )
        return MapSimilarity(
            spearman_abs=_correlation(self._abs_ranks, _ranks(np.abs(b))),
            spearman_signed=_correlation(self._ranks, _ranks(b)),
            ssim=ssim,
            hog=_correlation(self._hog, _hog_features(nb)) if self.has_hog else math.nan,
        )


def map_similarity(original: np.ndarray, randomised: np.ndarray) -> MapSimilarity:
    """All four similarities of two ``(H, W)`` maps (see the module docs)."""
    return ReferenceMap(original).similarity(randomised)


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
    reference = ReferenceMap(original)
    sims = [reference.similarity(r) for r in randomised]
    return curve_from_similarities(method, reference, sims, depths, layers, total_layers)


def curve_from_similarities(
    method: str,
    reference: ReferenceMap,
    similarities: Sequence[MapSimilarity],
    depths: Sequence[int],
    layers: Sequence[str],
    total_layers: int,
) -> RandomisationCurve:
    """The curve of similarities already computed against ``reference`` (one per stop)."""
    if not (len(similarities) == len(depths) == len(layers)):
        raise ValueError("one randomised map, depth and layer name per stop")
    notes = () if reference.has_hog else (HOG_UNAVAILABLE,)
    return RandomisationCurve(
        method,
        tuple(int(d) for d in depths),
        tuple(layers),
        int(total_layers),
        tuple(similarities),
        1,
        notes,
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
