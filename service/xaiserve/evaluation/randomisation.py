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

All four are computed for a whole stack of randomised maps at once, the original map being
prepared as one more row of the first stack (:meth:`ReferenceMap.similarities`: one sort per
rank correlation, by value with the pixel index in the spare low bits of float32-born values,
one uniform-filter pass for SSIM's three local moments, one HOG pass with torch's vectorised
``atan2`` and numpy's exact one next to the bin boundaries), so that a randomisation test's
comparisons stay small next to its method calls; ``tests/unit/test_randomisation_similarity.py``
checks them map by map against scipy's ``spearmanr``/``rankdata`` and scikit-image's
``structural_similarity`` and ``hog``.
"""

from __future__ import annotations

import functools
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
    "orientation_bins",
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


_SIGN = np.uint64(1 << 63)


def _sorted_rows(rows: np.ndarray, magnitude: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ascending sorting permutation of every row of a finite ``(V, N)`` float64 array (of
    ``|rows|`` when ``magnitude``), and the sorted values.

    Maps come from float32 heatmaps, whose float64 values end in 29 zero mantissa bits. When
    every value has enough zero low bits to hold a pixel index, the index is written into them
    and the rows are sorted by value (``np.sort``, several times faster than ``np.argsort``):
    writing ``i < 2^k`` into the ``k`` zero low bits moves a value by less than the gap to the
    next value with those bits zero, so distinct values keep their order, equal values stay
    adjacent, and the index comes back out of the sorted bits. ``-0.0`` is made ``+0.0`` first
    (they are equal values). Other rows fall back to ``np.argsort``.
    """
    x = np.asarray(rows, np.float64)
    n = x.shape[1]
    low = np.uint64((1 << max(1, (n - 1).bit_length())) - 1)
    bits = (x + 0.0).view(np.uint64)  # + 0.0 turns -0.0 into +0.0
    if n and (n - 1).bit_length() <= 52 and not np.any(bits & low):
        keys = bits | np.arange(n, dtype=np.uint64)
        if magnitude:
            keys &= ~_SIGN
        keys.view(np.float64).sort(axis=1)
        order = (keys & low).astype(np.intp)
        keys &= ~low
        return order, keys.view(np.float64)
    values = np.abs(x) if magnitude else x
    order = np.argsort(values, axis=1)
    return order, np.take_along_axis(values, order, axis=1)


def _ranks_of_sorted(ordered: np.ndarray) -> np.ndarray:
    """The average rank (1-based; ties share the mean of their positions) of each position of
    sorted ``(V, N)`` rows. Ties are rare in real maps except runs of exact zeros, so only the
    tied positions are visited."""
    v, n = ordered.shape
    ranks = np.empty((v, n), np.float64)
    ranks[:] = np.arange(1.0, n + 1.0)
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
    return ranks


def average_ranks(rows: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties share the mean of their positions, as
    ``scipy.stats.rankdata(..., method="average")``) of every row of a finite ``(V, N)``
    array."""
    x = np.asarray(rows)
    if x.ndim != 2:
        raise ValueError(f"expected a (V, N) array, got shape {x.shape}")
    if x.size == 0:
        return np.empty(x.shape, np.float64)
    order, ordered = _sorted_rows(x)
    ranks = np.empty(x.shape, np.float64)
    np.put_along_axis(ranks, order, _ranks_of_sorted(ordered), axis=1)
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


def _prepared_ranks(order: np.ndarray, ordered: np.ndarray) -> np.ndarray | None:
    """:func:`_ranks` of one map from its sorting permutation and sorted values."""
    n = ordered.size
    if n == 0 or ordered[0] == ordered[-1]:
        return None
    r = np.empty(n, np.float64)
    r[order] = _ranks_of_sorted(ordered[None])[0]
    r -= (n + 1) / 2.0  # average ranks always sum to n(n+1)/2
    return np.asarray(r / np.linalg.norm(r))


def _rank_correlations(
    reference: np.ndarray | None, order: np.ndarray, ordered: np.ndarray
) -> np.ndarray:
    """Spearman's ρ of a reference (its prepared ranks, ``None``: constant) with every row of a
    ``(V, N)`` array, given each row's sorting permutation and sorted values
    (:func:`_sorted_rows`).

    ρ = Σ_k r[order_k]·(R_k − mean) / ‖R − mean‖ over the sorted positions ``k`` of a row
    (``R`` its average ranks): the reference is gathered in each row's order, so the row's ranks
    never need scattering back to pixel order. A row without ties has ``R_k = k + 1``, the same
    for every row; only rows with ties get their average ranks computed.
    """
    constant = ordered[:, 0] == ordered[:, -1]
    if reference is None:
        return np.where(constant, 1.0, 0.0)
    n = order.shape[1]
    gathered = reference[order]
    centred = np.arange(1.0, n + 1.0) - (n + 1) / 2.0
    squared = float(centred @ centred)
    dots = gathered @ centred
    norm2 = np.full(len(order), squared)
    equal = ordered[:, 1:] == ordered[:, :-1]  # sorted[k] == sorted[k + 1]
    tie = np.flatnonzero(equal)
    if tie.size:
        # the tied positions of a run take its mean rank: correct the dot product there, and
        # the norm by Σ (rank − mean)² over the run (the run's mean is its ranks' mean)
        row, k = np.divmod(tie, n - 1)
        starts = np.ones(tie.size, bool)  # a run of ties begins (a new row begins a new run)
        starts[1:] = (tie[1:] != tie[:-1] + 1) | (row[1:] != row[:-1])
        ends = np.append(starts[1:], True)
        mean = (k[starts] + k[ends] + 3) / 2.0  # positions s..e+1 have 1-based ranks s+1..e+2
        run = np.cumsum(starts) - 1
        position = np.concatenate([k, k[ends] + 1])
        rows = np.concatenate([row, row[ends]])
        delta = mean[np.concatenate([run, run[ends]])] - (position + 1)
        v = len(order)
        dots += np.bincount(rows, weights=gathered[rows, position] * delta, minlength=v)
        norm2 -= np.bincount(rows, weights=delta * delta, minlength=v)
        # a correction over many positions adds up rounding: rows with more than n/16 tied
        # positions (maps with flat regions) take their average ranks in full
        heavy = np.flatnonzero((np.bincount(rows, minlength=v) > n / 16) & ~constant)
        if heavy.size:
            ranks = _ranks_of_sorted(ordered[heavy])
            ranks -= (n + 1) / 2.0  # average ranks always sum to n(n+1)/2
            norm2[heavy] = np.einsum("vn,vn->v", ranks, ranks)
            dots[heavy] = np.einsum("vn,vn->v", gathered[heavy], ranks)
    rho = dots / np.sqrt(np.where(constant, 1.0, norm2))
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


def _ssim_moments(reference: np.ndarray, maps: np.ndarray, win: int) -> np.ndarray:
    """The local means of ``y``, ``y²`` and ``x·y`` (``x`` the reference, ``y`` each map of a
    ``(V, H, W)`` stack) over ``win``×``win`` windows with reflected borders, in one
    uniform-filter pass: ``(3, V, H, W)``."""
    moments = np.empty((3, *maps.shape))
    moments[0] = maps
    np.multiply(maps, maps, out=moments[1])
    np.multiply(reference, maps, out=moments[2])
    return np.asarray(ndimage.uniform_filter(moments, size=(1, 1, win, win)))


class _SsimSide:
    """SSIM (Wang et al. 2004, Eq. 13 with scikit-image's ``structural_similarity`` choices:
    uniform ``win``×``win`` window, reflected borders, sample covariance, K1 = 0.01, K2 = 0.03,
    ``data_range`` 1, mean over the map cropped by ``(win − 1)/2`` on each side) of one
    reference map with a stack of maps.

    Built from the reference's own row of :func:`_ssim_moments` (its local mean and second
    moment); :meth:`ssim` evaluates Eq. 13 on the cropped pixels only (the only ones averaged)
    from the stack's moments."""

    def __init__(self, reference: np.ndarray, mean: np.ndarray, square: np.ndarray, win: int):
        self.win = win
        self.maps = reference
        self._cov_norm = win * win / (win * win - 1.0)
        pad = (win - 1) // 2
        self._crop = (slice(pad, reference.shape[-2] - pad), slice(pad, reference.shape[-1] - pad))
        mean, square = mean[self._crop], square[self._crop]
        self.mean = mean
        self.var = self._cov_norm * (square - mean**2)

    def ssim(self, moments: np.ndarray) -> np.ndarray:
        """Mean SSIM of each map with the reference, from the stack's :func:`_ssim_moments`."""
        c1, c2 = 0.01**2, 0.03**2
        mean, square, product = moments[(slice(None), slice(None), *self._crop)]
        var = self._cov_norm * (square - mean**2)
        cov = self._cov_norm * (product - self.mean * mean)
        s = ((2 * self.mean * mean + c1) * (2 * cov + c2)) / (
            (self.mean**2 + mean**2 + c1) * (self.var + var + c2)
        )
        return np.asarray(s.mean(axis=(-2, -1), dtype=np.float64))


