"""Similarity figures of the model-parameter randomisation test (Adebayo et al. 2018), checked
against hand computation and the paper's equations (Spearman's ρ, Wang et al.'s SSIM Eq. 13)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xaiserve.evaluation.randomisation import (
    HOG_UNAVAILABLE,
    MapSimilarity,
    map_similarity,
    mean_curve,
    normalise_abs,
    randomisation_curve,
    spearman,
)


def test_spearman_hand_computed() -> None:
    # ranks differ by d = (0, 1, -1, 0): ρ = 1 − 6·Σd² / (n(n² − 1)) = 1 − 12/60 = 0.8
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4])) == pytest.approx(0.8)
    # one swap of the extremes: d = (-3, 1, 1, 1), Σd² = 12 → 1 − 72/60 = −0.2
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([4.0, 1, 2, 3])) == pytest.approx(-0.2)


def test_absolute_and_signed_rank_correlation_differ_on_a_sign_flip() -> None:
    a = np.array([[-4.0, 1.0], [2.0, 3.0]])
    b = np.array([[4.0, 1.0], [2.0, 3.0]])
    sim = map_similarity(a, b)
    assert sim.spearman_abs == pytest.approx(1.0)  # |a| = |b|
    assert sim.spearman_signed == pytest.approx(-0.2)  # the hand-computed case above


def test_constant_maps_have_no_ranking() -> None:
    flat = np.zeros((4, 4))
    varied = np.arange(16.0).reshape(4, 4)
    assert spearman(flat, varied) == 0.0
    assert spearman(flat, flat + 3.0) == 1.0


def _wang_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. (2004) Eq. 13 over one window covering the whole map, sample statistics."""
    c1, c2 = 0.01**2, 0.03**2
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(ddof=1), y.var(ddof=1)
    cov = ((x - mx) * (y - my)).sum() / (x.size - 1)
    return float(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))


def test_ssim_matches_wang_et_al_on_one_window() -> None:
    rng = np.random.default_rng(3)
    a = rng.random((7, 7))
    b = 0.5 * a + 0.5 * rng.random((7, 7))
    for m in (a, b):  # maps already on [0, 1] with 0 and 1 present: the normalisation is identity
        m.flat[0], m.flat[1] = 0.0, 1.0
    np.testing.assert_allclose(normalise_abs(a), a)
    got = map_similarity(a, b).ssim
    assert got == pytest.approx(_wang_ssim(a, b), rel=1e-9)
    assert map_similarity(a, a).ssim == pytest.approx(1.0)


def test_ssim_uses_adebayo_normalisation() -> None:
    # |h| scaled to [0, 1]: a map and its negative (or a rescaled copy) are the same picture
    rng = np.random.default_rng(0)
    a = rng.normal(size=(32, 32))
    sim = map_similarity(a, -3.0 * a)
    assert sim.ssim == pytest.approx(1.0)
    assert sim.hog == pytest.approx(1.0)
    assert sim.spearman_abs == pytest.approx(1.0)
    assert sim.spearman_signed == pytest.approx(-1.0)


def test_hog_tells_orientation_apart() -> None:
    y, x = np.mgrid[0:48, 0:48]
    vertical = (np.sin(x / 2.0) > 0).astype(float)
    horizontal = (np.sin(y / 2.0) > 0).astype(float)
    assert map_similarity(vertical, vertical).hog == pytest.approx(1.0)
    assert map_similarity(vertical, horizontal).hog < 0.2


def test_hog_needs_one_block() -> None:
    small = np.arange(256.0).reshape(16, 16)
    assert math.isnan(map_similarity(small, small).hog)
    curve = randomisation_curve("m", small, [small], [1], ["fc"], 1)
    assert HOG_UNAVAILABLE in curve.notes


def test_curve_summary_is_rank_correlation_at_full_randomisation() -> None:
    rng = np.random.default_rng(1)
    original = rng.random((32, 32))
    maps = [original + 0.1 * rng.random((32, 32)), rng.random((32, 32))]
    curve = randomisation_curve("gradient", original, maps, [1, 3], ["fc (Gemm)", "c1 (Conv)"], 3)
    assert curve.full
    assert curve.summary == pytest.approx(spearman(np.abs(original), np.abs(maps[1])))
    assert curve.metric("spearman_abs")[0] > 0.9 > curve.summary
    d = curve.as_dict()
    assert d["layers"] == ["fc (Gemm)", "c1 (Conv)"] and d["depths"] == [1, 3]


