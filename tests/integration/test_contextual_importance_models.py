"""Contextual importance on ONNX models whose answer is known by construction.

``region_logit_model`` gives class k the logit gain · mean over a pixel mask R_k of the
channel-averaged image, so a region matters for class k exactly when it overlaps R_k. The
images are textured shapes-demo backgrounds segmented by SLIC through the registered method,
so the regions do not line up with R_k.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support import load_onnx_model, region_logit_model
from xaiserve.config import Settings
from xaiserve.demo import shapes
from xaiserve.demo.shapes import backgrounds
from xaiserve.imaging.fills import fill_image, replace
from xaiserve.imaging.segmentation import SegmentationParams, region_masks, superpixels
from xaiserve.methods.base import BlackBoxModel, Explanation, Target, get_method
from xaiserve.methods.contextual_importance import (
    NEUTRAL_CU,
    ContextualImportanceParams,
    contextual_importance_from_segments,
)
from xaiserve.methods.params import params_from_mapping
from xaiserve.models import Model, ModelRepository
from xaiserve.observability import Metrics
from xaiserve.runtime.batcher import ImageBudget

SIZE = 48
SEGMENTATION = {"n_segments": 36}


def block(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


R_A = block(6, 22, 8, 26)
R_B = block(28, 44, 24, 42)


def image(seed: int = 4) -> np.ndarray:
    return backgrounds(1, seed=seed, size=SIZE)[0].astype(np.float32)


ModelFactory = Callable[..., Model]


@pytest.fixture
def model(tmp_path: Path) -> Iterator[ModelFactory]:
    """``model(masks, gain)``: a ``region_logit_model`` through the service's model facade."""
    loaded: list[Model] = []

    def make(masks: list[np.ndarray], gain: float = 1.0) -> Model:
        onnx_model = region_logit_model(SIZE, SIZE, masks, gain)
        folder = tmp_path / str(len(loaded))
        loaded.append(load_onnx_model(onnx_model, folder, height=SIZE, width=SIZE))
        return loaded[-1]

    yield make
    for m in loaded:
        m.close()


def explain(m: BlackBoxModel, x: np.ndarray, target: Target, **params: object) -> Explanation:
    """The registered method, with parameters as the API layer builds them."""
    p = params_from_mapping(ContextualImportanceParams, {"segmentation": SEGMENTATION, **params})
    return get_method("contextual_importance").explain(m, x, target, p)


def per_region(e_map: np.ndarray, segments: np.ndarray) -> np.ndarray:
    labels = segments.astype(np.int64)
    return np.array([e_map[labels == k][0] for k in range(int(labels.max()) + 1)])


def overlapping(segments: np.ndarray, mask: np.ndarray) -> np.ndarray:
    labels = segments.astype(np.int64)
    return np.bincount(labels[mask], minlength=int(labels.max()) + 1) > 0


def test_only_regions_overlapping_the_known_region_matter(model: ModelFactory) -> None:
    x = image()
    e = explain(model([R_A, ~R_A]), x, Target(0), output="raw", absmax=255.0)
    segments = e.maps["segments"]
    ci = per_region(e.heatmap, segments)
    # By construction (black fill): CI_i = Σ_{p ∈ R_A ∩ S_i} gray(p) / (|R_A| · 255).
    gray = x.mean(axis=-1)
    labels = segments.astype(np.int64)
    truth = np.bincount(labels[R_A], weights=gray[R_A], minlength=len(ci)) / (R_A.sum() * 255)
    np.testing.assert_allclose(ci, truth, atol=1e-5)
    inside = overlapping(segments, R_A)
    assert 1 < inside.sum() < len(ci)
    above = ci > 0.01
    assert above.any() and not (above & ~inside).any()
    np.testing.assert_allclose(ci[~inside], 0.0, atol=1e-6)
    np.testing.assert_array_equal(e.maps["mask"], above[labels])
    # Explanation score: class 0 of the image keeping only the regions above the threshold.
    kept = above[labels] & R_A
    assert e.values["explanation_score"] == pytest.approx(gray[kept].sum() / R_A.sum(), rel=1e-4)


def test_contrast_highlights_each_class_region(model: ModelFactory) -> None:
    x = image(seed=6)
    m = model([R_A, R_B], gain=0.05)
    e = explain(m, x, Target(0, contrast=1))
    segments = e.maps["segments"]
    ci_a = per_region(e.heatmap, segments)
    ci_b = per_region(e.maps["ci_contrast"], segments)
    in_a, in_b = overlapping(segments, R_A), overlapping(segments, R_B)
    assert (ci_a > 0.01).any() and not ((ci_a > 0.01) & ~in_a).any()
    assert (ci_b > 0.01).any() and not ((ci_b > 0.01) & ~in_b).any()
    assert in_a[np.argmax(ci_a)] and in_b[np.argmax(ci_b)]
    diff = per_region(e.maps["ci_difference"], segments)
    np.testing.assert_allclose(diff, ci_a - ci_b, atol=1e-6)
    assert (diff[in_a & ~in_b] >= 0).all() and (diff[in_b & ~in_a] <= 0).all()


