"""Similarity of a heatmap before and after model-parameter randomisation (Adebayo et al.,
"Sanity Checks for Saliency Maps", NeurIPS 2018, Sec. 3.1, Fig. 2 and Fig. 4).

For the original map ``a`` and the map ``b`` of the same method on a randomised model:

* ``spearman_abs`` — Spearman rank correlation of ``|a|`` and ``|b|`` (Adebayo et al.'s main
  figure), ``spearman_signed`` — of ``a`` and ``b``. Ties get average ranks. A constant map has
  no ranking: the correlation is defined as 1 when both maps are constant and 0 when only one is.
* ``ssim`` — structural similarity (Wang et al. 2004, Eq. 13, with scikit-image's
  ``structural_similarity`` choices: 7×7 uniform window, sample covariance, K1 = 0.01,
  K2 = 0.03, mean over the window-cropped map) of the two maps after Adebayo et al.'s
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

All four are computed for a whole stack of randomised maps at once
(:meth:`ReferenceMap.similarities`: one sort per rank correlation, one filter pass for SSIM,
one HOG pass), so that a randomisation test's comparisons stay small next to its method calls;
``tests/unit/test_randomisation_similarity.py`` checks them map by map against scipy's
``spearmanr``/``rankdata`` and scikit-image's ``structural_similarity`` and ``hog``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

__all__ = [
    "HOG_UNAVAILABLE",
    "METRICS",
    "MapSimilarity",
    "RandomisationCurve",
    "ReferenceMap",
    "average_ranks",
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


def _sorted_ranks(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort every row of a ``(V, N)`` array: the sorting permutation, the average rank
    (1-based; ties share the mean of their positions) of each sorted position, and which rows
    are constant. Ties are rare in real maps except runs of exact zeros, so only the tied
    positions are visited after the sort."""
    x = np.asarray(rows)
    v, n = x.shape
    order = np.argsort(x, axis=1)
    ordered = np.take_along_axis(x, order, axis=1)
    ranks = np.empty((v, n), np.float64)
    ranks[:] = np.arange(1.0, n + 1.0)
    constant = ordered[:, 0] == ordered[:, -1] if n else np.ones(v, bool)
    tie = np.flatnonzero(ordered[:, 1:] == ordered[:, :-1])  # sorted[k] == sorted[k + 1]
    if tie.size:
        row, k = np.divmod(tie, n - 1)
        starts = np.ones(tie.size, bool)  # a run of ties begins (a new row begins a new run)
        starts[1:] = (tie[1:] != tie[:-1] + 1) | (row[1:] != row[:-1])
        ends = np.append(starts[1:], True)
        # the run k = s..e ties sorted positions s..e+1, whose 1-based ranks average (s+e+3)/2
        mean = (k[starts] + k[ends] + 3) / 2.0
        run = np.cumsum(starts) - 1
        ranks[row, k] = mean[run]
        ranks[row, k + 1] = mean[run]
    return order, ranks, constant


def average_ranks(rows: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties share the mean of their positions, as
    ``scipy.stats.rankdata(..., method="average")``) of every row of a ``(V, N)`` array."""
    x = np.asarray(rows)
    if x.ndim != 2:
        raise ValueError(f"expected a (V, N) array, got shape {x.shape}")
    if x.size == 0:
        return np.empty(x.shape, np.float64)
    order, sorted_ranks, _ = _sorted_ranks(x)
    ranks = np.empty_like(sorted_ranks)
    np.put_along_axis(ranks, order, sorted_ranks, axis=1)
    return ranks


def _ranks(x: np.ndarray) -> np.ndarray | None:
    """Average ranks of a flattened map, centred and scaled to unit norm (``None``: constant)."""
    flat = np.asarray(x).reshape(1, -1)
    if flat.size == 0 or np.all(flat == flat[0, 0]):
        return None
    r = average_ranks(flat)[0]
    r -= (r.size + 1) / 2.0  # average ranks always sum to n(n+1)/2
    return np.asarray(r / np.linalg.norm(r))


def _correlation(x: np.ndarray | None, y: np.ndarray | None) -> float:
    """Pearson correlation of two prepared (centred, unit-norm) vectors; a constant side has
    no ordering: 1 when both are constant, else 0."""
    if x is None or y is None:
        return 1.0 if x is None and y is None else 0.0
    return float(np.clip(np.dot(x, y), -1.0, 1.0))


def _correlations(x: np.ndarray | None, rows: np.ndarray, constant: np.ndarray) -> np.ndarray:
    """:func:`_correlation` of one prepared vector (``None``: constant) with every prepared row
    (``constant`` marks the constant rows)."""
    if x is None:
        return np.where(constant, 1.0, 0.0)
    return np.where(constant, 0.0, np.clip(rows @ x, -1.0, 1.0))


def _rank_correlations(reference: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
    """Spearman's ρ of a reference (its prepared ranks, ``None``: constant) with every row of a
    ``(V, N)`` array. ρ = Σ_k r[order_k]·(R_k − mean) / ‖R − mean‖ over the sorted positions
    ``k`` of a row (``R`` its average ranks): the reference is gathered in each row's order, so
    the row's ranks never need scattering back to pixel order."""
    order, sorted_ranks, constant = _sorted_ranks(rows)
    if reference is None:
        return np.where(constant, 1.0, 0.0)
    sorted_ranks -= (rows.shape[1] + 1) / 2.0
    norm = np.linalg.norm(sorted_ranks, axis=1)
    dots = np.einsum("vn,vn->v", reference[order], sorted_ranks)
    rho = dots / np.where(constant, 1.0, norm)
    return np.where(constant, 0.0, np.clip(rho, -1.0, 1.0))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ of two maps (Pearson correlation of average ranks)."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"maps of different sizes: {np.shape(a)} and {np.shape(b)}")
    return _correlation(_ranks(a), _ranks(b))


