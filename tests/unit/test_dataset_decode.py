"""Data-set items decode only what the model needs (#18 finding 3, server-side folders and
staged items): a 4096² PNG headed to a 64² model is decoded reduced (Pillow ``reduce``), so
loading it allocates a few hundred KB of arrays instead of the ~400 MB a full-size float32 copy
took; the image the model sees matches the full-size decode (an independent path)."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xaiserve.imaging.decode import ImageLimits, decode_encoded
from xaiserve.imaging.preprocess import fit_to_input
from xaiserve.jobs.dataset_evaluation import stage_item, staged_dataset_items
from xaiserve.jobs.datasets import folder_items
from xaiserve.models.config import InputConfig

GRID = (64, 64)
SIDE = 4096


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """A smooth 4096² RGB gradient (reduce and resize agree on it to rounding)."""
    ramp = np.linspace(0, 255, SIDE, dtype=np.float32)
    rgb = np.stack(
        [np.broadcast_to(ramp[None, :], (SIDE, SIDE)), np.broadcast_to(ramp[:, None], (SIDE, SIDE)),
         np.full((SIDE, SIDE), 90.0, np.float32)], axis=2,
    ).astype(np.uint8)  # fmt: skip
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def _peak_array_bytes(load) -> tuple[np.ndarray, int]:  # type: ignore[no-untyped-def]
    tracemalloc.start()  # numpy reports its allocations to tracemalloc
    try:
        image = load()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return image, peak


def _model_view(image: np.ndarray) -> np.ndarray:
    return fit_to_input(image, InputConfig(height=GRID[0], width=GRID[1]))


def test_folder_items_decode_reduced(tmp_path: Path, big_png: bytes) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "big.png").write_bytes(big_png)
    (tmp_path / "labels.csv").write_text("file,label\nimages/big.png,0\n")
    limits = ImageLimits(max_pixels=0)  # sized to the model: 1024² for 64², yet the folder's
    (item,), _ = folder_items(tmp_path, ("a", "b"), limits, 10, GRID)  # 4096² still loads
    image, peak = _peak_array_bytes(item.load)
    assert GRID[0] * 2 <= image.shape[0] < GRID[0] * 4, image.shape
    assert peak < 4 * 2**20, peak  # full size as float32 would be 192 MiB
    full = decode_encoded(big_png, ImageLimits(max_pixels=SIDE * SIDE))
    np.testing.assert_allclose(_model_view(image), _model_view(full), atol=1.5)


def test_folder_items_with_a_mask_keep_the_masks_grid(tmp_path: Path, big_png: bytes) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    small = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 20, 30)).save(small, "PNG")
    (tmp_path / "images" / "a.png").write_bytes(small.getvalue())
    Image.new("L", (300, 200), 255).save(tmp_path / "masks" / "a.png")
    (tmp_path / "labels.csv").write_text("file,label\nimages/a.png,1\n")
    (item,), _ = folder_items(tmp_path, ("a", "b"), ImageLimits(), 10, GRID)
    assert item.load().shape == (200, 300, 3)
    assert item.load_mask is not None and item.load_mask().shape == (200, 300)


def test_staged_items_decode_reduced(big_png: bytes) -> None:
    staged = [stage_item(0, "big", 1, big_png, None)]
    (item,) = staged_dataset_items(staged, ImageLimits(max_pixels=SIDE * SIDE), GRID)
    image, peak = _peak_array_bytes(item.load)
    assert GRID[0] * 2 <= image.shape[0] < GRID[0] * 4 and peak < 4 * 2**20, (image.shape, peak)