#: Elements per ``torch.atan2`` call in :func:`orientation_bins`: under torch's parallel grain
#: (32 768), so that the comparisons, which run next to method calls, stay on their own thread.
_ATAN2_CHUNK = 2**14
#: Bin widths from a bin boundary within which :func:`orientation_bins` bins the pixel the slow
#: way (≈ 2·10⁻⁸ degrees; torch's and numpy's angles differ by ~10⁻¹⁴).
_BIN_MARGIN = 1e-9


def orientation_bins(g_row: np.ndarray, g_col: np.ndarray) -> np.ndarray:
    """HOG's unsigned orientation bin (0..8) of each gradient, exactly as scikit-image's
    ``hog`` bins it: ``⌊(rad2deg(arctan2(g_row, g_col)) mod 180) / 20⌋`` with numpy's rounding.

    The angles come from torch's vectorised ``atan2`` (several times faster than numpy's), in
    units of bins (``atan2 · 9/π``); a pixel whose angle is not within :data:`_BIN_MARGIN` of a
    bin boundary gets ``⌊t⌋ mod 9``, which no rounding difference can change. The few pixels
    near a boundary (among them every exactly horizontal gradient: 0°, ±180°) are binned the
    slow, exact way: numpy's ``arctan2``, ``rad2deg``, the fold onto [0°, 180°) and an exact
    ``⌊·/20⌋``."""
    import torch

    flat_row = np.ascontiguousarray(g_row, np.float64).reshape(-1)
    flat_col = np.ascontiguousarray(g_col, np.float64).reshape(-1)
    t = np.empty_like(flat_row)
    out, rows, cols = (torch.from_numpy(a) for a in (t, flat_row, flat_col))
    with torch.no_grad():
        for start in range(0, t.size, _ATAN2_CHUNK):
            part = slice(start, start + _ATAN2_CHUNK)
            torch.atan2(rows[part], cols[part], out=out[part])
    t *= HOG_ORIENTATIONS / math.pi
    whole = np.floor(t)
    t -= whole  # the fraction of a bin
    near = np.flatnonzero((t < _BIN_MARGIN) | (t > 1 - _BIN_MARGIN))
    whole += np.where(whole < 0, HOG_ORIENTATIONS, 0)  # (−180°, 0°) folds onto (0°, 180°)
    bins = whole.astype(np.intp)
    if near.size:
        bins[near] = _exact_bins(flat_row[near], flat_col[near])
    return bins.reshape(np.shape(g_row))


