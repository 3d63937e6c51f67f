"""Chunk sizing from the cost estimate: hand-computed sizes, the measured seconds per pass, and
an evaluation whose second run is sized from what its first run measured."""

from __future__ import annotations

import math

import pytest

from xaiserve.jobs.chunk_sizing import DEFAULT_PASS_SECONDS, MAX_CHUNK_ITEMS, SMOOTHING, ChunkSizer


def test_sizes_follow_target_over_cost() -> None:
    sizer = ChunkSizer(target_seconds=2.0)
    # Nothing measured: 100 passes × 2 ms = 0.2 s per image → 10 images make 2 s.
    assert DEFAULT_PASS_SECONDS == 0.002
    assert sizer.items("m", "1", 100, 1000) == 10
    # Measured: 100 passes took 1 s (10 ms per pass) → 1 s per image → 2 images.
    sizer.observe("m", "1", 100, 1.0)
    assert sizer.pass_seconds("m", "1") == pytest.approx(0.01)
    assert sizer.items("m", "1", 100, 1000) == 2
    # Another version of the model has its own estimate.
    assert sizer.items("m", "2", 100, 1000) == 10
    # Slower than the target per image: one image per chunk, never zero.
    assert sizer.items("m", "1", 10_000, 1000) == 1


def test_the_estimate_is_a_running_mean_and_sizes_are_bounded() -> None:
    sizer = ChunkSizer(target_seconds=1.0)
    sizer.observe("m", "1", 10, 0.1)  # 10 ms per pass
    sizer.observe("m", "1", 10, 0.2)  # 20 ms per pass
    expected = (1 - SMOOTHING) * 0.01 + SMOOTHING * 0.02
    assert sizer.pass_seconds("m", "1") == pytest.approx(expected)
    assert sizer.items("m", "1", 3, 1000) == math.ceil(1.0 / (3 * expected))
    sizer.observe("m", "1", 0, 1.0)  # nothing to learn from
    assert sizer.pass_seconds("m", "1") == pytest.approx(expected)
    assert sizer.items("fast", "1", 1, 10**6) == MAX_CHUNK_ITEMS
    assert sizer.items("fast", "1", 1, 7) == 7  # never more than the data set


def test_a_fixed_count_wins() -> None:
    sizer = ChunkSizer(target_seconds=2.0, fixed_items=3)
    sizer.observe("m", "1", 100, 100.0)
    assert sizer.items("m", "1", 100, 1000) == 3
    assert sizer.items("m", "1", 100, 2) == 2
    with pytest.raises(ValueError, match="chunk_seconds"):
        ChunkSizer(target_seconds=0)
