"""One invariant test over every registered method, on the bundled demo CNN (real onnxruntime
behind the batcher, the real ONNX→PyTorch module for white-box methods, a real GAD support set
fitted by the job code). A method added to the registry is covered without editing this file.

Each method must: return a map on the model's grid; finite values; the same map for the same
seed; leave no hooks on any torch module it leased; and make no more forward passes than its
own registered cost estimate (what admission control counts against ``max_forward_passes``).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xaiserve.config import Settings
from xaiserve.core.methods import with_seed
from xaiserve.demo import shapes
from xaiserve.jobs.gad_fitting import GadFitConfig, fit_support_set
from xaiserve.jobs.operations import OperationStore
from xaiserve.methods import catalog  # noqa: F401 - registers every method
from xaiserve.methods.base import Target, get_method, registered_methods
from xaiserve.methods.params import params_from_mapping
from xaiserve.models.model import Model
from xaiserve.models.repository import ModelRepository
from xaiserve.observability import Metrics
from xaiserve.runtime.batcher import ImageBudget
from xaiserve.runtime.context import RequestContext, bind

DEMO_MODELS = Path(__file__).resolve().parents[2] / "models"

LIGHT: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"steps": 4},
    "smoothgrad": {"samples": 2},
    "regional_prediction_difference": {"scales": 2},
    "pixelwise_prediction_difference": {"stride": 8, "samples": 2},
    "gad": {"base_method": "gradient_times_input"},
}
"""Parameters that keep each method to a few dozen forward passes (others: their defaults)."""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Model, str]]:
    """The demo model and the id of a support set fitted on it (for ``gad``)."""
    root = tmp_path_factory.mktemp("registry") / "repo"
    shutil.copytree(DEMO_MODELS / "shapes", root / "shapes")
    repo = ModelRepository(root, Settings(models_dir=str(root)), Metrics(), ImageBudget(100_000))
    model = repo.load_version("shapes", "1").model
    assert model is not None
    data = shapes.generate(8 * len(shapes.CLASS_NAMES), shapes.TRAIN_SEED)
    fit = GadFitConfig(0, 1, epochs=1, batch_size=8, seed=0)
    ops = OperationStore(None, Metrics())
    op = ops.start_local(
        "fit_gad",
        lambda h: fit_support_set(
            model, data.images.astype(np.float32), data.labels, fit, h
        ).summary(),
    )
    done = ops.wait(op.id, 120)
    assert done.state == "SUCCEEDED" and done.result is not None, done.error_message
    yield model, str(done.result["id"])
    ops.shutdown()
    repo.close()


def _run(model: Model, name: str, params: Any, image: np.ndarray) -> tuple[np.ndarray, int]:
    with bind(RequestContext()) as ctx:
        heatmap = get_method(name).explain(model, image, Target(index=0), params).heatmap
    return np.asarray(heatmap), ctx.forward_passes


@pytest.mark.parametrize("name", sorted(registered_methods()))
def test_every_registered_method_keeps_the_invariants(
    demo: tuple[Model, str], name: str, caplog: pytest.LogCaptureFixture
) -> None:
    model, support_set = demo
    spec = get_method(name)
    values = dict(LIGHT.get(name, {}))
    if name == "gad":
        values["support_set"] = support_set
    params, _ = with_seed(params_from_mapping(spec.params_type, values, f"{name}."))
    image = shapes.heldout(1).images[0].astype(np.float32)
    assert model.supports(spec.model_backend)

    with caplog.at_level(logging.ERROR, logger="xaiserve.runtime.torch_backend"):
        first, passes = _run(model, name, params, image)
        again, _ = _run(model, name, params, image)

    assert first.shape == model.input_size, "the map is not on the model's grid"
    assert np.isfinite(first).all(), "the map has NaN or infinite values"
    np.testing.assert_array_equal(first, again, err_msg="same seed, different map")
    assert not [r for r in caplog.records if "left hooks" in r.getMessage()], caplog.text
    cost = int(spec.cost(params, model.input_size))
    assert 0 < passes <= cost, f"{passes} forward passes, over its cost estimate {cost}"
