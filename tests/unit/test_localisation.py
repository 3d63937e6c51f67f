"""μ, μ_w (Kohlbrenner et al. Eq. 2) and precision/recall/F (Seo et al. Fig. 5) by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xaiserve.errors import InvalidInput
from xaiserve.evaluation.localisation import (
    DEFAULT_THRESHOLDS,
    boxes_to_mask,
    inside_total_relevance_ratio,
    localisation,
    normalise,
    object_fraction,
    precision_recall_f,
    weighted_inside_total_relevance_ratio,
)

HEATMAP = np.array(
    [
        [4.0, 2.0, 0.0, -1.0],
        [2.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
MASK = np.zeros((4, 4), dtype=bool)
MASK[:2, :2] = True


def test_mu_counts_positive_relevance_only() -> None:
    """R_in = 4+2+2+1 = 9, R_tot = 9+1 = 10 (the −1 is ignored): μ = 0.9; S_in/S_tot = 4/16,
    so μ_w = 0.9 · 16/4 = 3.6."""
    assert inside_total_relevance_ratio(HEATMAP, MASK) == pytest.approx(0.9)
    assert object_fraction(MASK) == 0.25
    assert weighted_inside_total_relevance_ratio(HEATMAP, MASK) == pytest.approx(3.6)


def test_uniform_heatmap_is_the_papers_baseline() -> None:
    uniform = np.ones((4, 4))
    assert inside_total_relevance_ratio(uniform, MASK) == pytest.approx(0.25)
    assert weighted_inside_total_relevance_ratio(uniform, MASK) == pytest.approx(1.0)


def test_mu_is_nan_without_positive_relevance() -> None:
    assert math.isnan(inside_total_relevance_ratio(-np.ones((4, 4)), MASK))


def test_boxes_union_half_open_and_clipped() -> None:
    mask = boxes_to_mask([(0, 0, 2, 2), (1, 1, 3, 9)], (4, 4))
    expected = np.array(
        [
            [1, 1, 0, 0],
            [1, 1, 1, 0],
            [0, 1, 1, 0],
            [0, 1, 1, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(mask, expected)
    assert inside_total_relevance_ratio(HEATMAP, mask) == pytest.approx(0.9)
    with pytest.raises(InvalidInput, match="empty"):
        boxes_to_mask([(2, 2, 2, 3)], (4, 4))


def test_precision_recall_f_by_hand() -> None:
    """Normalised map (h + 1)/5: 4 → 1, 2 → .6, 1 → .4, 0 → .2, −1 → 0.
    t = 0: all 16 selected, TP 4 → P .25, R 1, F .4.
    t = .3: 4, 2, 2, 1 and the corner 1 → P 4/5, R 1, F 8/9.
    t = .5: 4, 2, 2 → P 1, R 3/4, F 6/7.  t = 1: the 4 alone → P 1, R 1/4, F .4."""
    t, p, r, f = precision_recall_f(HEATMAP, MASK, thresholds=[0.0, 0.3, 0.5, 1.0])
    np.testing.assert_allclose(t, [0, 0.3, 0.5, 1])
    np.testing.assert_allclose(p, [0.25, 0.8, 1, 1])
    np.testing.assert_allclose(r, [1, 1, 0.75, 0.25])
    np.testing.assert_allclose(f, [0.4, 8 / 9, 6 / 7, 0.4])


def test_f_beta() -> None:
    """β² = 0.3 at t = .3: F = 1.3 · .8 · 1 / (.3 · .8 + 1) = 1.04 / 1.24."""
    _, _, _, f = precision_recall_f(HEATMAP, MASK, thresholds=[0.3], beta=math.sqrt(0.3))
    assert f[0] == pytest.approx(1.04 / 1.24)


def test_constant_heatmap_selects_nothing_above_zero() -> None:
    _, p, r, f = precision_recall_f(np.full((4, 4), 7.0), MASK, thresholds=[0.0, 0.5])
    np.testing.assert_allclose(p, [0.25, 0.0])
    np.testing.assert_allclose(r, [1.0, 0.0])
    np.testing.assert_allclose(f, [0.4, 0.0])
    np.testing.assert_array_equal(normalise(np.full((2, 2), 3.0)), np.zeros((2, 2)))


def test_localisation_bundles_everything() -> None:
    result = localisation(HEATMAP, MASK)
    assert result.mu == pytest.approx(0.9) and result.mu_weighted == pytest.approx(3.6)
    assert result.object_fraction == 0.25
    assert len(DEFAULT_THRESHOLDS) == 21 and DEFAULT_THRESHOLDS[1] == 0.05
    assert result.precision.shape == result.recall.shape == result.f_measure.shape == (21,)
    assert result.recall[0] == 1.0


def test_invalid_inputs() -> None:
    with pytest.raises(InvalidInput, match="mask has shape"):
        localisation(HEATMAP, np.ones((3, 3), dtype=bool))
    with pytest.raises(InvalidInput, match="no object pixels"):
        localisation(HEATMAP, np.zeros((4, 4), dtype=bool))
    with pytest.raises(InvalidInput, match="thresholds"):
        precision_recall_f(HEATMAP, MASK, thresholds=[1.5])
