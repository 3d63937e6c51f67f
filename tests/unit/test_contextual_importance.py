"""Contextual importance (Anjomshoae et al., Eq. 1, Eq. 2, Algorithm 1) on hand-computed cases.

The models are linear "region logit" networks whose answer is known by construction: class
k's logit is the mean, over a fixed pixel mask, of the image's channel-averaged pixel values.
On a 4×4 image of four constant 2×2 quadrants every CI, CU and explanation score below is a
sum of a few quadrant values, computed by hand in the comments.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from tests.support import load_onnx_model, region_logit_model
from xaiserve.errors import InvalidInput
from xaiserve.imaging.segmentation import SegmentationParams, superpixels
from xaiserve.methods.base import BlackBoxModel, Explanation, OutputSpace, Target, get_method
from xaiserve.methods.contextual_importance import (
    NEUTRAL_CU,
    ContextualImportanceParams,
    contextual_importance,
    contextual_importance_from_segments,
    cost,
)
from xaiserve.methods.params import params_from_mapping, params_to_dict
from xaiserve.models import Model

# Quadrants of a 4×4 image: Q0 top-left, Q1 top-right, Q2 bottom-left, Q3 bottom-right.
SEGMENTS = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]], dtype=np.int32)
QUADRANT_VALUES = (100.0, 200.0, 50.0, 0.0)
Q = [np.equal(SEGMENTS, k) for k in range(4)]
# Class 0 reads Q0 ∪ Q1, class 1 reads Q1 ∪ Q2, class 2 reads Q0 ∪ Q3.
CLASS_MASKS = [Q[0] | Q[1], Q[1] | Q[2], Q[0] | Q[3]]
RAW: dict[str, Any] = {"output": "raw", "absmin": 0.0, "absmax": 255.0}


class Recorder:
    """A real model whose ``predict`` calls are logged (chunk shapes and dtypes), in passing."""

    def __init__(self, model: BlackBoxModel) -> None:
        self.model = model
        self.calls: list[list[tuple[tuple[int, ...], np.dtype[Any]]]] = []
        self.lazy: list[bool] = []

    @property
    def input_size(self) -> tuple[int, int]:
        return self.model.input_size

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def output_kind(self) -> Literal["logits", "probabilities"]:
        return self.model.output_kind

    def predict(
        self, images: np.ndarray | Iterable[np.ndarray], output: OutputSpace = "probabilities"
    ) -> np.ndarray:
        seen: list[tuple[tuple[int, ...], np.dtype[Any]]] = []
        self.calls.append(seen)
        self.lazy.append(isinstance(images, Iterator))
        if isinstance(images, np.ndarray):
            seen.append((images.shape, images.dtype))
            return self.model.predict(images, output)

        def passing(chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
            for chunk in chunks:
                seen.append((chunk.shape, chunk.dtype))
                yield chunk

        return self.model.predict(passing(images), output)

    @property
    def images_seen(self) -> int:
        return sum(shape[0] for call in self.calls for shape, _ in call)


_MODELS: dict[tuple[bytes, float], Model] = {}
_FOLDERS: list[Path] = []


@pytest.fixture(autouse=True, scope="module")
def _loaded_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Models load once per module (see :func:`region_model`) and close at its end."""
    _FOLDERS.append(tmp_path_factory.mktemp("ci-models"))
    yield
    for model in _MODELS.values():
        model.close()
    _MODELS.clear()
    _FOLDERS.clear()


def region_model(masks: list[np.ndarray], gain: float = 1.0) -> Recorder:
    """``region_logit_model`` through onnxruntime and the service's model facade (cached)."""
    key = (np.stack(masks).tobytes() + bytes(str(np.shape(masks)), "ascii"), gain)
    if key not in _MODELS:
        h, w = masks[0].shape
        folder = _FOLDERS[0] / str(len(_MODELS))
        _MODELS[key] = load_onnx_model(
            region_logit_model(h, w, masks, gain), folder, height=h, width=w
        )
    return Recorder(_MODELS[key])