def test_mean_curve_averages_per_stop_and_skips_nan() -> None:
    def curve(values: list[float]) -> object:
        sims = tuple(MapSimilarity(v, v, v, math.nan if v < 0 else v) for v in values)
        from xaiserve.evaluation.randomisation import RandomisationCurve

        return RandomisationCurve("m", (1, 2), ("a", "b"), 2, sims)

    c1, c2 = curve([1.0, 0.2]), curve([0.5, -0.4])
    mean = mean_curve([c1, c2])  # type: ignore[list-item]
    assert mean.images == 2
    assert mean.metric("spearman_abs") == pytest.approx([0.75, -0.1])
    assert mean.metric("hog") == pytest.approx([0.75, 0.2])  # the NaN is skipped


@pytest.mark.parametrize("shape", [(224, 224), (64, 64), (30, 41), (24, 24), (100, 77)])
def test_hog_descriptor_matches_scikit_image(shape: tuple[int, int]) -> None:
    from skimage.feature import hog

    from xaiserve.evaluation.randomisation import hog_descriptor

    rng = np.random.default_rng(sum(shape))
    a = rng.random(shape)
    a[a < 0.3] = 0.0  # flat patches and exact zeros, as in ReLU-network maps
    expected = hog(
        a,
        orientations=9,
        pixels_per_cell=(8, 8),
        cells_per_block=(3, 3),
        block_norm="L2-Hys",
        feature_vector=True,
    )
    np.testing.assert_allclose(hog_descriptor(a), expected, atol=1e-6)


