"""Region perturbation and AOPC (Samek et al., Eq. 9–12) against hand-computed values."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterable
from typing import Literal

import numpy as np
import pytest

from xaiserve.errors import InvalidInput
from xaiserve.evaluation import morf
from xaiserve.evaluation.morf import (
    MorfParams,
    RegionGrid,
    aopc,
    aopc_curve,
    morf_cost,
    region_perturbation,
)


class WeightedMeanModel:
    """Two classes: ``f(x) = Σ_p w_p · mean_c(x_p) / 255`` and ``1 − f(x)`` (weights sum to 1).

    It records every call: the number of predict calls, chunks, images and the largest chunk.
    ``keep_images`` stores copies of the images it saw (only for small tests).
    """

    def __init__(self, weights: np.ndarray, keep_images: bool = False) -> None:
        self.weights = weights.astype(np.float64)
        self.calls = 0
        self.chunks = 0
        self.images = 0
        self.max_chunk = 0
        self.keep_images = keep_images
        self.seen: list[np.ndarray] = []

    @property
    def input_size(self) -> tuple[int, int]:
        h, w = self.weights.shape
        return h, w

    @property
    def num_classes(self) -> int:
        return 2

    @property
    def output_kind(self) -> Literal["logits", "probabilities"]:
        return "probabilities"

    def predict(
        self,
        images: np.ndarray | Iterable[np.ndarray],
        output: Literal["probabilities", "raw"] = "probabilities",
    ) -> np.ndarray:
        self.calls += 1
        chunks = [images] if isinstance(images, np.ndarray) else images
        rows = []
        for chunk in chunks:
            assert chunk.dtype == np.float32 and chunk.ndim == 4 and chunk.shape[3] == 3
            self.chunks += 1
            self.images += chunk.shape[0]
            self.max_chunk = max(self.max_chunk, chunk.shape[0])
            if self.keep_images:
                self.seen.extend(chunk.copy())
            f = np.einsum("nhw,hw->n", chunk.mean(axis=3, dtype=np.float64), self.weights) / 255
            rows.append(np.stack([f, 1 - f], axis=1))
        return np.concatenate(rows).astype(np.float32)


# 4×4 white image, window 2 → regions 0..3 (raster order) with weights 0.4, 0.3, 0.2, 0.1.
REGION_WEIGHTS = np.array([[0.4, 0.3], [0.2, 0.1]])
WEIGHTS = np.kron(REGION_WEIGHTS, np.ones((2, 2))) / 4
WHITE = np.full((4, 4, 3), 255.0, dtype=np.float32)


def test_hand_computed_aopc_with_black_fill() -> None:
    """MoRF removes 0.4, 0.3, 0.2, 0.1: f = 1, .6, .3, .1, 0 → AOPC = (0+.4+.7+.9+1)/5 = 0.6;
    LeRF: f = 1, .9, .7, .4, 0 → AOPC = (0+.1+.3+.6+1)/5 = 0.4."""
    model = WeightedMeanModel(WEIGHTS)
    params = MorfParams(window=2, steps=4, fill="black", repeats=3, seed=1)
    result = region_perturbation(model, WHITE, WEIGHTS.astype(np.float32), 0, params)
    np.testing.assert_allclose(result.morf_curve, [1, 0.6, 0.3, 0.1, 0], atol=1e-6)
    assert result.lerf_curve is not None
    np.testing.assert_allclose(result.lerf_curve, [1, 0.9, 0.7, 0.4, 0], atol=1e-6)
    assert result.aopc_morf == pytest.approx(0.6, abs=1e-6)
    assert result.aopc_lerf == pytest.approx(0.4, abs=1e-6)
    assert result.area_between_lerf_morf == pytest.approx(0.2, abs=1e-6)
    # Every ordering's AOPC lies between LeRF's and MoRF's for this additive model.
    assert result.aopc_random is not None
    assert 0.4 - 1e-6 <= result.aopc_random <= 0.6 + 1e-6
    assert result.aopc_morf_minus_random == pytest.approx(0.6 - result.aopc_random)
    # Black fill is deterministic: MoRF and LeRF run once, random 3 times: 1 + 4 × 5 images.
    assert result.forward_passes == model.images == morf_cost(params, (4, 4)) == 21


def test_true_heatmap_beats_random_and_inverted() -> None:
    model = WeightedMeanModel(WEIGHTS)
    params = MorfParams(window=2, steps=4, fill="black", repeats=200, seed=3, lerf=False)
    true = region_perturbation(model, WHITE, WEIGHTS, 0, params)
    inverted = region_perturbation(model, WHITE, -WEIGHTS, 0, params)
    assert true.aopc_morf == pytest.approx(0.6, abs=1e-6)
    assert inverted.aopc_morf == pytest.approx(0.4, abs=1e-6)
    # E[AOPC_random] = 1/5 Σ_k k/4 = 0.5; 200 permutations average close to it.
    assert true.aopc_random == pytest.approx(0.5, abs=0.02)
    assert true.aopc_random is not None
    assert true.aopc_morf > true.aopc_random > inverted.aopc_morf
    assert (
        true.lerf_curve is None and true.aopc_lerf is None and true.area_between_lerf_morf is None
    )


def test_aopc_curve_is_eq12_for_each_L() -> None:
    curve = np.array([1.0, 0.6, 0.3, 0.1, 0.0])
    np.testing.assert_allclose(aopc_curve(curve), [0, 0.4 / 2, 1.1 / 3, 2.0 / 4, 3.0 / 5])
    assert aopc(curve) == pytest.approx(0.6)


def test_region_grid_border_remainder() -> None:
    """5×5 with m = 2: 3×3 windows; the last row/column of windows is 1 pixel wide."""
    grid = RegionGrid(5, 5, 2)
    assert len(grid) == 9
    heatmap = np.arange(25, dtype=np.float64).reshape(5, 5)
    expected = [
        0 + 1 + 5 + 6, 2 + 3 + 7 + 8, 4 + 9,
        10 + 11 + 15 + 16, 12 + 13 + 17 + 18, 14 + 19,
        20 + 21, 22 + 23, 24,
    ]  # fmt: skip
    np.testing.assert_allclose(grid.scores(heatmap), expected)
    cover = np.zeros((5, 5), dtype=int)
    for p in range(len(grid)):
        rows, cols = grid.slices(p)
        cover[rows, cols] += 1
    assert np.all(cover == 1)


def test_uniform_fill_is_per_pixel_and_cumulative() -> None:
    weights = np.full((6, 6), 1 / 36)
    model = WeightedMeanModel(weights, keep_images=True)
    heatmap = np.zeros((6, 6))
    heatmap[:3, :3] = 2.0  # region 0 first
    heatmap[:3, 3:] = 1.0  # then region 1
    params = MorfParams(window=3, steps=2, repeats=1, seed=0, lerf=False, random_baseline=False)
    image = np.full((6, 6, 3), 100.0, dtype=np.float32)
    result = region_perturbation(model, image, heatmap, 0, params)
    x0, x1, x2 = model.seen
    np.testing.assert_array_equal(x0, image)
    region0 = x1[:3, :3]
    assert np.all((region0 >= 0) & (region0 <= 255)) and np.unique(region0).size == 27
    np.testing.assert_array_equal(x1[:, 3:], image[:, 3:])  # only region 0 changed
    np.testing.assert_array_equal(x2[:3, :3], region0)  # cumulative (Eq. 11)
    assert np.unique(x2[:3, 3:]).size == 27
    np.testing.assert_array_equal(x2[3:], image[3:])
    assert result.forward_passes == 3


def test_steps_are_clamped_to_the_number_of_regions() -> None:
    model = WeightedMeanModel(WEIGHTS)
    params = MorfParams(window=2, steps=100, fill="black", lerf=False, random_baseline=False)
    result = region_perturbation(model, WHITE, WEIGHTS, 0, params)
    assert result.steps == 4 and result.morf_curve.shape == (5,)
    assert morf_cost(params, (4, 4)) == result.forward_passes == 5


def test_deterministic_for_a_seed_and_seed_is_reported() -> None:
    model = WeightedMeanModel(WEIGHTS)
    params = MorfParams(window=2, steps=4, repeats=2, seed=42)
    a = region_perturbation(model, WHITE, WEIGHTS, 0, params)
    b = region_perturbation(model, WHITE, WEIGHTS, 0, params)
    for name in ("morf_curve", "lerf_curve", "random_curve"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = region_perturbation(model, WHITE, WEIGHTS, 0, MorfParams(window=2, steps=4, repeats=2))
    again = MorfParams(window=2, steps=4, repeats=2, seed=c.seed)
    np.testing.assert_array_equal(
        region_perturbation(model, WHITE, WEIGHTS, 0, again).morf_curve, c.morf_curve
    )
    # MoRF draws do not depend on whether LeRF/random also run.
    alone = MorfParams(window=2, steps=4, repeats=2, seed=42, lerf=False, random_baseline=False)
    np.testing.assert_array_equal(
        region_perturbation(model, WHITE, WEIGHTS, 0, alone).morf_curve, a.morf_curve
    )


def test_one_call_one_chunk_at_a_time_and_exact_cost() -> None:
    weights = np.full((20, 20), 1 / 400)
    model = WeightedMeanModel(weights)
    image = np.full((20, 20, 3), 50.0, dtype=np.float32)
    heatmap = np.random.default_rng(0).normal(size=(20, 20))
    params = MorfParams(window=3, steps=30, repeats=4, seed=0)
    result = region_perturbation(model, image, heatmap, 0, params)
    assert result.forward_passes == model.images == morf_cost(params, (20, 20)) == 1 + 30 * 12
    assert model.calls == 1
    assert model.max_chunk == morf.CHUNK_SIZE
    assert model.chunks == -(-model.images // morf.CHUNK_SIZE)


def test_many_classes_split_calls_without_changing_results(monkeypatch: pytest.MonkeyPatch) -> None:
    model = WeightedMeanModel(WEIGHTS)
    params = MorfParams(window=2, steps=4, repeats=3, seed=5)
    one_call = region_perturbation(model, WHITE, WEIGHTS, 0, params)
    assert model.calls == 1
    # Output budget of two sequences per call (2 classes × 4 bytes × 4 steps × 2).
    monkeypatch.setattr(morf, "MAX_OUTPUT_BYTES", 2 * 4 * 4 * 2)
    split = WeightedMeanModel(WEIGHTS)
    result = region_perturbation(split, WHITE, WEIGHTS, 0, params)
    assert split.calls == 5 and split.images == one_call.forward_passes  # 9 sequences
    np.testing.assert_array_equal(result.random_curve, one_call.random_curve)
    np.testing.assert_array_equal(result.lerf_curve, one_call.lerf_curve)


def _peak_bytes(repeats: int) -> int:
    weights = np.full((64, 64), 1 / 4096)
    model = WeightedMeanModel(weights)
    image = np.full((64, 64, 3), 80.0, dtype=np.float32)
    heatmap = np.random.default_rng(1).normal(size=(64, 64))
    params = MorfParams(window=4, steps=40, repeats=repeats, seed=0)
    tracemalloc.start()
    try:
        region_perturbation(model, image, heatmap, 0, params)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_is_flat_in_repeats() -> None:
    """2 vs 8 repeats: 241 vs 961 images of 48 KiB (11 vs 45 MiB if materialised); the peak
    stays at about one chunk (32 images = 1.5 MiB) plus the working images."""
    small, large = _peak_bytes(2), _peak_bytes(8)
    assert large < 1.25 * small + 256 * 1024, (small, large)
    assert large < 4 * 2**20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 0}, "window"),
        ({"steps": 0}, "steps"),
        ({"repeats": 0}, "repeats"),
        ({"fill": "sparkles"}, "fill"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_params(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        MorfParams(**kwargs)  # type: ignore[arg-type]


def test_invalid_inputs() -> None:
    model = WeightedMeanModel(WEIGHTS)
    params = MorfParams(window=2, steps=4, fill="black")
    with pytest.raises(InvalidInput, match="heatmap has shape"):
        region_perturbation(model, WHITE, np.zeros((3, 4)), 0, params)
    with pytest.raises(InvalidInput, match="NaN"):
        region_perturbation(model, WHITE, np.full((4, 4), np.nan), 0, params)
    with pytest.raises(InvalidInput, match="target index"):
        region_perturbation(model, WHITE, WEIGHTS, 2, params)
    with pytest.raises(InvalidInput, match="model takes"):
        region_perturbation(model, np.zeros((6, 6, 3), np.float32), np.zeros((6, 6)), 0, params)