def quadrant_image() -> np.ndarray:
    image = np.zeros((4, 4, 3), dtype=np.float32)
    for k, v in enumerate(QUADRANT_VALUES):
        image[Q[k]] = v
    return image


def region_values(explanation_map: np.ndarray) -> np.ndarray:
    """The per-region value of a map that is constant on each quadrant."""
    values = np.array([explanation_map[Q[k]][0] for k in range(4)])
    for k in range(4):
        assert np.all(explanation_map[Q[k]] == values[k])
    return values


def run(target: Target, gain: float = 1.0, **kwargs: object) -> tuple[Explanation, Recorder]:
    model = region_model(CLASS_MASKS, gain)
    params = ContextualImportanceParams(**kwargs)  # type: ignore[arg-type]
    return contextual_importance_from_segments(
        model, quadrant_image(), SEGMENTS, target, params
    ), model


def test_eq2_hand_computed_on_raw_outputs() -> None:
    # out_0(C) = (4·100 + 4·200)/8 = 150. Black removal: Q0 → 800/8 = 100, Q1 → 400/8 = 50,
    # Q2, Q3 → 150. CI = (150 − out)/(255 − 0).
    e, _ = run(Target(0), **RAW)
    np.testing.assert_allclose(region_values(e.heatmap), [50 / 255, 100 / 255, 0, 0], atol=1e-6)
    assert e.values["target_output"] == pytest.approx(150.0)
    assert e.values["n_regions"] == 4
    assert not e.signed
    np.testing.assert_array_equal(e.maps["segments"], SEGMENTS)


def test_eq1_range_and_utility_hand_computed() -> None:
    # White replacement: Q0 → (4·255 + 800)/8 = 227.5, Q1 → (400 + 4·255)/8 = 177.5.
    # Region 0: {150, 100, 227.5} → range 127.5/255 = 0.5, CU = (150 − 100)/127.5.
    # Region 1: {150, 50, 177.5} → range 0.5, CU = (150 − 50)/127.5.
    # Regions 2, 3 never move class 0: Cmax = Cmin → CU = NEUTRAL_CU, range 0.
    e, _ = run(Target(0), utility_fills=("white",), **RAW)
    np.testing.assert_allclose(region_values(e.maps["ci_range"]), [0.5, 0.5, 0, 0], atol=1e-6)
    np.testing.assert_allclose(
        region_values(e.maps["cu"]), [50 / 127.5, 100 / 127.5, NEUTRAL_CU, NEUTRAL_CU], atol=1e-6
    )
    # Without utility fills, Eq. 1 sees only the removal: range = |Eq. 2|, CU ∈ {0, 1, ½}.
    e, _ = run(Target(0), **RAW)
    np.testing.assert_allclose(
        region_values(e.maps["ci_range"]), [50 / 255, 100 / 255, 0, 0], atol=1e-6
    )
    np.testing.assert_allclose(region_values(e.maps["cu"]), [1, 1, 0.5, 0.5], atol=1e-6)


def test_arbitrary_labels_are_renumbered_in_order() -> None:
    # Quadrants labelled 70, 9, 2**40, 3 → renumbered by sorted label: 2, 1, 3, 0.
    labels = np.choose(SEGMENTS, [70, 9, 2**40, 3]).astype(np.int64)
    model = region_model(CLASS_MASKS)
    params = ContextualImportanceParams(**RAW)
    e = contextual_importance_from_segments(model, quadrant_image(), labels, Target(0), params)
    np.testing.assert_array_equal(e.maps["segments"], np.choose(SEGMENTS, [2, 1, 3, 0]))
    np.testing.assert_allclose(region_values(e.heatmap), [50 / 255, 100 / 255, 0, 0], atol=1e-6)


