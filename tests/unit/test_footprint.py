"""The request-cost model (#18): costs and memory footprints in O(1), batches from a budget."""

from __future__ import annotations

import dataclasses
import tracemalloc
from typing import Any

import numpy as np
import pytest

from xaiserve.contracts.footprint import (
    ACTIVATION_FACTOR,
    Footprint,
    check_footprint,
    image_bytes,
    torch_batch,
)
from xaiserve.errors import InvalidInput, LimitExceeded
from xaiserve.evaluation.morf import (
    MAX_REPEATS,
    MorfParams,
    _sequences,
    morf_cost,
    morf_memory,
    sequence_count,
)
from xaiserve.methods import (
    catalog,  # noqa: F401 - registers the methods
    registered_methods,
)
from xaiserve.methods.gradients import IntegratedGradientsParams, SmoothGradParams
from xaiserve.methods.params import params_from_mapping

GRID = (224, 224)


def peak_bytes(fn: Any) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fill", ["uniform", "black"])
@pytest.mark.parametrize("lerf", [True, False])
@pytest.mark.parametrize("random_baseline", [True, False])
def test_sequence_count_matches_the_sequences_run(
    fill: str, lerf: bool, random_baseline: bool
) -> None:
    params = MorfParams(repeats=7, fill=fill, lerf=lerf, random_baseline=random_baseline)  # type: ignore[arg-type]
    assert sequence_count(params) == len(_sequences(params))


def test_morf_cost_allocates_nothing_per_repeat() -> None:
    """Finding 1: the estimate built one tuple per repeat before the limit check."""
    params = MorfParams(repeats=MAX_REPEATS, steps=100_000, window=1)
    assert peak_bytes(lambda: morf_cost(params, GRID)) < 4096
    assert peak_bytes(lambda: morf_memory(params, GRID, 1000)) < 4096
    # 1 + L × (2 orderings × repeats + repeats random) with L = min(steps, regions)
    assert morf_cost(params, GRID) == 1 + 224 * 224 * 3 * MAX_REPEATS
    with pytest.raises(InvalidInput, match=r"morf\.repeats"):
        MorfParams(repeats=2**32 - 1)


def _largest(params_type: type[Any]) -> Any:
    """Parameters at (or near) their documented upper bounds, where the type has any."""
    big: dict[str, Any] = {
        "steps": 100_000, "samples": 10_000, "repeats": 1000, "scales": 16,
        "prior_segments": 4096, "integration": "riemann_trapezoid", "stride": 1,
        "inner_size": 64, "outer_size": 70,
    }  # fmt: skip
    names = {f.name for f in dataclasses.fields(params_type)}
    values = {k: v for k, v in big.items() if k in names}
    try:
        return params_from_mapping(params_type, values)
    except InvalidInput:
        return params_type() if not {"support_set"} & names else params_type(support_set="s")


@pytest.mark.parametrize("name", sorted(registered_methods()))
def test_every_method_declares_cost_and_memory_in_constant_space(name: str) -> None:
    spec = registered_methods()[name]
    params = _largest(spec.params_type)
    assert peak_bytes(lambda: spec.cost(params, GRID)) < 64 * 1024
    footprint = spec.memory(params, GRID, 1000)
    assert isinstance(footprint, Footprint) and footprint.bytes > 0 and footprint.knob
    assert peak_bytes(lambda: spec.memory(params, GRID, 1000)) < 64 * 1024


def test_gauss_legendre_memory_and_cpu_grow_with_steps() -> None:
    """Finding 2: Gauss–Legendre is O(steps²) memory and O(steps³) CPU; both are counted."""
    spec = registered_methods()["integrated_gradients"]
    small = IntegratedGradientsParams(steps=50)
    large = IntegratedGradientsParams(steps=256)
    assert spec.memory(large, GRID, 1).bytes >= 3 * 8 * 256**2
    assert spec.cost(large, GRID) > 2 * 256 + 2  # the eigenproblem counts as passes
    assert spec.cost(small, GRID) == 2 * 50 + 2
    with pytest.raises(InvalidInput, match="riemann"):
        IntegratedGradientsParams(steps=257)
    with pytest.raises(InvalidInput, match="riemann"):
        IntegratedGradientsParams(steps=99_999)
    assert IntegratedGradientsParams(steps=99_999, integration="riemann_left").steps == 99_999
    with pytest.raises(InvalidInput, match="internal_batch_size"):
        IntegratedGradientsParams(steps=10, internal_batch_size=11)
    with pytest.raises(InvalidInput, match="samples"):
        SmoothGradParams(samples=16_000)


def test_torch_batches_come_from_the_budget() -> None:
    per_image = ACTIVATION_FACTOR * image_bytes(GRID)
    budget = 10 * per_image + 1
    assert torch_batch(budget, GRID) == 10
    assert torch_batch(budget, GRID, requested=2000) == 10  # the client cannot go above it
    assert torch_batch(budget, GRID, requested=3) == 3
    assert torch_batch(1, GRID) == 1


def test_check_footprint_names_the_parameter() -> None:
    check_footprint(Footprint(10, "x.samples"), 10, "m")
    with pytest.raises(LimitExceeded, match=r"max_request_bytes.*lower x\.samples"):
        check_footprint(Footprint(11 * 2**20, "x.samples"), 10 * 2**20, "m")


def test_pixelwise_footprint_is_the_patch_samples() -> None:
    spec = registered_methods()["pixelwise_prediction_difference"]
    params = spec.params_type(inner_size=64, outer_size=65, samples=3000)
    fp = spec.memory(params, (64, 64), 5)
    assert fp.knob == "pixelwise_prediction_difference.samples"
    assert fp.bytes >= 2 * 8 * 3000 * 64 * 64 * 3  # what patch_samples really allocates
    assert np.isfinite(fp.bytes)


def test_cached_gauss_legendre_is_numpy_leggauss() -> None:
    """captum's Gauss–Legendre builders are served from our cache: the same numbers."""
    from captum.attr._utils.approximation_methods import approximation_parameters

    step_sizes, alphas = approximation_parameters("gausslegendre")
    nodes, weights = np.polynomial.legendre.leggauss(37)
    assert np.allclose(step_sizes(37), 0.5 * weights) and np.allclose(alphas(37), 0.5 * (1 + nodes))
    assert peak_bytes(lambda: step_sizes(37)) < 64 * 1024  # cached: no eigenproblem again
