"""The core use cases run with no transport at all: domain inputs in, domain results out, on a
real repository (onnxruntime behind the batcher). They own the seeds, the cost check, target
resolution and the probability backfill; these tests check each against values known by
construction (the region model's logits are ``0.05 × mean pixel value`` of its region)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support import region_logit_model, write_model_folder
from xaiserve import core
from xaiserve.config import Settings
from xaiserve.errors import LimitExceeded
from xaiserve.imaging.decode import ImageInput, RawTensor
from xaiserve.jobs.operations import OperationStore
from xaiserve.models.repository import ModelRepository
from xaiserve.observability import Metrics
from xaiserve.runtime.batcher import ImageBudget
from xaiserve.runtime.context import RequestContext, bind

GAIN = 0.05


@pytest.fixture
def services(
    tmp_path: Path, region_masks: tuple[np.ndarray, np.ndarray]
) -> Iterator[tuple[core.Services, list[str]]]:
    root = tmp_path / "repo"
    write_model_folder(
        region_logit_model(16, 16, list(region_masks), gain=GAIN),
        root,
        height=16,
        width=16,
        labels=["left", "right"],
        name="regions",
    )
    settings = Settings(models_dir=str(root), max_forward_passes=1000)
    repo = ModelRepository(root, settings, Metrics(), ImageBudget(10_000))
    repo.load_all()
    seen: list[str] = []
    ops = OperationStore(None, Metrics())
    yield core.Services(settings, repo, ops, seen.append), seen
    ops.shutdown()
    repo.close()


def _image(region: np.ndarray) -> ImageInput:
    """A black image, white on ``region``, as a raw uint8 tensor (decoded by the core)."""
    pixels = np.where(region[:, :, None], 255, 0).repeat(3, axis=2).astype(np.uint8)
    return ImageInput(tensor=RawTensor("uint8", pixels.shape, pixels.tobytes()))


def test_explain_draws_a_seed_resolves_the_target_and_backfills_probabilities(
    services: tuple[core.Services, list[str]], region_masks: tuple[np.ndarray, np.ndarray]
) -> None:
    svc, seen = services
    image = _image(region_masks[1])  # the "right" region lit: logits (0, 0.05 × 255)
    params = {"stride": 4, "samples": 2, "inner_size": 2, "outer_size": 4}
    request = core.ExplainInput(
        "regions",
        "",
        image,
        core.MethodChoice("pixelwise_prediction_difference", params),
        contrast=core.ClassRef(index=0),
    )
    with bind(RequestContext()):
        first = core.explain(svc, request)
    p_right = 1.0 / (1.0 + math.exp(-GAIN * 255.0))
    assert first.target.label == "right"  # unset target → the predicted class
    assert first.target.probability == pytest.approx(p_right, rel=1e-5)
    assert first.contrast is not None and first.contrast.index == 0
    assert first.contrast.probability == pytest.approx(1.0 - p_right, abs=1e-6)
    seed = first.provenance.seed
    assert isinstance(seed, int) and first.provenance.parameters["seed"] == seed
    assert first.heatmap.shape == (16, 16) and first.forward_passes > 0
    assert seen == ["pixelwise_prediction_difference"]

    again = core.ExplainInput(
        "regions", "", image, core.MethodChoice(request.method.name, {**params, "seed": seed})
    )
    with bind(RequestContext()):
        replay = core.explain(svc, again)
    np.testing.assert_array_equal(replay.heatmap, first.heatmap)  # reproducible from provenance


def test_the_cost_check_comes_before_any_decoding_or_forward_pass(
    services: tuple[core.Services, list[str]],
) -> None:
    svc, _ = services
    expensive = core.MethodChoice("pixelwise_prediction_difference", {"stride": 1, "samples": 50})
    with bind(RequestContext()) as ctx, pytest.raises(LimitExceeded, match="max_forward_passes"):
        # no image at all: a decode would have failed with INVALID_ARGUMENT first
        core.explain(svc, core.ExplainInput("regions", "", ImageInput(), expensive))
    assert ctx.forward_passes == 0


def test_predict_scores_known_logits(
    services: tuple[core.Services, list[str]], region_masks: tuple[np.ndarray, np.ndarray]
) -> None:
    svc, _ = services
    with bind(RequestContext()):
        result = core.predict(svc, core.PredictInput("regions", "", _image(region_masks[0]), 2))
    p_left = 1.0 / (1.0 + math.exp(-GAIN * 255.0))
    assert [c.label for c in result.classes] == ["left", "right"]
    assert result.classes[0].probability == pytest.approx(p_left, rel=1e-5)
