"""Data-set evaluation: every chosen method on every image, scored and aggregated.

For each image: the heatmap of each method, its MoRF/LeRF/random curves and AOPC (Samek et al.
Eq. 12), localisation against the mask when there is one (μ, μ_w, precision/recall/F), and
complexity, and — when asked — each method's model-parameter randomisation test (Adebayo et
al. 2018; the similarity per stop averaged over the images, under ``randomisation``); per-image
results are published as the operation's ``item_result`` and the
running :class:`DatasetAggregate` becomes the final result (Samek et al. Fig. 4 curves).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xaiserve.evaluation.aggregate import DatasetAggregate, ImageEvaluation
from xaiserve.evaluation.complexity import complexity
from xaiserve.evaluation.localisation import localisation
from xaiserve.evaluation.morf import MorfParams, region_perturbation
from xaiserve.evaluation.randomisation import RandomisationCurve, mean_curve
from xaiserve.imaging.preprocess import fit_to_input
from xaiserve.jobs.datasets import DatasetItem
from xaiserve.jobs.operations import OperationHandle
from xaiserve.methods.base import MethodSpec, Target
from xaiserve.models.model import Model
from xaiserve.models.randomised_variants import (
    DEFAULT_KEEP,
    DISTRIBUTION,
    RandomisationOptions,
    randomisation_test,
    randomised_variants,
)
from xaiserve.runtime.context import RequestContext, bind


@dataclass(frozen=True)
class MethodRun:
    name: str
    spec: MethodSpec
    params: Any


def evaluate_dataset(
    model: Model,
    items: list[DatasetItem],
    methods: list[MethodRun],
    morf: MorfParams,
    handle: OperationHandle,
    randomisation: RandomisationOptions | None = None,
    keep_variant_sets: int = DEFAULT_KEEP,
) -> dict[str, Any]:
    aggregate = DatasetAggregate()
    sanity: dict[str, list[RandomisationCurve]] = {run.name: [] for run in methods}
    handle.update(total=len(items), message="evaluating")
    for done, item in enumerate(items, start=1):
        handle.check_cancelled()
        with bind(RequestContext(cancelled=handle.cancelled)):
            image = fit_to_input(item.load(), model.config.input)
            mask = _mask(item, model) if item.load_mask is not None else None
            target = item.label
            if target is None:
                target = int(np.argmax(model.predict(image[None])[0]))
            per_method: dict[str, ImageEvaluation] = {}
            summary: dict[str, Any] = {"name": item.name, "target": target}
            for run in methods:
                heatmap = np.asarray(
                    run.spec.explain(model, image, Target(target), run.params).heatmap, np.float32
                )
                curves = region_perturbation(model, image, heatmap, target, morf)
                loc = localisation(heatmap, mask) if mask is not None else None
                per_method[run.name] = ImageEvaluation(
                    morf=curves, localisation=loc, complexity=complexity(heatmap)
                )
                summary[run.name] = {
                    "aopc_morf": curves.aopc_morf,
                    "aopc_morf_minus_random": curves.aopc_morf_minus_random,
                    **({"mu": loc.mu, "mu_weighted": loc.mu_weighted} if loc is not None else {}),
                }
                if randomisation is not None:
                    variants = randomised_variants(
                        model, randomisation.stops, randomisation.seed, keep_variant_sets
                    )
                    curve = randomisation_test(
                        model, run.spec, run.params, image, Target(target), variants, heatmap
                    )
                    sanity[run.name].append(curve)
                    summary[run.name]["randomisation_summary"] = curve.summary
        aggregate.add(per_method)
        handle.update(done=done, item_result=summary)
    return {
        "images": aggregate.images,
        "columns": aggregate.columns(),
        "rows": aggregate.to_rows(),
        "relative_aopc_curves": {
            k: v.tolist() for k, v in aggregate.relative_aopc_curves().items()
        },
        "mean_aopc_curves": {k: v.tolist() for k, v in aggregate.mean_aopc_curves().items()},
        **(
            {"randomisation": randomisation_summary(sanity, randomisation)} if randomisation else {}
        ),
    }


def randomisation_summary(
    curves: dict[str, list[RandomisationCurve]], options: RandomisationOptions
) -> dict[str, Any]:
    """Per method, the similarity per stop averaged over the images (JSON-ready)."""
    return {
        "seed": options.seed,
        "distribution": DISTRIBUTION,
        "methods": {name: mean_curve(runs).as_dict() for name, runs in curves.items() if runs},
    }


def _mask(item: DatasetItem, model: Model) -> np.ndarray:
    assert item.load_mask is not None
    return mask_on_grid(item.load_mask(), model)


def mask_on_grid(mask: np.ndarray, model: Model) -> np.ndarray:
    """A boolean mask on any grid, brought to the model's input grid like its image."""
    raw = np.asarray(mask).astype(np.uint8) * 255
    h, w = model.input_size
    if raw.shape == (h, w):
        return raw > 127
    grey = np.repeat(raw[:, :, None].astype(np.float32), 3, axis=2)
    return fit_to_input(grey, model.config.input)[:, :, 0] > 127.5
