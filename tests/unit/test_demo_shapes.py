"""The synthetic shapes generator: determinism, ground truth that is true, folder layout."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.measure import regionprops

from xaiserve.demo import shapes

N = 200


@pytest.fixture(scope="module")
def data() -> shapes.ShapesDataset:
    """A module-wide sample of the held-out split."""
    return shapes.heldout(N)


def test_types_and_shapes(data: shapes.ShapesDataset) -> None:
    assert len(data) == N
    assert data.images.shape == (N, 64, 64, 3) and data.images.dtype == np.uint8
    assert data.labels.shape == (N,) and data.labels.dtype == np.int64
    assert data.masks.shape == (N, 64, 64) and data.masks.dtype == np.bool_
    assert data.boxes.shape == (N, 4) and np.issubdtype(data.boxes.dtype, np.integer)
    assert data.colors.shape == (N, 3) and data.colors.dtype == np.uint8
    assert data.class_names == shapes.CLASS_NAMES
    assert len(shapes.CLASS_NAMES) >= 4 and len(set(shapes.CLASS_NAMES)) == len(shapes.CLASS_NAMES)


def test_other_sizes() -> None:
    d = shapes.generate(5, seed=3, size=96)
    assert d.images.shape == (5, 96, 96, 3) and d.masks.shape == (5, 96, 96)
    lo, hi = shapes.COVERAGE_RANGE
    assert np.all((d.coverage >= lo) & (d.coverage <= hi))


def test_same_seed_same_arrays() -> None:
    a, b = shapes.generate(20, seed=11), shapes.generate(20, seed=11)
    for field in ("images", "labels", "masks", "boxes", "colors"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_sample_independent_of_n_and_start() -> None:
    big = shapes.generate(30, seed=5)
    small = shapes.generate(7, seed=5)
    window = shapes.generate(10, seed=5, start=15)
    np.testing.assert_array_equal(big.images[:7], small.images)
    np.testing.assert_array_equal(big.masks[:7], small.masks)
    np.testing.assert_array_equal(big.images[15:25], window.images)
    np.testing.assert_array_equal(big.labels[15:25], window.labels)
    np.testing.assert_array_equal(big.boxes[15:25], window.boxes)


@pytest.mark.parametrize(
    ("seed", "digest"),
    [
        (shapes.TRAIN_SEED, "c3d850f7751ed98f76fdef11c2a21fc6e75ab0301d80c7278fcb7271c7862880"),
        (shapes.HELDOUT_SEED, "eb0a1b5deaf3e47efaaa1d28921085bcacc8b9d537b2d553f68e7c231c3f3415"),
    ],
)
def test_splits_are_pinned(seed: int, digest: str) -> None:
    """The committed model was trained and evaluated on exactly these pixels.

    If a generator change trips this, retrain ``models/shapes/1`` and update the digests.
    """
    d = shapes.generate(50, seed)
    assert hashlib.sha256(d.images.tobytes() + d.masks.tobytes()).hexdigest() == digest


def test_seeds_and_indices_differ() -> None:
    a, b = shapes.generate(10, seed=1), shapes.generate(10, seed=2)
    assert all(not np.array_equal(a.images[i], b.images[i]) for i in range(10))
    assert len({a.images[i].tobytes() for i in range(10)}) == 10


def test_heldout_is_the_fixed_heldout_seed() -> None:
    assert shapes.TRAIN_SEED != shapes.HELDOUT_SEED
    np.testing.assert_array_equal(
        shapes.heldout(6).images, shapes.generate(6, shapes.HELDOUT_SEED).images
    )


def test_classes_balanced(data: shapes.ShapesDataset) -> None:
    counts = np.bincount(data.labels, minlength=len(shapes.CLASS_NAMES))
    assert counts.min() == counts.max() == N // len(shapes.CLASS_NAMES)


def test_masks_nonempty_and_box_is_tight(data: shapes.ShapesDataset) -> None:
    for mask, (y0, x0, y1, x1) in zip(data.masks, data.boxes, strict=True):
        assert mask.any()
        assert 0 <= y0 < y1 <= 64 and 0 <= x0 < x1 <= 64
        assert mask[y0:y1, x0:x1].sum() == mask.sum()  # everything inside the box
        inner = mask[y0:y1, x0:x1]
        # tight: every edge row/column of the box touches the object
        assert inner[0].any() and inner[-1].any() and inner[:, 0].any() and inner[:, -1].any()
        # the object does not touch the image border (it lies fully inside the image)
        assert y0 > 0 and x0 > 0 and y1 < 64 and x1 < 64


def test_single_connected_object(data: shapes.ShapesDataset) -> None:
    for mask in data.masks:
        _, count = ndimage.label(mask, structure=np.ones((3, 3)))  # 8-connected
        assert count == 1


def test_coverage_in_documented_range(data: shapes.ShapesDataset) -> None:
    lo, hi = shapes.COVERAGE_RANGE
    assert 0.05 <= lo < hi <= 0.40
    assert np.all((data.coverage >= lo) & (data.coverage <= hi))
    # sizes vary and do not give the class away
    assert data.coverage.max() - data.coverage.min() > 0.15
    means = [data.coverage[data.labels == k].mean() for k in range(len(shapes.CLASS_NAMES))]
    assert max(means) - min(means) < 0.06


def test_masked_pixels_have_the_object_colour(data: shapes.ShapesDataset) -> None:
    for image, mask, colour in zip(data.images, data.masks, data.colors, strict=True):
        assert np.all(image[mask] == colour)
        # and the mask is not too small: the ring just outside it is (almost) never that colour
        ring = ndimage.binary_dilation(mask) & ~mask
        same = np.all(image[ring] == colour, axis=1)
        assert same.mean() < 0.05


def test_image_is_background_outside_the_mask() -> None:
    d = shapes.generate(20, seed=9)
    bg = shapes.backgrounds(20, seed=9)
    for image, background, mask in zip(d.images, bg, d.masks, strict=True):
        np.testing.assert_array_equal(image[~mask], background[~mask])
        # the object stands out from what it covers
        dist = np.linalg.norm(image[mask].astype(float) - background[mask], axis=1)
        assert dist.mean() > 50


def test_object_colour_varies_independently_of_class(data: shapes.ShapesDataset) -> None:
    for k in range(len(shapes.CLASS_NAMES)):
        colours = data.colors[data.labels == k].astype(float)
        assert colours.std(axis=0).min() > 40  # every class spans a wide range in each channel


def test_masks_have_the_labelled_geometry(data: shapes.ShapesDataset) -> None:
    """Independent shape facts: convexity (solidity) and compactness (perimeter²/area)."""
    for mask, label in zip(data.masks, data.labels, strict=True):
        props = regionprops(mask.astype(np.uint8))[0]
        compact = props.perimeter**2 / props.area  # 4π≈12.6 disc, 16 square, 20.8 triangle
        name = shapes.CLASS_NAMES[label]
        if name in ("circle", "square", "triangle"):
            assert props.solidity > 0.88, name
        else:
            assert props.solidity < 0.82, name
        if name == "circle":
            assert compact < 13.95 and props.eccentricity < 0.35
        elif name == "square":
            assert 13.95 <= compact < 18.45
        elif name == "triangle":
            assert 18.45 <= compact < 23.0


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        shapes.generate(-1, seed=0)
    with pytest.raises(ValueError):
        shapes.generate(1, seed=0, size=16)
    assert len(shapes.generate(0, seed=0)) == 0


def test_save_folder_layout_and_round_trip(tmp_path: Path) -> None:
    d = shapes.generate(7, seed=21)
    root = shapes.save_folder(d, tmp_path / "set")
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["file", "label", "label_name", "box"]
    assert [r["file"] for r in rows] == [f"images/{i:05d}.png" for i in range(7)]
    for i, row in enumerate(rows):
        assert int(row["label"]) == d.labels[i]
        assert row["label_name"] == shapes.CLASS_NAMES[d.labels[i]]
        assert [int(v) for v in row["box"].split()] == d.boxes[i].tolist()
        image = np.asarray(Image.open(root / row["file"]))
        mask = np.asarray(Image.open(root / "masks" / f"{i:05d}.png"))
        assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    back = shapes.load_folder(root)
    for field in ("images", "labels", "masks", "boxes", "colors"):
        np.testing.assert_array_equal(getattr(back, field), getattr(d, field))