def _exact_bins(g_row: np.ndarray, g_col: np.ndarray) -> np.ndarray:
    """:func:`orientation_bins` the slow way, with numpy's rounding at every step."""
    angle = np.rad2deg(np.arctan2(g_row, g_col))
    # ``angle % 180`` for an angle in [−180, 180], with numpy's rounding: 180 → 0, x < 0 → x + 180
    angle[angle == 180] = 0
    angle += np.where(angle < 0, 180.0, 0.0)
    # ⌊angle / 20⌋ (``np.floor_divide``, exact, is ~20× slower): the rounded quotient is at most
    # one too high, when it rounds up to a whole number, which the exact product bin × 20 (a
    # small whole number times 20) reveals
    width = 180 / HOG_ORIENTATIONS
    bins = np.floor(angle / width)
    bins -= bins * width > angle
    np.minimum(bins, HOG_ORIENTATIONS - 1, out=bins)
    return bins.astype(np.intp)


@functools.lru_cache(maxsize=4)
def _histogram_offsets(count: int, n_rows: int, n_cols: int) -> np.ndarray:
    """Where each pixel of a ``(count, 8·n_rows, 8·n_cols)`` stack puts its orientation bin in
    the flat ``(count, n_rows, n_cols, 9)`` histogram (read-only, cached per shape)."""
    h, w = n_rows * HOG_CELL, n_cols * HOG_CELL
    cell = (np.arange(h)[:, None] // HOG_CELL) * n_cols + (np.arange(w)[None, :] // HOG_CELL)
    offsets = (np.arange(count)[:, None, None] * (n_rows * n_cols) + cell) * HOG_ORIENTATIONS
    offsets.setflags(write=False)
    return offsets


def hog_descriptor(x: np.ndarray) -> np.ndarray:
    """Dalal & Triggs HOG of a 2-D map exactly as scikit-image's ``hog`` computes it (9
    unsigned orientations, 8×8-pixel cells, 3×3-cell blocks, L2-Hys, no ``transform_sqrt``),
    vectorised with numpy (orientation bins: :func:`orientation_bins`): about 10× faster on a
    224² map, which matters because the test compares one map per variant. A stack
    ``(V, H, W)`` gives one descriptor per map, ``(V, D)``. ``tests/unit/test_randomisation_similarity.py`` checks it against
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
    index = orientation_bins(g_row, g_col)
    cells = n_rows * n_cols
    index += _histogram_offsets(count, n_rows, n_cols)
    hist = np.bincount(
        index.ravel(), weights=magnitude.ravel(), minlength=count * cells * HOG_ORIENTATIONS
    ).reshape(count, n_rows, n_cols, HOG_ORIENTATIONS) / (HOG_CELL * HOG_CELL)
    b_rows, b_cols = n_rows - HOG_BLOCK + 1, n_cols - HOG_BLOCK + 1
    # (maps, block rows, block cols, cell row · cell col · orientation) of every 3×3-cell block
    blocks = np.stack(
        [
            hist[:, i : i + b_rows, j : j + b_cols]
            for i in range(HOG_BLOCK)
            for j in range(HOG_BLOCK)
        ],
        axis=3,
    ).reshape(count, b_rows, b_cols, -1)
    eps = 1e-5
    norm = np.sqrt((blocks * blocks).sum(axis=-1, keepdims=True) + eps**2)
    clipped = np.minimum(blocks / norm, 0.2)
    norm = np.sqrt((clipped * clipped).sum(axis=-1, keepdims=True) + eps**2)
    features = (clipped / norm).reshape(count, -1)
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
    all of them at once (:meth:`similarities`).

    The preparation runs in the first :meth:`similarities` pass, with the original as one more
    row of that stack (the same computations as for the randomised maps, so one pass instead of
    two)."""

    def __init__(self, heatmap: np.ndarray) -> None:
        a = np.asarray(heatmap, np.float64)
        if a.ndim != 2:
            raise ValueError(f"expected an (H, W) map, got shape {a.shape}")
        self.shape = a.shape
        self.finite = bool(np.all(np.isfinite(a)))
        self.has_hog = min(a.shape) >= HOG_CELL * HOG_BLOCK
        self.win = _ssim_window(a.shape)
        self._map = a
        self._prepared = False
        self._nonnegative = bool(np.all(a >= 0)) if self.finite else False
        self._abs_ranks: np.ndarray | None = None
        self._ranks: np.ndarray | None = None
        self._normalised = np.empty(0)
        self._ssim: _SsimSide | None = None
        self._hog: np.ndarray | None = None

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
        first = 0 if self._prepared else 1  # the first pass prepares the reference as row 0
        if first:
            b = np.concatenate([self._map[None], b])
        count = len(b)
        flat = b.reshape(count, -1)
        nonnegative = self._nonnegative and bool(np.all(flat >= 0))
        order, ordered = _sorted_rows(flat, magnitude=True)
        if first:
            self._abs_ranks = _prepared_ranks(order[0], ordered[0])
        spearman_abs = _rank_correlations(self._abs_ranks, order[first:], ordered[first:])
        if first and self._nonnegative:  # a non-negative map ranks as its absolute values
            self._ranks = self._abs_ranks
        if nonnegative:  # so do the maps
            spearman_signed = spearman_abs
        else:
            order, ordered = _sorted_rows(flat)
            if first:
                self._ranks = _prepared_ranks(order[0], ordered[0])
            spearman_signed = _rank_correlations(self._ranks, order[first:], ordered[first:])
        normalised = normalise_abs(b)
        reference = normalised[0] if first else self._normalised
        self._normalised = reference
        if self.win >= 3:
            moments = _ssim_moments(reference, normalised, self.win)
            if first:
                self._ssim = _SsimSide(reference, moments[0, 0], moments[1, 0], self.win)
            assert self._ssim is not None
            ssim = self._ssim.ssim(moments[:, first:])
        else:
            ssim = np.full(count - first, math.nan)
        if self.has_hog:
            features, hog_constant = _hog_features(normalised)
            if first:
                self._hog = None if hog_constant[0] else features[0]
            hog = _correlations(self._hog, features[first:], hog_constant[first:])
        else:
            hog = np.full(count - first, math.nan)
        self._prepared = True
        return np.stack([spearman_abs, spearman_signed, ssim, hog], axis=1)


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
