"""SLIC with its preparation shared across counts: the labels of scikit-image's ``slic`` itself.

:func:`~xaiserve.imaging.segmentation.slic_input` prepares an image once (rescale, CIELAB,
smoothing, compactness) and :func:`~xaiserve.imaging.segmentation.slic_from_input` clusters it
at any count; both are checked bit for bit against ``skimage.segmentation.slic`` called directly
(the independent computation) on a photograph and synthetic images, at the counts Algorithm 3
asks for, with other ``sigma``/``compactness``/``slic_zero`` settings, and through the shared
segmenter (which keeps prepared inputs between counts).
"""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data
from skimage.segmentation import slic
from skimage.transform import resize

from xaiserve.imaging.exact_regions import exact_superpixels
from xaiserve.imaging.segmentation import (
    SegmentationParams,
    relabel_contiguous,
    slic_from_input,
    slic_input,
    superpixels,
)
from xaiserve.imaging.segmenter import ExactRegions, Segmenter, Superpixels

from .test_exact_regions import IMAGES


def photograph(size: int = 96) -> np.ndarray:
    return (255.0 * resize(data.astronaut(), (size, size), anti_aliasing=True)).astype(np.float32)


def skimage_labels(image: np.ndarray, params: SegmentationParams) -> np.ndarray:
    """scikit-image's slic as the service called it before the split."""
    rgb = np.clip(image, 0, 255).astype(np.float64) / 255.0
    labels = slic(
        rgb,
        n_segments=params.n_segments,
        compactness=params.compactness,
        sigma=params.sigma,
        start_label=0,
        channel_axis=-1,
        slic_zero=params.slic_zero,
    )
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int32)


CASES = [
    {},
    {"sigma": 0.0},
    {"sigma": 2.5, "compactness": 30.0},
    {"slic_zero": False, "compactness": 3.0},
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", ["photo", "blobs", "halves", "flat"])
def test_one_prepared_input_gives_slic_labels_at_every_count(name: str, case: dict) -> None:
    image = photograph() if name == "photo" else IMAGES[name]
    base = SegmentationParams(**case)
    prepared = slic_input(image, base)
    before = prepared.copy()
    for n in (4, 8, 16, 32, 64, 512):
        params = SegmentationParams(**{**case, "n_segments": n})
        want = skimage_labels(image, params)
        np.testing.assert_array_equal(relabel_contiguous(slic_from_input(prepared, params)), want)
        np.testing.assert_array_equal(superpixels(image, params), want)
    np.testing.assert_array_equal(prepared, before)  # read, never written


def test_the_segmenter_shares_one_input_and_keeps_the_exact_counts() -> None:
    image = photograph(80)
    params = SegmentationParams()
    seg = Segmenter(workers=1, device="cpu")
    try:
        img = seg.image(image)
        for n in (2, 4, 8, 16, 32):
            got = seg.get(img, ExactRegions(n, params))
            # exact_superpixels over scikit-image's own slic, no sharing
            want = exact_superpixels(image, n, params, segment=lambda p: skimage_labels(image, p))
            np.testing.assert_array_equal(got, want)
        got = seg.get(img, Superpixels(SegmentationParams(n_segments=300)))
        np.testing.assert_array_equal(
            got, skimage_labels(image, SegmentationParams(n_segments=300))
        )
        assert seg.slic_inputs.hits >= 5 and len(seg.slic_inputs) == 1  # prepared once
    finally:
        seg.close()


def test_relabel_contiguous_keeps_order_like_unique() -> None:
    rng = np.random.default_rng(0)
    for labels in (
        rng.integers(0, 9, (13, 17)),
        rng.choice([3, 7, 40, 41], (10, 10)),
        rng.integers(-5, 5, (6, 6)),
        np.arange(12).reshape(3, 4),
        np.full((4, 4), 2**40, np.int64),
    ):
        _, inverse = np.unique(labels, return_inverse=True)
        got = relabel_contiguous(labels)
        np.testing.assert_array_equal(got, inverse.reshape(labels.shape))
        assert got.dtype == np.int32


def test_the_pinned_scikit_image_takes_the_split_path() -> None:
    """The first-use check passes on the pinned scikit-image, so the shared preparation is what
    runs (a failing check would fall back to ``slic`` whole and only log a warning)."""
    from xaiserve.imaging.segmentation import _check_split_slic, split_slic_usable

    assert _check_split_slic() and split_slic_usable()
