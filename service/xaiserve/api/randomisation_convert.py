"""Proto ↔ domain for the model-parameter randomisation test (Adebayo et al. 2018)."""

from __future__ import annotations

import math

from xaiserve.evaluation.randomisation import RandomisationCurve
from xaiserve.models.randomised_variants import RandomisationOptions
from xaiserve.runtime.parameter_randomisation import DISTRIBUTION
from xaiserve.v1 import explain_pb2 as pb


def options_from_proto(message: pb.RandomisationOptions) -> RandomisationOptions:
    """``RandomisationOptions`` with defaults for unset fields (INVALID_ARGUMENT when out of
    range)."""
    stops = message.stops if message.HasField("stops") else 0
    seed = message.seed if message.HasField("seed") else 0
    return RandomisationOptions(stops=int(stops), seed=int(seed))


def curve_to_proto(curve: RandomisationCurve, seed: int) -> pb.Randomisation:
    out = pb.Randomisation(
        method=curve.method,
        total_layers=curve.total_layers,
        seed=seed,
        summary=_num(curve.summary),
        full_randomisation=curve.full,
        distribution=DISTRIBUTION,
        notes=list(curve.notes),
        images=curve.images,
    )
    for depth, layer, sim in zip(curve.depths, curve.layers, curve.similarities, strict=True):
        out.points.append(
            pb.RandomisationPoint(
                depth=depth,
                layer=layer,
                spearman_abs=_num(sim.spearman_abs),
                spearman_signed=_num(sim.spearman_signed),
                ssim=_num(sim.ssim),
                hog=_num(sim.hog),
            )
        )
    return out


def _num(value: float) -> float:
    return float(value) if value is not None else math.nan
