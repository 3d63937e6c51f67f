"""``score``: MoRF/LeRF/AOPC of a heatmap (supplied or computed), with localisation against a
mask, complexity and the convex-hull RC/RS (see :mod:`xaiserve.evaluation`), and — when asked —
the method's model-parameter randomisation test (Adebayo et al. 2018; see
:mod:`xaiserve.models.randomised_variants`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xaiserve.contracts.footprint import check_footprint
from xaiserve.core.methods import ResolvedMethod, check_cost, resolve_method, run_method, with_seed
from xaiserve.core.predict import load_image
from xaiserve.core.services import Services
from xaiserve.core.targets import probabilities, resolve_target
from xaiserve.core.types import ClassRef, ClassScore, MethodChoice, Provenance, Timings
from xaiserve.errors import InvalidInput
from xaiserve.evaluation.complexity import ComplexityResult, complexity
from xaiserve.evaluation.convex_hull import ConvexHullResult, convex_hull_scores
from xaiserve.evaluation.localisation import LocalisationResult, localisation
from xaiserve.evaluation.morf import (
    MorfParams,
    MorfResult,
    morf_cost,
    morf_memory,
    region_perturbation,
)
from xaiserve.evaluation.randomisation import RandomisationCurve
from xaiserve.imaging.decode import ImageInput, RawTensor, decode_map
from xaiserve.methods.params import params_from_mapping, params_to_dict
from xaiserve.models.model import Model
from xaiserve.models.randomised_variants import (
    RandomisationOptions,
    randomisation_cost,
    randomisation_test,
    randomised_variants,
)
from xaiserve.runtime import context

SUPPLIED = "supplied"
"""The method name of a score whose heatmap the client supplied."""

DEFAULT_HULL_KEEP = 0.5


@dataclass(frozen=True)
class ScoreInput:
    """``heatmap`` (a map on the model's grid) or ``method`` (to compute one); ``mask`` is an
    optional ground-truth object mask for localisation."""

    model: str
    version: str
    image: ImageInput
    target: ClassRef = field(default_factory=ClassRef)
    heatmap: RawTensor | None = None
    method: MethodChoice | None = None
    morf: Mapping[str, Any] = field(default_factory=dict)
    mask: RawTensor | None = None
    hull_keep_fraction: float | None = None
    randomisation: RandomisationOptions | None = None


@dataclass(frozen=True)
class ScoreResult:
    morf: MorfResult
    complexity: ComplexityResult
    convex_hull: ConvexHullResult
    localisation: LocalisationResult | None
    target: ClassScore
    heatmap: np.ndarray | None  # the computed heatmap (``None`` when the client supplied it)
    forward_passes: int
    timings: Timings
    provenance: Provenance
    randomisation: RandomisationCurve | None = None
    randomisation_seed: int = 0


def morf_params(values: Mapping[str, Any]) -> MorfParams:
    """The client's MoRF parameters, a seed drawn when it set none."""
    params, _ = with_seed(params_from_mapping(MorfParams, dict(values), "morf."))
    return params  # type: ignore[no-any-return]


def score(services: Services, request: ScoreInput) -> ScoreResult:
    start = time.perf_counter()
    model = services.repository.get(request.model, request.version)
    params = morf_params(request.morf)
    keep = DEFAULT_HULL_KEEP if request.hull_keep_fraction is None else request.hull_keep_fraction
    if not 0.0 < keep <= 1.0:
        raise InvalidInput(f"hull_keep_fraction {keep} must be in (0, 1]")
    method: ResolvedMethod | None = None
    if request.method is not None:
        method = resolve_method(services, model, request.method)
    else:
        services.observe_method(SUPPLIED)
    sanity = request.randomisation
    if sanity is not None and method is None:
        raise InvalidInput(
            "randomisation needs method (the server explains the image on the original model "
            "and on every randomised variant with it), not a supplied heatmap"
        )
    cost = (
        morf_cost(params, model.input_size)
        + 1
        + (method.spec.cost(method.params, model.input_size) if method else 0)
        + (
            randomisation_cost(model, method.spec, method.params, sanity)
            if sanity and method
            else 0
        )
    )
    check_cost(
        services.settings,
        cost,
        "scoring",
        "lower morf.steps or morf.repeats"
        + (" or randomisation.stops (each variant is a full method call)" if sanity else ""),
    )
    footprint = morf_memory(params, model.input_size, model.num_classes)
    if method is not None:
        footprint = footprint + method.footprint
    check_footprint(footprint, services.settings.max_request_bytes, "scoring")
    with services.memory.reserve(footprint.bytes, footprint.knob):
        return _score(services, request, model, params, keep, method, start, sanity)


def _score(
    services: Services,
    request: ScoreInput,
    model: Model,
    params: MorfParams,
    keep: float,
    method: ResolvedMethod | None,
    start: float,
    sanity: RandomisationOptions | None,
) -> ScoreResult:
    ctx = context.current()
    image, decode_s = load_image(services, model, request.image)
    target, probs = resolve_target(model, image, request.target, None)
    h, w = model.input_size
    if request.heatmap is not None:
        heatmap = decode_map(request.heatmap, h, w, "heatmap")
    elif method is not None:
        heatmap = np.asarray(run_method(model, image, target, method).heatmap, np.float32)
        ctx.check()
    else:
        raise InvalidInput("set heatmap (a tensor on the model's grid) or method (to compute one)")
    mask = decode_map(request.mask, h, w, "mask") > 0 if request.mask is not None else None
    t1 = time.perf_counter()
    curves = region_perturbation(model, image, heatmap, target.index, params)
    hull = convex_hull_scores(model, image, heatmap, target.index, keep)
    cx = complexity(heatmap)
    curve = None
    if sanity is not None and method is not None:
        variants = randomised_variants(
            model, sanity.stops, sanity.seed, services.settings.randomisation_variant_sets
        )
        curve = randomisation_test(
            model, method.spec, method.params, image, target, variants, original=heatmap
        )
    method_s = time.perf_counter() - t1
    probs = probabilities(model, image, probs)
    parameters = {
        "morf": params_to_dict(params),
        **({"method": method.params_dict} if method else {}),
        **(
            {"randomisation": {"stops": sanity.stops, "seed": sanity.seed}}
            if sanity is not None
            else {}
        ),
    }
    return ScoreResult(
        morf=curves,
        complexity=cx,
        convex_hull=hull,
        localisation=localisation(heatmap, mask) if mask is not None else None,
        target=ClassScore.of(model, target.index, float(probs[target.index])),
        heatmap=heatmap if method is not None else None,
        forward_passes=ctx.forward_passes,
        timings=Timings.since(start, decode_s, ctx, method_s),
        provenance=Provenance.of(
            model, method.spec.name if method else SUPPLIED, parameters, params.seed, "onnx"
        ),
        randomisation=curve,
        randomisation_seed=sanity.seed if sanity is not None else 0,
    )
