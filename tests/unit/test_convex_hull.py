"""Convex hull, RC and RS (Mazini Rodrigues et al. Eq. 1–2) on hand-countable masks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
import pytest

from xaiserve.errors import InvalidInput
from xaiserve.evaluation.convex_hull import (
    convex_hull,
    convex_hull_mask,
    hull_area_ratio,
    hull_sensitivity,
    important_pixels,
)


def _mask(shape: tuple[int, int], pixels: list[tuple[int, int]]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for i, j in pixels:
        m[i, j] = True
    return m


def test_triangle_hull_counts_pixels_inside_and_on_the_boundary() -> None:
    """Hull of (0,0), (0,4), (4,0): the pixels with i + j ≤ 4, i.e. 5+4+3+2+1 = 15."""
    hull = convex_hull_mask(_mask((6, 6), [(0, 0), (0, 4), (4, 0)]))
    i, j = np.indices((6, 6))
    np.testing.assert_array_equal(hull, i + j <= 4)
    assert hull_area_ratio(hull) == pytest.approx(15 / 36)


def test_rectangle_corners_fill_the_rectangle() -> None:
    hull = convex_hull_mask(_mask((5, 5), [(1, 1), (1, 3), (3, 1), (3, 3)]))
    expected = np.zeros((5, 5), dtype=bool)
    expected[1:4, 1:4] = True
    np.testing.assert_array_equal(hull, expected)


def test_degenerate_hulls() -> None:
    diagonal = convex_hull_mask(_mask((4, 4), [(0, 0), (2, 2)]))
    np.testing.assert_array_equal(diagonal, _mask((4, 4), [(0, 0), (1, 1), (2, 2)]))
    row = convex_hull_mask(_mask((3, 5), [(1, 0), (1, 3)]))
    np.testing.assert_array_equal(row, _mask((3, 5), [(1, 0), (1, 1), (1, 2), (1, 3)]))
    single = _mask((3, 3), [(2, 1)])
    np.testing.assert_array_equal(convex_hull_mask(single), single)


def test_important_pixels_keeps_the_top_fraction_and_all_ties() -> None:
    heatmap = np.arange(16.0).reshape(4, 4)
    np.testing.assert_array_equal(important_pixels(heatmap), heatmap >= 8)  # paper: top 50 %
    np.testing.assert_array_equal(important_pixels(heatmap, 0.25), heatmap >= 12)
    tied = np.array([[3.0, 3.0], [1.0, 0.0]])
    np.testing.assert_array_equal(important_pixels(tied, 0.25), tied == 3.0)
    with pytest.raises(InvalidInput, match="hull_keep_fraction"):
        important_pixels(heatmap, 0.0)


def test_convex_hull_of_a_heatmap_and_rc_against_a_reference() -> None:
    heatmap = np.zeros((6, 6))
    heatmap[0, 0] = heatmap[0, 4] = heatmap[4, 0] = 1.0
    hull = convex_hull(heatmap, keep_fraction=3 / 36)
    assert hull.sum() == 15
    reference = np.ones((6, 6), dtype=bool)
    reference[5] = False  # 30 pixels
    assert hull_area_ratio(hull, reference) == pytest.approx(15 / 30)  # Eq. 1


class SumLogitModel:
    """Two classes with logits ``Σ_p mean_c(x_p) / 100`` and 0."""

    input_size = (4, 4)
    num_classes = 2
    output_kind: Literal["logits", "probabilities"] = "logits"

    def predict(
        self,
        images: np.ndarray | Iterable[np.ndarray],
        output: Literal["probabilities", "raw"] = "probabilities",
    ) -> np.ndarray:
        x = images if isinstance(images, np.ndarray) else np.concatenate(list(images))
        logits = np.zeros((x.shape[0], 2))
        logits[:, 0] = x.mean(axis=3).sum(axis=(1, 2)) / 100
        if output == "raw":
            return logits
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def test_rs_uses_raw_outputs() -> None:
    """All-100 image: N_0(I) = 16; zeroing a 4-pixel hull gives 12: RS = |16 − 12| / 4 = 1."""
    image = np.full((4, 4, 3), 100.0, dtype=np.float32)
    hull = _mask((4, 4), [(0, 0), (0, 1), (1, 0), (1, 1)])
    assert hull_sensitivity(SumLogitModel(), image, hull, 0) == pytest.approx(1.0)
    assert hull_sensitivity(SumLogitModel(), image, hull, 1) == 0.0
    with pytest.raises(InvalidInput, match="empty"):
        hull_sensitivity(SumLogitModel(), image, np.zeros((4, 4), dtype=bool), 0)