def normalise_abs(heatmap: np.ndarray) -> np.ndarray:
    """``|h|`` scaled to [0, 1] by its min and max (all zeros for a constant map); a stack
    ``(V, H, W)`` is scaled map by map."""
    h = np.abs(np.asarray(heatmap, np.float64))
    axes = (-2, -1) if h.ndim >= 2 else None
    lo = h.min(axis=axes, keepdims=True)
    span = h.max(axis=axes, keepdims=True) - lo
    flat = ~(span > 0)
    return np.where(flat, 0.0, (h - lo) / np.where(flat, 1.0, span))


def _ssim_window(shape: tuple[int, ...]) -> int:
    side = min(shape)
    return 7 if side >= 7 else (side if side % 2 else side - 1)


class _SsimSide:
    """The local means and second moments of one side of SSIM (Wang et al. 2004, Eq. 13 with
    scikit-image's ``structural_similarity`` choices: uniform ``win``×``win`` window, reflected
    borders, sample covariance, K1 = 0.01, K2 = 0.03, ``data_range`` 1) for a stack of maps."""

    def __init__(self, maps: np.ndarray, win: int) -> None:
        self.win = win
        size = (1,) * (maps.ndim - 2) + (win, win)
        cov_norm = win * win / (win * win - 1.0)
        self.maps = maps
        self.mean = ndimage.uniform_filter(maps, size=size)
        self.var = cov_norm * (ndimage.uniform_filter(maps * maps, size=size) - self.mean**2)
        self._size = size
        self._cov_norm = cov_norm

    def ssim(self, other: _SsimSide) -> np.ndarray:
        """Mean SSIM of each map of ``other`` with this side's single map (crop as skimage)."""
        c1, c2 = 0.01**2, 0.03**2
        uxy = ndimage.uniform_filter(self.maps * other.maps, size=other._size)
        cov = self._cov_norm * (uxy - self.mean * other.mean)
        s = ((2 * self.mean * other.mean + c1) * (2 * cov + c2)) / (
            (self.mean**2 + other.mean**2 + c1) * (self.var + other.var + c2)
        )
        pad = (self.win - 1) // 2
        cropped = s[..., pad : s.shape[-2] - pad, pad : s.shape[-1] - pad]
        return np.asarray(cropped.mean(axis=(-2, -1), dtype=np.float64))


