"""The ``Score`` RPC: MoRF/LeRF/AOPC of a heatmap, plus localisation, complexity and RC/RS."""

from __future__ import annotations

import dataclasses
import secrets
import time
from typing import TYPE_CHECKING

import numpy as np

from xaiserve.api import converters as conv
from xaiserve.api.interceptors import set_method_label
from xaiserve.errors import InvalidInput, LimitExceeded
from xaiserve.evaluation.complexity import complexity
from xaiserve.evaluation.convex_hull import convex_hull_scores
from xaiserve.evaluation.localisation import localisation
from xaiserve.evaluation.morf import MorfParams, morf_cost, region_perturbation
from xaiserve.methods.params import params_from_mapping, params_to_dict
from xaiserve.runtime.context import RequestContext
from xaiserve.v1 import explain_pb2 as pb

if TYPE_CHECKING:
    from xaiserve.api.servicer import ExplainServicer

SUPPLIED = "supplied"


def morf_params(message: pb.MorfParams) -> MorfParams:
    params = params_from_mapping(MorfParams, conv.message_to_mapping(message), "morf.")
    if params.seed is None:
        params = dataclasses.replace(params, seed=secrets.randbits(32))
    return params


def score(
    servicer: ExplainServicer, request: pb.ScoreRequest, ctx: RequestContext
) -> pb.ScoreResponse:
    start = time.perf_counter()
    model = servicer.repository.get(request.model, request.version)
    params = morf_params(request.morf)
    keep = request.hull_keep_fraction if request.HasField("hull_keep_fraction") else 0.5
    if not 0.0 < keep <= 1.0:
        raise InvalidInput(f"hull_keep_fraction {keep} must be in (0, 1]")
    source = request.WhichOneof("heatmap_source")
    method = servicer.resolve_method(model, request.method) if source == "method" else None
    if method is None:
        set_method_label(SUPPLIED)
    cost = (
        morf_cost(params, model.input_size)
        + 1
        + (method.spec.cost(method.params, model.input_size) if method else 0)
    )
    if cost > servicer.settings.max_forward_passes:
        raise LimitExceeded(
            f"scoring needs {cost} forward passes, over the per-request limit of "
            f"{servicer.settings.max_forward_passes} (max_forward_passes): lower morf.steps or morf.repeats"
        )
    t0 = time.perf_counter()
    image = conv.model_image(request.image, model, servicer.limits)
    decode_s = time.perf_counter() - t0
    target, probs = servicer.resolve_target(model, image, request.target, None)
    if source == "heatmap":
        heatmap = conv.heatmap_from_proto(request.heatmap, model, "heatmap")
    elif method is not None:
        heatmap = np.asarray(
            method.spec.explain(model, image, target, method.params).heatmap, np.float32
        )
        ctx.check()
    else:
        raise InvalidInput("set heatmap (a tensor on the model's grid) or method (to compute one)")
    mask = None
    if request.HasField("mask"):
        mask = conv.heatmap_from_proto(request.mask, model, "mask") > 0
    t1 = time.perf_counter()
    result = region_perturbation(model, image, heatmap, target.index, params)
    hull = convex_hull_scores(model, image, heatmap, target.index, keep)
    cx = complexity(heatmap)
    method_s = time.perf_counter() - t1
    if probs is None:
        probs = model.predict(image[None])[0]
    response = pb.ScoreResponse(
        morf_curve=result.morf_curve.tolist(),
        aopc_morf=result.aopc_morf,
        forward_passes=ctx.forward_passes,
        complexity=pb.Complexity(png_bytes=float(cx.png_bytes), entropy=float(cx.entropy)),
        convex_hull=pb.ConvexHull(area_ratio=hull.area_ratio, sensitivity=hull.sensitivity),
        target=conv.class_score(model, target.index, float(probs[target.index])),
        provenance=conv.provenance(
            model,
            method.spec.name if method else SUPPLIED,
            {"morf": params_to_dict(params), **({"method": method.params_dict} if method else {})},
            params.seed,
            "onnx",
        ),
    )
    if result.lerf_curve is not None:
        response.lerf_curve.extend(result.lerf_curve.tolist())
        response.aopc_lerf = float(result.aopc_lerf or 0.0)
        response.area_between_lerf_morf = float(result.area_between_lerf_morf or 0.0)
    if result.random_curve is not None:
        response.random_curve.extend(result.random_curve.tolist())
        response.aopc_random = float(result.aopc_random or 0.0)
        response.aopc_morf_minus_random = float(result.aopc_morf_minus_random or 0.0)
    if method is not None:
        response.heatmap.CopyFrom(conv.tensor_to_proto(heatmap))
    if mask is not None:
        loc = localisation(heatmap, mask)
        response.localisation.CopyFrom(
            pb.Localisation(
                mu=loc.mu,
                mu_weighted=loc.mu_weighted,
                object_fraction=loc.object_fraction,
                thresholds=np.asarray(loc.thresholds).tolist(),
                precision=np.asarray(loc.precision).tolist(),
                recall=np.asarray(loc.recall).tolist(),
                f_measure=np.asarray(loc.f_measure).tolist(),
            )
        )
    response.timings.CopyFrom(
        pb.Timings(
            total_seconds=time.perf_counter() - start,
            decode_seconds=decode_s,
            method_seconds=method_s,
            inference_seconds=ctx.inference_seconds,
            queue_seconds=ctx.queue_seconds,
        )
    )
    return response
