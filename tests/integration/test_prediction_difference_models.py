"""Prediction difference (Seo et al., Algorithms 2 and 3) on real ONNX models.

Known answer by construction: a Flatten + Gemm graph whose class-0 logit is
``gain · (t − mean over the object mask A of the channel-averaged image)`` and whose class-1
logit is 0, run through the service's repository, onnxruntime and batcher
(:func:`tests.support.load_onnx_model`). Only pixels in A reach the output, so excluding a
region that misses A leaves ``p(0|x)`` unchanged (evidence 0) and excluding one that overlaps
the dark object (replacing it with brighter background samples) lowers it (evidence > 0).

On the demo shapes model (``models/shapes/1``, if present) the regional map's mass inside the
ground-truth object mask is compared with the mask's area fraction (a uniform map's mass).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.support import load_onnx_model
from xaiserve.demo import shapes
from xaiserve.methods.base import BlackBoxModel, Target, get_method
from xaiserve.methods.params import params_from_mapping
from xaiserve.methods.pixelwise_prediction_difference import PixelwisePredictionDifferenceParams
from xaiserve.methods.regional_prediction_difference import RegionalPredictionDifferenceParams

SIZE = 48
OBJECT = np.zeros((SIZE, SIZE), dtype=bool)
OBJECT[14:26, 20:34] = True
DEMO_DIR = Path(__file__).resolve().parents[2] / "models" / "shapes" / "1"


def object_logit_graph(mask: np.ndarray, gain: float, threshold: float) -> onnx.ModelProto:
    """Flatten + Gemm: logit 0 = gain · (threshold − mean_A(x̄)), logit 1 = 0."""
    h, w = mask.shape
    weight = np.zeros((2, 3 * h * w), dtype=np.float32)
    weight[0] = -gain * np.broadcast_to(mask, (3, h, w)).reshape(-1) / (3.0 * mask.sum())
    bias = np.array([gain * threshold, 0.0], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "B"], ["logits"], transB=1),
        ],
        "object_logit",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def object_model(tmp_path_factory: pytest.TempPathFactory) -> BlackBoxModel:
    graph = object_logit_graph(OBJECT, gain=0.05, threshold=64.0)
    return load_onnx_model(graph, tmp_path_factory.mktemp("pd"), height=SIZE, width=SIZE)


def scene(seed: int = 4) -> np.ndarray:
    """A textured demo background with a dark (20, 20, 20) object on A."""
    image = shapes.backgrounds(1, seed=seed, size=SIZE)[0].astype(np.float32)
    image[OBJECT] = 20.0
    return image


def touching(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pixels whose region overlaps ``mask``."""
    return np.isin(labels, np.unique(labels[mask]))


@pytest.mark.parametrize("algorithm", ["slic", "felzenszwalb"])
def test_regional_lights_up_exactly_the_regions_over_the_object(
    object_model: BlackBoxModel, algorithm: str
) -> None:
    spec = get_method("regional_prediction_difference")
    params = params_from_mapping(
        RegionalPredictionDifferenceParams,
        {"return_scale_maps": True, "segmentation": {"algorithm": algorithm}},
    )
    image = scene()
    e = spec.explain(object_model, image, Target(0, contrast=1), params)
    assert e.target_probability == pytest.approx(1 / (1 + np.exp(-0.05 * 44)), abs=1e-4)
    for n in (2, 4, 8, 16, 32):
        labels = e.maps[f"labels_{n}"].astype(int)
        assert len(np.unique(labels)) == n
        near = touching(labels, OBJECT)
        s = e.maps[f"scale_{n}"]
        assert np.abs(s[~near]).max(initial=0.0) < 1e-6
        assert s[near].min() > 1e-4
    assert np.all(e.heatmap[OBJECT] > 1e-4)
    assert e.heatmap[OBJECT].mean() > 2 * e.heatmap[~OBJECT].mean()
    # the contrast class (logit 0) gains exactly what class 0 loses: its clipped map is 0
    assert np.all(e.maps["contrast"] == 0.0)


def test_pixelwise_lights_up_the_object_only(object_model: BlackBoxModel) -> None:
    spec = get_method("pixelwise_prediction_difference")
    params = PixelwisePredictionDifferenceParams(inner_size=6, outer_size=10, samples=2, stride=3)
    e = spec.explain(object_model, scene(), Target(0), params)
    ys, xs = np.nonzero(OBJECT)
    near = np.zeros_like(OBJECT)
    k = params.inner_size
    near[ys.min() - k + 1 : ys.max() + k, xs.min() - k + 1 : xs.max() + k] = True
    assert e.signed
    assert np.abs(e.heatmap[~near]).max() < 1e-4
    assert np.all(e.heatmap[OBJECT] > 0.01)


def demo_model() -> BlackBoxModel:
    from xaiserve.config import Settings
    from xaiserve.models import ModelRepository
    from xaiserve.observability import Metrics
    from xaiserve.runtime.batcher import ImageBudget

    root = DEMO_DIR.parent.parent
    repo = ModelRepository(root, Settings(models_dir=str(root)), Metrics(), ImageBudget(100_000))
    entry = repo.load_version("shapes", "1")
    assert entry.model is not None, f"demo model does not load: {entry.error}"
    return entry.model


DEMO_IMAGES = 20


def test_demo_model_regional_mass_on_the_object() -> None:
    model = demo_model()
    data = shapes.heldout(DEMO_IMAGES)
    spec = get_method("regional_prediction_difference")
    params = RegionalPredictionDifferenceParams()
    inside, baseline = [], []
    for image, label, mask in zip(data.images, data.labels, data.masks, strict=True):
        e = spec.explain(model, image.astype(np.float32), Target(int(label)), params)
        total = float(e.heatmap.sum())
        inside.append(float(e.heatmap[mask].sum()) / total if total > 0 else 0.0)
        baseline.append(float(mask.mean()))
    mass, area = float(np.mean(inside)), float(np.mean(baseline))
    print(f"regional PD mass inside the object: {mass:.3f} vs area fraction {area:.3f}")
    assert mass > area + 0.15