def test_misclassified_image_true_class_against_prediction(model: ModelFactory) -> None:
    # Brighten R_A so the model predicts A; explain the "true" class B against A.
    x = image(seed=6)
    x[R_A] = np.clip(x[R_A] + 60.0, 0, 255)
    m = model([R_A, R_B], gain=0.05)
    predicted = int(np.argmax(m.predict(x[None])[0]))
    assert predicted == 0
    e = explain(m, x, Target(1, contrast=predicted))
    assert e.target_probability is not None and e.target_probability < 0.5
    segments = e.maps["segments"]
    ci_true = per_region(e.heatmap, segments)
    ci_pred = per_region(e.maps["ci_contrast"], segments)
    in_a, in_b = overlapping(segments, R_A), overlapping(segments, R_B)
    assert in_b[np.argmax(ci_true)] and in_a[np.argmax(ci_pred)]
    assert not ((ci_true > 0.01) & ~in_b).any()


def test_utility_fills_bound_eq2(model: ModelFactory) -> None:
    # Eq. 1's range includes the removal, so it bounds |Eq. 2|; CU lies in [0, 1].
    x = image(seed=8)
    e = explain(
        model([R_A, R_B], gain=0.05),
        x,
        Target(1),
        fill="mean",
        utility_fills=["black", "white", "blur", "noise"],
        seed=3,
    )
    assert np.all(e.maps["ci_range"] >= np.abs(e.heatmap) - 1e-6)
    assert np.all((e.maps["cu"] >= 0) & (e.maps["cu"] <= 1))
    regions = int(e.values["n_regions"])
    assert e.values["forward_passes"] == 2 + regions * 5


def reference(
    model: BlackBoxModel,
    image: np.ndarray,
    segments: np.ndarray,
    target: Target,
    params: ContextualImportanceParams,
) -> dict[str, np.ndarray]:
    """Literal Algorithm 1: one predict call per perturbed image, maps built pixel by pixel."""
    j, c = target.index, target.contrast
    fills = list(dict.fromkeys([params.fill, *params.utility_fills]))
    rng = np.random.default_rng(params.seed)
    replacements = {f: fill_image(image, f, rng, params.blur_sigma) for f in fills}
    span = params.absmax - params.absmin

    def out(x: np.ndarray) -> np.ndarray:
        return model.predict(x[None], output=params.output)[0].astype(np.float64)

    out_c = out(image)
    maps = {name: np.zeros(image.shape[:2]) for name in ("heatmap", "ci_range", "cu", "ci_c")}
    masks = region_masks(segments)
    cis = []
    for mask in masks:
        outs = [out(replace(image, mask, replacements[f])) for f in fills]
        ci_i = (out_c[j] - outs[0][j]) / span  # Eq. 2
        cis.append(ci_i)
        seen = [out_c[j]] + [o[j] for o in outs]
        cmax, cmin = max(seen), min(seen)
        for y, x in zip(*np.nonzero(mask), strict=True):
            maps["heatmap"][y, x] = ci_i
            maps["ci_range"][y, x] = (cmax - cmin) / span  # Eq. 1
            maps["cu"][y, x] = (out_c[j] - cmin) / (cmax - cmin) if cmax > cmin else NEUTRAL_CU
            if c is not None:
                maps["ci_c"][y, x] = (out_c[c] - outs[0][c]) / span
    kept = image.copy()
    for mask, ci_i in zip(masks, cis, strict=True):
        if not ci_i > params.threshold:
            kept = replace(kept, mask, replacements[params.fill])
    maps["score"] = np.array(out(kept)[j])
    return maps


def check_against_reference(
    m: BlackBoxModel, x: np.ndarray, segments: np.ndarray, target: Target, **kw: object
) -> None:
    params = ContextualImportanceParams(**kw)  # type: ignore[arg-type]
    e = contextual_importance_from_segments(m, x, segments, target, params)
    ref = reference(m, x, segments, target, params)
    np.testing.assert_allclose(e.heatmap, ref["heatmap"], atol=1e-5)
    np.testing.assert_allclose(e.maps["ci_range"], ref["ci_range"], atol=1e-5)
    np.testing.assert_allclose(e.maps["cu"], ref["cu"], atol=1e-4)
    np.testing.assert_allclose(e.maps["ci_contrast"], ref["ci_c"], atol=1e-5)
    assert e.values["explanation_score"] == pytest.approx(float(ref["score"]), abs=1e-5)
    assert np.ptp(ref["heatmap"]) > 0  # the comparison is not between two blank maps


@pytest.mark.parametrize("output", ["probabilities", "raw"])
def test_batched_equals_literal_reference(model: ModelFactory, output: str) -> None:
    rng = np.random.default_rng(3)
    masks = [rng.random((SIZE, SIZE)) < 0.3 for _ in range(5)]
    x = image(seed=9)
    segments = superpixels(x, SegmentationParams(n_segments=20))
    span = {"absmin": -20.0, "absmax": 20.0} if output == "raw" else {}
    fills = ("noise", "blur", "white")
    m = model(masks, gain=0.05)
    check_against_reference(
        m,
        x,
        segments,
        Target(2, 4),
        fill="mean",
        utility_fills=fills,
        output=output,
        seed=7,
        threshold=0.001,
        **span,
    )


def test_batched_equals_literal_reference_on_the_demo_cnn() -> None:
    root = Path(__file__).resolve().parents[2] / "models"
    repository = ModelRepository(root, Settings(models_dir=str(root)), Metrics(), ImageBudget(1000))
    demo = repository.load_version("shapes", "1").model
    assert demo is not None
    try:
        data = shapes.heldout(1)
        x = data.images[0].astype(np.float32)
        segments = superpixels(x, SegmentationParams(n_segments=25))
        truth = int(data.labels[0])
        check_against_reference(
            demo, x, segments, Target(truth, (truth + 1) % 5), utility_fills=("white",)
        )
    finally:
        demo.close()