def hog_descriptor(x: np.ndarray) -> np.ndarray:
    """Dalal & Triggs HOG of a 2-D map exactly as scikit-image's ``hog`` computes it (9
    unsigned orientations, 8×8-pixel cells, 3×3-cell blocks, L2-Hys, no ``transform_sqrt``),
    vectorised with numpy: about 10× faster on a 224² map, which matters because the test
    compares one map per variant. A stack ``(V, H, W)`` gives one descriptor per map, ``(V,
    D)``. ``tests/unit/test_randomisation_similarity.py`` checks it against
    ``skimage.feature.hog``.
    """
    img = np.asarray(x, np.float64)
    single = img.ndim == 2
    if single:
        img = img[None]
    count, height, width = img.shape
    n_rows, n_cols = height // HOG_CELL, width // HOG_CELL
    h, w = n_rows * HOG_CELL, n_cols * HOG_CELL
    # centred differences (zero on the border), only over the pixels the cells cover
    g_row = np.zeros((count, h, w))
    g_col = np.zeros((count, h, w))
    last_row, last_col = min(h, height - 1), min(w, width - 1)
    np.subtract(img[:, 2 : last_row + 1, :w], img[:, : last_row - 1, :w], out=g_row[:, 1:last_row])
    np.subtract(
        img[:, :h, 2 : last_col + 1], img[:, :h, : last_col - 1], out=g_col[:, :, 1:last_col]
    )
    magnitude = g_col * g_col  # √(g_col² + g_row²), in place (``np.hypot`` is ~8× slower)
    magnitude += g_row * g_row
    np.sqrt(magnitude, out=magnitude)
    angle = np.arctan2(g_row, g_col, out=g_row)  # in place: the buffers are not needed again
    np.rad2deg(angle, out=angle)
    # ``angle % 180`` for an angle in [−180, 180], with numpy's rounding: 180 → 0, x < 0 → x + 180
    angle[angle == 180] = 0
    np.add(angle, 180, out=angle, where=angle < 0)
    np.floor_divide(angle, 180 / HOG_ORIENTATIONS, out=angle)
    np.minimum(angle, HOG_ORIENTATIONS - 1, out=angle)
    cells = n_rows * n_cols
    cell = (np.arange(h)[:, None] // HOG_CELL) * n_cols + (np.arange(w)[None, :] // HOG_CELL)
    index = angle.astype(np.intp)
    index += (np.arange(count)[:, None, None] * cells + cell) * HOG_ORIENTATIONS
    hist = np.bincount(
        index.ravel(), weights=magnitude.ravel(), minlength=count * cells * HOG_ORIENTATIONS
    ).reshape(count, n_rows, n_cols, HOG_ORIENTATIONS) / (HOG_CELL * HOG_CELL)
    b_rows, b_cols = n_rows - HOG_BLOCK + 1, n_cols - HOG_BLOCK + 1
    windows = np.lib.stride_tricks.sliding_window_view(hist, (HOG_BLOCK, HOG_BLOCK), axis=(1, 2))
    # (maps, rows, cols, 3, 3, orientations)
    blocks = windows[:, :b_rows, :b_cols].transpose(0, 1, 2, 4, 5, 3)
    eps = 1e-5
    norm = np.sqrt((blocks**2).sum(axis=(3, 4, 5), keepdims=True) + eps**2)
    clipped = np.minimum(blocks / norm, 0.2)
    norm = np.sqrt((clipped**2).sum(axis=(3, 4, 5), keepdims=True) + eps**2)
    features = np.asarray(clipped / norm).reshape(count, -1)
    return features[0] if single else features


def _hog_features(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HOG of each normalised map of a stack, centred and unit-norm, and which maps have
    constant features (their row is all zeros)."""
    f = hog_descriptor(x)
    constant = np.all(f == f[:, :1], axis=1)
    f = f - f.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    f /= np.where(constant[:, None], 1.0, norm)
    f[constant] = 0.0
    return f, constant


def _figure(value: float) -> float:
    return math.nan if math.isnan(value) else float(value)


class ReferenceMap:
    """The original map, prepared once (ranks, normalised map, SSIM moments, HOG features) so
    that comparing it with many randomised maps costs only the randomised side, computed for
    all of them at once (:meth:`similarities`)."""

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
        self._nonnegative = bool(np.all(a >= 0))
        self._normalised = normalise_abs(a)
        self._ssim = _SsimSide(self._normalised, self.win) if self.win >= 3 else None
        if self.has_hog:
            features, constant = _hog_features(self._normalised[None])
            self._hog = None if constant[0] else features[0]

    def similarity(self, randomised: np.ndarray) -> MapSimilarity:
        """All four similarities to ``randomised`` (see the module docs)."""
        return self.similarities(np.asarray(randomised)[None])[0]

    def similarities(self, randomised: np.ndarray | Sequence[np.ndarray]) -> list[MapSimilarity]:
        """The similarities to each map of a stack ``(V, H, W)``, computed together (one sort,
        one filter pass, one HOG pass for the whole stack)."""
        b = np.asarray(randomised, np.float64)
        if b.ndim != 3 or b.shape[1:] != self.shape:
            raise ValueError(f"expected (V, H, W) maps of size {self.shape}, got shape {b.shape}")
        count = len(b)
        result = np.full((count, len(METRICS)), math.nan)
        finite = np.all(np.isfinite(b), axis=(1, 2)) if self.finite else np.zeros(count, bool)
        good = b[finite]
        if len(good):
            result[finite] = self._similarities(good)
        # undefined figures are the ``math.nan`` object, so that equal curves compare equal
        return [MapSimilarity(*(_figure(v) for v in row)) for row in result]

    def _similarities(self, b: np.ndarray) -> np.ndarray:
        flat = b.reshape(len(b), -1)
        spearman_abs = _rank_correlations(self._abs_ranks, np.abs(flat))
        if self._nonnegative and np.all(flat >= 0):  # maps rank as their absolute values
            spearman_signed = spearman_abs
        else:
            spearman_signed = _rank_correlations(self._ranks, flat)
        normalised = normalise_abs(b)
        ssim = (
            self._ssim.ssim(_SsimSide(normalised, self.win))
            if self._ssim is not None
            else np.full(len(b), math.nan)
        )
        if self.has_hog:
            features, hog_constant = _hog_features(normalised)
            hog = _correlations(self._hog, features, hog_constant)
        else:
            hog = np.full(len(b), math.nan)
        return np.stack(
            [
                spearman_abs,
                spearman_signed,
                ssim,
                hog,
            ],
            axis=1,
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
    sims = reference.similarities(np.stack(randomised)) if len(randomised) else []
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
