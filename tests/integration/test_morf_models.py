"""MoRF/AOPC and RS through a real ONNX graph, the batcher and the ``Model`` facade.

``region_logit_model`` gives class 0 the logit ``g · mean_{R_A} gray(x)`` and class 1
``g · mean_{R_B} gray(x)`` with ``R_B`` the complement of ``R_A``; with ``g = 0.02``, an image of
200 on ``R_A`` and 50 elsewhere has logits (4, 1), so every curve point is a hand-written
sigmoid: ``p_0 = σ(logit_0 − logit_1)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support import load_onnx_model, region_logit_model
from xaiserve.evaluation.convex_hull import convex_hull, hull_sensitivity
from xaiserve.evaluation.morf import MorfParams, aopc, morf_cost, region_perturbation
from xaiserve.methods.base import BlackBoxModel

SIZE = 36  # 4 × 4 windows of 9 × 9
GAIN = 0.02
R_A = np.zeros((SIZE, SIZE), dtype=bool)
R_A[0:9, 0:9] = True  # window 0
R_A[9:18, 9:18] = True  # window 5
IMAGE = np.where(R_A[..., None], 200.0, 50.0).repeat(3, axis=2).astype(np.float32)


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


@pytest.fixture()
def model(tmp_path: Path) -> Iterator[BlackBoxModel]:
    onnx_model = region_logit_model(SIZE, SIZE, [R_A, ~R_A], gain=GAIN)
    loaded = load_onnx_model(onnx_model, tmp_path, height=SIZE, width=SIZE, max_batch_size=8)
    yield loaded
    loaded.close()


def test_hand_computed_curves_with_black_fill(model: BlackBoxModel) -> None:
    """MoRF removes windows 0 and 5 (logit_0: 4 → 2 → 0), then B windows in raster order, each
    lowering logit_1 by 1/14. LeRF removes B windows first: logit_1 = (14 − j)/14."""
    params = MorfParams(steps=4, fill="black", lerf=True, random_baseline=False)
    result = region_perturbation(model, IMAGE, R_A.astype(np.float32), 0, params)
    morf = [sigmoid(3), sigmoid(1), sigmoid(-1), sigmoid(-13 / 14), sigmoid(-12 / 14)]
    lerf = [sigmoid(4 - (14 - j) / 14) for j in range(5)]
    np.testing.assert_allclose(result.morf_curve, morf, atol=1e-5)
    assert result.lerf_curve is not None
    np.testing.assert_allclose(result.lerf_curve, lerf, atol=1e-5)
    assert result.aopc_morf == pytest.approx(aopc(np.array(morf)), abs=1e-5)
    assert result.aopc_morf == pytest.approx(morf[0] - sum(morf) / 5, abs=1e-5)
    assert result.forward_passes == morf_cost(params, (SIZE, SIZE)) == 9


def test_true_heatmap_beats_random_and_inverted_with_uniform_noise(model: BlackBoxModel) -> None:
    params = MorfParams(steps=8, repeats=3, seed=7, lerf=False)
    true = region_perturbation(model, IMAGE, R_A.astype(np.float32), 0, params)
    inverted = region_perturbation(model, IMAGE, -R_A.astype(np.float32), 0, params)
    assert true.aopc_random is not None and true.aopc_morf_minus_random is not None
    assert true.aopc_morf > true.aopc_random > inverted.aopc_morf
    assert true.aopc_morf_minus_random > 0.03
    assert true.forward_passes == 1 + 8 * 6
    np.testing.assert_array_equal(true.random_curve, inverted.random_curve)  # heatmap-free


def test_hull_sensitivity_on_logits(model: BlackBoxModel) -> None:
    """RS = |ΔN_0| / |M| with ΔN_0 = g · Σ_{R_A ∩ M} gray / |R_A| (the hull's pixels zeroed)."""
    hull = convex_hull(R_A.astype(np.float64), keep_fraction=R_A.mean())
    assert hull.sum() > R_A.sum()  # the hull of two diagonal squares bridges them
    expected = GAIN * IMAGE.mean(axis=2)[R_A & hull].sum() / R_A.sum() / hull.sum()
    assert hull_sensitivity(model, IMAGE, hull, 0) == pytest.approx(expected, rel=1e-5)
