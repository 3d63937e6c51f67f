"""Exact region counts for Algorithm 3's scales, and the boundary prior (Seo et al., Sec. 3.3)."""

from __future__ import annotations

import numpy as np
import pytest

from xaiserve.errors import InvalidInput
from xaiserve.imaging.exact_regions import (
    adjacent_pairs,
    border_regions,
    boundary_prior,
    exact_superpixels,
    mean_shift,
    merge_to_count,
    split_to_count,
)
from xaiserve.imaging.segmentation import SegmentationParams


def textured(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth colour blobs plus grain: something superpixels have to work on."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (4, 5, 3))
    ys = np.linspace(0, 3, h)[:, None]
    xs = np.linspace(0, 4, w)[None, :]
    y0, x0 = np.floor(ys).astype(int).clip(0, 2), np.floor(xs).astype(int).clip(0, 3)
    fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
    image = (
        coarse[y0, x0] * (1 - fy) * (1 - fx)
        + coarse[y0 + 1, x0] * fy * (1 - fx)
        + coarse[y0, x0 + 1] * (1 - fy) * fx
        + coarse[y0 + 1, x0 + 1] * fy * fx
    )
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.float32)


IMAGES = {
    "blobs": textured(48, 56, 0),
    "blobs2": textured(40, 40, 1),
    "flat": np.full((32, 36, 3), 128.0, np.float32),
    "halves": np.concatenate(
        [np.zeros((32, 16, 3), np.float32), np.full((32, 16, 3), 255.0, np.float32)], axis=1
    ),
}


@pytest.mark.parametrize("algorithm", ["slic", "felzenszwalb", "quickshift"])
@pytest.mark.parametrize("name", sorted(IMAGES))
def test_exact_counts_for_every_scale(algorithm: str, name: str) -> None:
    image = IMAGES[name]
    params = SegmentationParams(algorithm=algorithm)  # type: ignore[arg-type]
    for n in (2, 4, 8, 16, 32):
        labels = exact_superpixels(image, n, params)
        assert labels.shape == image.shape[:2] and labels.dtype == np.int32
        assert sorted(np.unique(labels).tolist()) == list(range(n)), (name, algorithm, n)


def test_exact_count_for_the_prior_scale_and_determinism() -> None:
    image = IMAGES["blobs"]
    labels = exact_superpixels(image, 256)
    assert int(labels.max()) + 1 == 256 == len(np.unique(labels))
    np.testing.assert_array_equal(labels, exact_superpixels(image, 256))
    with pytest.raises(InvalidInput):
        exact_superpixels(np.zeros((4, 4, 3), np.float32), 17)


def test_merge_joins_the_most_similar_neighbours() -> None:
    # Four 4×4 quadrants with colours 0, 2 (top) and 100, 104 (bottom): merging to 2 regions
    # joins the similar pairs, never across the 100-unit edge.
    labels = np.zeros((8, 8), np.int32)
    labels[:4, 4:] = 1
    labels[4:, :4] = 2
    labels[4:, 4:] = 3
    image = np.zeros((8, 8, 3), np.float32)
    for region, value in enumerate((0.0, 2.0, 100.0, 104.0)):
        image[labels == region] = value
    merged = merge_to_count(image, labels, 2)
    assert len(np.unique(merged[:4])) == 1 and len(np.unique(merged[4:])) == 1
    assert merged[0, 0] != merged[7, 7]
    # to 3: the cheapest Ward merge is 0+2 (‖Δ‖² = 4·3) before 100+104 (16·3)
    merged3 = merge_to_count(image, labels, 3)
    assert merged3[0, 0] == merged3[0, 7] and len({merged3[7, 0], merged3[7, 7]}) == 2


def test_adjacency_pairs_are_4_connected() -> None:
    labels = np.array([[0, 1], [2, 3]])
    assert adjacent_pairs(labels).tolist() == [[0, 1], [0, 2], [1, 3], [2, 3]]


def test_split_halves_the_largest_region_along_its_long_side() -> None:
    labels = np.zeros((4, 8), np.int32)
    split = split_to_count(labels, 2)
    assert np.all(split[:, :4] == split[0, 0]) and np.all(split[:, 4:] == split[0, 7])
    assert split[0, 0] != split[0, 7]
    four = split_to_count(labels, 4)
    assert sorted(np.bincount(four.ravel()).tolist()) == [8, 8, 8, 8]


def test_border_regions() -> None:
    labels = np.array([[0, 0, 1], [2, 3, 1], [2, 2, 2]])
    assert border_regions(labels).tolist() == [0, 1, 2]


def test_boundary_prior_mode_of_largest_cluster() -> None:
    # 8×8 tiles of 6×6 pixels: border tiles are green background except three red ones (an
    # object touching the border) and two slightly different greens; the interior is blue.
    # The largest mean-shift cluster is the greens, whose mode is their mean.
    tile = 6
    labels = np.arange(64).reshape(8, 8).repeat(tile, 0).repeat(tile, 1).astype(np.int32)
    colours = np.zeros((64, 3))
    colours[:] = (20.0, 40.0, 220.0)
    border = border_regions(labels)
    assert len(border) == 28
    colours[border] = (10.0, 200.0, 30.0)
    colours[[0, 1, 8]] = (230.0, 20.0, 20.0)  # the object in the corner
    colours[[3]] = (12.0, 202.0, 32.0)
    colours[[4]] = (8.0, 198.0, 28.0)
    image = colours[labels].astype(np.float32)
    prior = boundary_prior(image, labels, bandwidth=20.0)
    np.testing.assert_allclose(prior.mu, (10.0, 200.0, 30.0), atol=1e-9)
    assert len(prior.region_means) == 28
    assert np.bincount(prior.cluster)[prior.largest] == 25
    # with an estimated bandwidth the answer is the same
    np.testing.assert_allclose(boundary_prior(image, labels).mu, (10.0, 200.0, 30.0), atol=1e-9)


def test_boundary_prior_on_uniform_border() -> None:
    image = np.full((16, 16, 3), 77.0, np.float32)
    labels = exact_superpixels(image, 16)
    prior = boundary_prior(image, labels)
    np.testing.assert_allclose(prior.mu, (77.0, 77.0, 77.0), atol=1e-9)
    assert prior.bandwidth == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_shift_matches_sklearn(seed: int) -> None:
    from sklearn.cluster import MeanShift, estimate_bandwidth

    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 255, (3, 3))
    points = np.concatenate(
        [
            rng.normal(c, 10.0, (int(m), 3))
            for c, m in zip(centres, rng.integers(4, 25, 3), strict=True)
        ]
    )
    bandwidth = float(estimate_bandwidth(points, quantile=0.3))
    reference = MeanShift(bandwidth=bandwidth).fit(points)
    got_centres, got_labels = mean_shift(points, bandwidth)
    np.testing.assert_allclose(got_centres, reference.cluster_centers_, atol=1e-9)
    np.testing.assert_array_equal(got_labels, reference.labels_)