def test_negative_ci_makes_the_map_signed() -> None:
    # Class 2 reads Q0 ∪ Q3: out = (400 + 0)/8 = 50. White removal of Q0 → (1020 + 0)/8
    # = 127.5, CI = −77.5/255; of Q3 → (400 + 1020)/8 = 177.5, CI = −127.5/255.
    e, _ = run(Target(2), fill="white", **RAW)
    np.testing.assert_allclose(
        region_values(e.heatmap), [-77.5 / 255, 0, 0, -127.5 / 255], atol=1e-6
    )
    assert e.signed
    assert e.values["n_regions_above_threshold"] == 0
    # Eq. 1: out(C) is the minimum, so CU = 0 where the region moves the output.
    np.testing.assert_allclose(region_values(e.maps["cu"]), [0, 0.5, 0.5, 0], atol=1e-6)


def test_mask_and_explanation_score_hand_computed() -> None:
    # CI_0 = [50, 100, 0, 0]/255: Q0, Q1 exceed 0.01. Keeping them and blacking out Q2, Q3
    # leaves class 0 at 150 and class 1 at (800 + 0)/8 = 100.
    e, _ = run(Target(0, contrast=1), **RAW)
    np.testing.assert_array_equal(e.maps["mask"], Q[0] | Q[1])
    assert e.values["n_regions_above_threshold"] == 2
    assert e.values["explanation_score"] == pytest.approx(150.0)
    assert e.values["explanation_score_contrast"] == pytest.approx(100.0)
    # A higher threshold keeps only Q1: class 0 → 800/8 = 100.
    e, _ = run(Target(0), threshold=0.3, **RAW)
    np.testing.assert_array_equal(e.maps["mask"], Q[1])
    assert e.values["explanation_score"] == pytest.approx(100.0)


def test_contrast_hand_computed_and_free() -> None:
    # Class 1 reads Q1 ∪ Q2: out = (800 + 200)/8 = 125; removing Q1 → 25, Q2 → 100.
    e, model = run(Target(0, contrast=1), **RAW)
    ci_c = np.array([0, 100, 25, 0]) / 255
    np.testing.assert_allclose(region_values(e.maps["ci_contrast"]), ci_c, atol=1e-6)
    np.testing.assert_allclose(
        region_values(e.maps["ci_difference"]), np.array([50, 100, 0, 0]) / 255 - ci_c, atol=1e-6
    )
    assert e.values["contrast_output"] == pytest.approx(125.0)
    _, plain = run(Target(0), **RAW)
    assert model.images_seen == plain.images_seen


def test_probabilities_and_target_probability() -> None:
    # gain 0.02 scales the hand-computed logits (150, 125, 50) to C = (3, 2.5, 1). Removed:
    # Q0 → (2, 2.5, 0), Q1 → (1, 0.5, 1), Q2 → (3, 2, 1), Q3 (already black) → C.
    def softmax(z: list[float]) -> list[float]:
        e = [math.exp(v) for v in z]
        return [v / sum(e) for v in e]

    e, _ = run(Target(0, contrast=1), gain=0.02)
    p_c = softmax([3, 2.5, 1])
    p_q0, p_q1 = softmax([2, 2.5, 0]), softmax([1, 0.5, 1])
    p_q2, p_q3 = softmax([3, 2, 1]), p_c
    expected = [p_c[0] - p[0] for p in (p_q0, p_q1, p_q2, p_q3)]
    np.testing.assert_allclose(region_values(e.heatmap), expected, atol=1e-6)
    expected_c = [p_c[1] - p[1] for p in (p_q0, p_q1, p_q2, p_q3)]
    np.testing.assert_allclose(region_values(e.maps["ci_contrast"]), expected_c, atol=1e-6)
    assert e.target_probability == pytest.approx(p_c[0], abs=1e-6)
    raw, _ = run(Target(0), gain=0.02, **RAW)
    assert raw.target_probability == pytest.approx(p_c[0], abs=1e-6)


