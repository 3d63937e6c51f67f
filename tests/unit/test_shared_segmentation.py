"""Methods through the shared segmenter: nested scales, and one segmentation serving many requests.

The regional prediction difference and contextual importance ask the process-wide segmenter
for their regions; these tests install a fresh one (fresh metrics) and check that (a) re-explaining
an image for another target, or with the other method, reuses the labels instead of segmenting
again, (b) the results are those of a segmenter with the cache off, and (c) the nested option
keeps Algorithm 3's known answer on a model whose answer is known by construction.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from tests.support import refines
from xaiserve.errors import InvalidInput
from xaiserve.imaging.exact_regions import exact_superpixels
from xaiserve.imaging.segmentation import SegmentationParams
from xaiserve.imaging.segmenter import Segmenter, install_segmenter, uninstall_segmenter
from xaiserve.methods.base import Target
from xaiserve.methods.contextual_importance import (
    ContextualImportanceParams,
    contextual_importance,
)
from xaiserve.methods.params import params_from_mapping, params_to_dict
from xaiserve.methods.regional_prediction_difference import (
    ExclusionFills,
    RegionalPredictionDifferenceParams,
    region_noise,
)
from xaiserve.methods.regional_prediction_difference import explain as regional
from xaiserve.observability import Metrics

from .test_prediction_difference import random_model, region_model, scene


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics(CollectorRegistry())
    seg = Segmenter(workers=1, device="cpu", metrics=m)
    previous = install_segmenter(seg)
    yield m
    uninstall_segmenter(seg)
    seg.close()
    if previous is not None:
        install_segmenter(previous)


def count(metrics: Metrics, name: str, kind: str) -> float:
    value = metrics.registry.get_sample_value(
        f"xaiserve_segmentation_cache_{name}_total", {"kind": kind}
    )
    return 0.0 if value is None else value


def test_re_explaining_for_another_target_segments_nothing_again(metrics: Metrics) -> None:
    image, _ = scene()
    model = random_model(40, 48)
    params = RegionalPredictionDifferenceParams(
        scales=4, return_scale_maps=True, clip_negative=False
    )
    first = regional(model, image, Target(0), params)
    misses = {k: count(metrics, "misses", k) for k in ("exact", "prior", "superpixels")}
    assert misses["exact"] == 5 and misses["prior"] == 1  # 4 scales + the prior's 2^8 regions
    second = regional(model, image, Target(2), params)
    assert {k: count(metrics, "misses", k) for k in misses} == misses
    assert count(metrics, "hits", "exact") == 4 and count(metrics, "hits", "prior") == 1
    for n in (2, 4, 8, 16):
        np.testing.assert_array_equal(first.maps[f"labels_{n}"], second.maps[f"labels_{n}"])
    # the same numbers as with no cache at all
    nocache = Segmenter(cache_bytes=0, workers=1, device="cpu")
    install_segmenter(nocache)
    try:
        again = regional(model, image, Target(2), params)
    finally:
        uninstall_segmenter(nocache)
        nocache.close()
    np.testing.assert_array_equal(again.heatmap, second.heatmap)


def test_contextual_importance_and_regional_share_superpixels(metrics: Metrics) -> None:
    image, _ = scene()
    model = random_model(40, 48)
    ci = ContextualImportanceParams(segmentation=SegmentationParams(n_segments=32))
    contextual_importance(model, image, Target(0), ci)
    assert count(metrics, "misses", "superpixels") == 1
    # the scale of 16 regions asks SLIC for 32 segments: the call CI already made
    regional(model, image, Target(0), RegionalPredictionDifferenceParams(scales=4))
    assert count(metrics, "hits", "superpixels") >= 1
    misses = count(metrics, "misses", "superpixels")
    contextual_importance(model, image, Target(1), ci)  # another target: no new segmentation
    assert count(metrics, "misses", "superpixels") == misses
    assert count(metrics, "hits", "superpixels") >= 2


def test_nested_scales_keep_the_known_answer(metrics: Metrics) -> None:
    image, mask = scene()
    model = region_model(mask, gain=0.05, threshold=120.0)
    params = params_from_mapping(
        RegionalPredictionDifferenceParams,
        {"segmentation": {"nested": True}, "return_scale_maps": True},
    )
    explanation = regional(model, image, Target(0), params)
    previous = None
    for n in (32, 16, 8, 4, 2):
        labels = explanation.maps[f"labels_{n}"].astype(int)
        assert sorted(np.unique(labels).tolist()) == list(range(n))
        if previous is not None:  # each finer region lies in one coarser region
            assert refines(previous, labels)
        previous = labels
        s = explanation.maps[f"scale_{n}"]
        touches = np.isin(labels, np.unique(labels[mask]))
        assert np.all(s[~touches] == 0.0) and np.all(s[touches] > 0.0)
    assert np.all(explanation.heatmap[mask] > 0)
    assert explanation.heatmap[mask].mean() > 3 * explanation.heatmap[~mask].mean()
    # one over-segmentation: the prior's exact regions, no per-scale exact segmentation
    assert count(metrics, "misses", "exact") == 1 and count(metrics, "misses", "nested") == 1
    assert params_to_dict(params)["segmentation"]["nested"] is True  # recorded in provenance


def test_nested_needs_enough_prior_regions() -> None:
    with pytest.raises(InvalidInput, match="prior_segments"):
        params_from_mapping(
            RegionalPredictionDifferenceParams,
            {"segmentation": {"nested": True}, "scales": 5, "prior_segments": 16},
        )
    assert not params_from_mapping(RegionalPredictionDifferenceParams, {}).segmentation.nested


@pytest.mark.parametrize("nested", [False, True])
def test_cached_noise_draws_are_the_fresh_draws_bit_for_bit(metrics: Metrics, nested: bool) -> None:
    """Re-explaining draws no noise again, and the perturbed images and maps are exactly those
    of a segmenter that caches nothing (every draw fresh)."""
    image, _ = scene()
    params = params_from_mapping(
        RegionalPredictionDifferenceParams,
        {"scales": 4, "seed": 5, "segmentation": {"nested": nested}, "return_scale_maps": True},
    )
    first_model, warm_model = random_model(40, 48), random_model(40, 48)
    regional(first_model, image, Target(0), params)
    assert count(metrics, "misses", "noise") == 4 and count(metrics, "hits", "noise") == 0
    warm = regional(warm_model, image, Target(1), params)
    assert count(metrics, "misses", "noise") == 4 and count(metrics, "hits", "noise") == 4
    # another seed or σ² is another draw
    regional(random_model(40, 48), image, Target(1), replace(params, seed=6))
    regional(random_model(40, 48), image, Target(1), replace(params, sigma_squared=11.0))
    assert count(metrics, "misses", "noise") == 12
    nocache = Segmenter(cache_bytes=0, workers=1, device="cpu")
    install_segmenter(nocache)
    try:
        fresh_model = random_model(40, 48)
        fresh = regional(fresh_model, image, Target(1), params)
    finally:
        uninstall_segmenter(nocache)
        nocache.close()
    assert warm_model.seen == fresh_model.seen == first_model.seen  # the same perturbed images
    np.testing.assert_array_equal(warm.heatmap, fresh.heatmap)
    for n in (2, 4, 8, 16):
        np.testing.assert_array_equal(warm.maps[f"scale_{n}"], fresh.maps[f"scale_{n}"])


def test_exclusion_fills_are_region_noise_in_region_order() -> None:
    """The product against ``region_noise`` called region by region (the literal draw)."""
    image, _ = scene()
    params = RegionalPredictionDifferenceParams(seed=3, sigma_squared=900.0)
    labels = exact_superpixels(image, 8, params.segmentation)
    mu = np.array([10.0, 128.5, 250.0])
    seg = Segmenter(cache_bytes=0, workers=1, device="cpu")
    try:
        order, bounds, fills = seg.inline(
            seg.image(image), ExclusionFills.of(labels, 3, params, mu)
        )
    finally:
        seg.close()
    assert fills.dtype == np.float32 and len(bounds) == 9
    for i in range(8):
        pixels = np.flatnonzero(labels.ravel() == i)  # row-major, as the literal algorithm
        np.testing.assert_array_equal(order[bounds[i] : bounds[i + 1]], pixels)
        want = region_noise(3, 3, i, len(pixels), mu, 30.0).astype(np.float32)
        np.testing.assert_array_equal(fills[bounds[i] : bounds[i + 1]], want)