def _maps_with_ties(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Signed, non-negative, tied (exact zeros, rounded values) and constant maps."""
    rng = np.random.default_rng(seed)
    signed = rng.normal(size=shape)
    zeros = np.where(rng.random(shape) < 0.4, 0.0, signed)  # runs of exact zeros, as in ReLU maps
    few = signed.copy()
    few.flat[1::29] = few.flat[0]  # a few ties (one run of n/29 values)
    few.flat[2::31] = -few.flat[2]  # a second run, tied in |map| with pixel 2
    return np.stack(
        [signed, np.abs(signed), np.round(2 * signed), zeros, np.full(shape, 3.0), -signed, few]
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(64, 64), (30, 41), (9, 9)])
def test_stacked_similarities_match_scipy_and_scikit_image(
    shape: tuple[int, int], dtype: type[np.floating]
) -> None:
    """The vectorised figures for a stack of maps against two independent implementations:
    scipy's Spearman ρ and scikit-image's SSIM, map by map (and the HOG of the single-map
    path), with ties, exact zeros and a constant map in the stack. float32 maps (what methods
    return) take the sort-by-value path of the rank correlations, float64 ones ``argsort``."""
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    from xaiserve.evaluation.randomisation import ReferenceMap

    maps = _maps_with_ties(shape, seed=sum(shape)).astype(dtype)
    for original in (maps[0], maps[3], maps[1]):
        reference = ReferenceMap(original)
        stacked = reference.similarities(maps)
        for b, sim in zip(maps, stacked, strict=True):
            alone = reference.similarity(b).as_dict()
            assert sim.as_dict() == pytest.approx(alone, abs=1e-12, nan_ok=True)
            if np.ptp(b) == 0:
                assert sim.spearman_abs == 0.0 and sim.spearman_signed == 0.0
                continue
            rho_abs = spearmanr(np.abs(original).ravel(), np.abs(b).ravel()).statistic
            rho = spearmanr(original.ravel(), b.ravel()).statistic
            assert sim.spearman_abs == pytest.approx(rho_abs, abs=1e-12)
            assert sim.spearman_signed == pytest.approx(rho, abs=1e-12)
            expected = structural_similarity(
                normalise_abs(original), normalise_abs(b), data_range=1.0, win_size=7
            )
            assert sim.ssim == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_average_ranks_match_scipy_rankdata_row_by_row(dtype: type[np.floating]) -> None:
    from scipy.stats import rankdata

    from xaiserve.evaluation.randomisation import average_ranks

    rows = _maps_with_ties((12, 13), seed=4).reshape(7, -1).astype(dtype)
    rows[3, ::2] = -0.0  # -0.0 and +0.0 are one value (ties), in both sort paths
    rows[0, :3] = np.finfo(dtype).tiny / 4  # subnormal values keep their order
    np.testing.assert_array_equal(average_ranks(rows), rankdata(rows, axis=1))
    wide = np.asarray(rows, np.float64)
    wide[1, 5] += 1e-12  # a value with no spare low bits: the argsort path, same ranks
    np.testing.assert_array_equal(average_ranks(wide), rankdata(wide, axis=1))


def test_orientation_bins_match_numpy_arctan2_at_every_bin_boundary() -> None:
    """HOG's orientation bins (torch's ``atan2`` with numpy's at the boundaries) against the
    formula scikit-image's ``hog`` uses, with gradients a few ulps either side of every bin
    boundary (multiples of 20°, ±180°), exactly horizontal and vertical ones, ±0 and random
    ones."""
    from xaiserve.evaluation.randomisation import orientation_bins

    rng = np.random.default_rng(7)
    boundaries = np.deg2rad(np.arange(-180.0, 181.0, 20.0))
    angles = np.concatenate(
        [boundaries + k * np.spacing(np.pi) for k in range(-4, 5)] + [rng.uniform(-4, 4, 4001)]
    )
    radius = rng.choice([1e-12, 0.5, 1.0, 3.0], size=angles.size)
    g_row = (radius * np.sin(angles)).reshape(-1, 7)
    g_col = (radius * np.cos(angles)).reshape(-1, 7)
    g_row[:3, :4] = [[0.0, -0.0, 0.0, -0.0], [1.0, -1.0, 0.0, 0.0], [1e-300, -1e-300, 0.0, 0.0]]
    g_col[:3, :4] = [[1.0, 1.0, -1.0, -1.0], [0.0, 0.0, 0.0, -0.0], [1.0, 1.0, -1.0, 2.0]]
    expected = np.minimum(np.floor_divide(np.rad2deg(np.arctan2(g_row, g_col)) % 180, 20), 8)
    np.testing.assert_array_equal(orientation_bins(g_row, g_col), expected.astype(np.intp))


def test_reference_prepared_in_one_pass_serves_every_later_pass() -> None:
    """The original map is prepared in the first pass (as one more row of its stack); maps
    compared one at a time on a fresh reference, or after a pass of non-negative maps against a
    non-negative original, get the figures of the one-stack pass and scipy's ρ."""
    from scipy.stats import spearmanr

    from xaiserve.evaluation.randomisation import ReferenceMap

    maps = _maps_with_ties((32, 32), seed=9).astype(np.float32)
    stacked = ReferenceMap(maps[0]).similarities(maps)
    one_by_one = ReferenceMap(maps[0])
    for b, sim in zip(maps, stacked, strict=True):
        assert one_by_one.similarity(b).as_dict() == pytest.approx(sim.as_dict(), abs=1e-12)
    nonnegative = ReferenceMap(maps[1])  # |signed|
    nonnegative.similarities(maps[1:2])  # prepared on a non-negative pass
    for b in (maps[0], maps[5]):  # then signed maps
        sim = nonnegative.similarity(b)
        rho = spearmanr(maps[1].ravel(), b.ravel()).statistic
        assert sim.spearman_signed == pytest.approx(rho, abs=1e-12)


def test_non_finite_map_in_a_stack_gives_nan_only_for_itself() -> None:
    from xaiserve.evaluation.randomisation import ReferenceMap

    maps = _maps_with_ties((32, 32), seed=5)
    maps[2, 3, 4] = np.inf
    sims = ReferenceMap(maps[0]).similarities(maps)
    assert all(math.isnan(v) for v in sims[2].as_dict().values())
    assert sims[0].spearman_abs == pytest.approx(1.0) and sims[0].hog == pytest.approx(1.0)
    assert not math.isnan(sims[1].ssim)


@pytest.mark.parametrize("count", [3, 9])
def test_stacked_comparisons_equal_one_stack(count: int) -> None:
    """The randomisation test's comparisons: 128² maps make stacks of 4 (``BATCH_PIXELS``), so
    9 maps are compared in three passes (4, 4, 1) and 3 maps in one; both give the figures of
    one pass over all the maps."""
    from xaiserve.evaluation.randomisation import ReferenceMap
    from xaiserve.models.randomised_variants import BATCH_PIXELS, StackedComparisons

    shape = (128, 128)
    assert BATCH_PIXELS // (shape[0] * shape[1]) == 4
    rng = np.random.default_rng(count)
    original = rng.normal(size=shape).astype(np.float32)
    maps = (original + rng.normal(scale=2.0, size=(count, *shape))).astype(np.float32)
    comparisons = StackedComparisons(ReferenceMap(original))
    for m in maps:
        comparisons.add(m)
    got = comparisons.results()
    assert comparisons.passes == -(-count // 4)
    assert len(got) == count
    for g, e in zip(got, ReferenceMap(original).similarities(maps), strict=True):
        assert g.as_dict() == pytest.approx(e.as_dict(), abs=1e-12)