def test_one_stream_of_chunks_and_exact_cost() -> None:
    image = np.random.default_rng(0).uniform(0, 255, (20, 20, 3)).astype(np.float32)
    segments = (np.arange(20)[:, None] // 4) * 5 + np.arange(20)[None, :] // 4  # 25 blocks
    params = ContextualImportanceParams(
        segmentation=SegmentationParams(n_segments=25), utility_fills=("black", "white", "blur")
    )
    model = region_model([np.ones((20, 20), bool), np.eye(20, dtype=bool)])
    e = contextual_importance_from_segments(model, image, segments, Target(1), params)
    stream, kept = model.calls
    assert model.lazy == [True, False]  # a generator of chunks, then one array
    assert len(stream) > 1 and len(kept) == 1  # chunks, then the explanation-score image
    assert all(dtype == np.float32 and shape[1:] == (20, 20, 3) for shape, dtype in stream)
    # out(C) + 25 regions × {black, white, blur} + the kept image.
    assert model.images_seen == 2 + 25 * 3 == cost(params, (20, 20))
    assert e.values["forward_passes"] == model.images_seen


@pytest.mark.parametrize("algorithm", ["slic", "felzenszwalb", "quickshift"])
def test_registered_function_segments_the_image(algorithm: str) -> None:
    spec = get_method("contextual_importance")
    assert spec.backend == "blackbox" and spec.params_type is ContextualImportanceParams
    assert spec.explain is contextual_importance
    rng = np.random.default_rng(1)
    image = np.kron(rng.uniform(0, 255, (4, 4, 3)), np.ones((8, 8, 1))).astype(np.float32)
    segmentation = SegmentationParams(algorithm=algorithm, n_segments=16)  # type: ignore[arg-type]
    params = ContextualImportanceParams(segmentation=segmentation, **RAW)
    tri = np.tri(32, dtype=bool)
    e = spec.explain(region_model([np.ones((32, 32), bool), tri]), image, Target(1), params)
    segments = superpixels(image, segmentation)
    np.testing.assert_array_equal(e.maps["segments"], segments)
    assert e.values["n_regions"] == segments.max() + 1 > 1
    # Class 1 is the mean over the triangle: removing region S_k (black) lowers it by
    # Σ_{p ∈ tri ∩ S_k} gray(p) / |tri|.
    gray = image.mean(axis=-1)
    drop = np.bincount(segments[tri], weights=gray[tri], minlength=int(segments.max()) + 1)
    np.testing.assert_allclose(e.heatmap, (drop / tri.sum() / 255)[segments], atol=1e-5)
    assert e.heatmap.dtype == np.float32


def test_params_from_mapping_defaults_and_errors() -> None:
    p = params_from_mapping(ContextualImportanceParams, {})
    assert p == ContextualImportanceParams()
    assert (p.fill, p.utility_fills, p.absmin, p.absmax, p.threshold, p.output) == (
        "black",
        (),
        0.0,
        1.0,
        0.01,
        "probabilities",
    )
    p = params_from_mapping(
        ContextualImportanceParams,
        {
            "segmentation": {"algorithm": "felzenszwalb", "scale": 50.0},
            "utility_fills": ["white", "blur", "white"],
            "output": "raw",
            "absmin": -5,
            "absmax": 5,
        },
    )
    assert p.segmentation.algorithm == "felzenszwalb" and p.absmin == -5.0
    assert p.perturbation_fills == ("black", "white", "blur")
    assert params_to_dict(p)["utility_fills"] == ["white", "blur", "white"]
    assert cost(p, (64, 64)) == 2 + 50 * 3
    for bad in (
        {"absmin": 1.0, "absmax": 1.0},
        {"fill": "grey"},
        {"utility_fills": ["x"]},
        {"output": "logits"},
        {"threshold": float("nan")},
        {"seed": -1},
        {"seed": 2**64},
        {"blur_sigma": -1.0},
    ):
        with pytest.raises(InvalidInput):
            params_from_mapping(ContextualImportanceParams, bad)


def test_invalid_requests_name_the_problem() -> None:
    model = region_model(CLASS_MASKS)
    params = ContextualImportanceParams()
    with pytest.raises(InvalidInput, match="contrast"):
        contextual_importance_from_segments(model, quadrant_image(), SEGMENTS, Target(0, 3), params)
    with pytest.raises(InvalidInput, match="segments"):
        contextual_importance_from_segments(
            model, quadrant_image(), SEGMENTS[:2], Target(0), params
        )
