"""Data-set evaluation: every chosen method on every image, scored and aggregated, in chunks.

For each image: the heatmap of each method, its MoRF/LeRF/random curves and AOPC (Samek et al.
Eq. 12), localisation against the mask when there is one (μ, μ_w, precision/recall/F), and
complexity, and — when asked — each method's model-parameter randomisation test (Adebayo et
al. 2018; the similarity per stop averaged over the images, under ``randomisation``). Images
are split into chunks sized to about ``chunk_seconds`` of compute
(:mod:`xaiserve.jobs.chunk_sizing`); any replica's worker runs a chunk
(:class:`DatasetEvaluationRunner`) and stores each image's evaluations losslessly
(:mod:`xaiserve.jobs.codec`); the completion of the last chunk feeds them, in item order, to one
:class:`DatasetAggregate` (the ``⟨·⟩_{p(x)}`` of Eq. 12), so the result is *identical* to a
single-process run of the same items and seeds, each item counted exactly once however many
times a chunk ran. Per-image summaries are published as the operation's ``item_result``.

The spec (stored with the operation) holds everything a replica needs to run a chunk: model
name and exact version, each method's resolved parameters (seeds included), the MoRF parameters
(seed included), and where the items are: a server-side data-set folder (every replica mounts
the same ``datasets_dir``) or items the client streamed, staged in the state store.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from xaiserve.evaluation.aggregate import DatasetAggregate, ImageEvaluation
from xaiserve.evaluation.complexity import complexity
from xaiserve.evaluation.localisation import localisation
from xaiserve.evaluation.morf import MorfParams, region_perturbation
from xaiserve.evaluation.randomisation import RandomisationCurve, mean_curve
from xaiserve.imaging.decode import ImageLimits, decode_encoded
from xaiserve.imaging.preprocess import fit_to_input
from xaiserve.jobs import codec
from xaiserve.jobs.chunk_sizing import ChunkSizer
from xaiserve.jobs.datasets import DatasetItem, dataset_folder, folder_items
from xaiserve.jobs.operations import OperationStore, ProgressHandle
from xaiserve.jobs.store import ChunkSpec, OperationRecord, StagedItem, StateStore, json_safe
from xaiserve.methods import get_method
from xaiserve.methods.base import MethodSpec, Target
from xaiserve.methods.params import params_from_mapping, params_to_dict
from xaiserve.models.artifacts import write_report
from xaiserve.models.model import Model
from xaiserve.models.randomised_variants import (
    DEFAULT_KEEP,
    DISTRIBUTION,
    RandomisationOptions,
    randomisation_test,
    randomised_variants,
)
from xaiserve.runtime.context import RequestContext, bind

KIND = "evaluate_dataset"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MethodRun:
    name: str
    spec: MethodSpec
    params: Any


class ModelSource(Protocol):
    def get(self, name: str, version: str = "") -> Model: ...


def chunks_of(total: int, size: int) -> list[ChunkSpec]:
    """``[0, total)`` in consecutive chunks of at most ``size`` items."""
    size = max(1, size)
    return [ChunkSpec(i, min(i + size, total)) for i in range(0, total, size)]


def evaluation_spec(
    model: Model,
    runs: list[MethodRun],
    morf: MorfParams,
    *,
    dataset: str = "",
    limit: int = 0,
    randomisation: RandomisationOptions | None = None,
    keep_variant_sets: int = DEFAULT_KEEP,
    passes_per_image: int = 0,
) -> dict[str, Any]:
    """What a replica needs to run a chunk (parameters fully resolved, seeds included), and
    the estimated forward passes per image (the chunk-size estimate learns from it)."""
    return {
        "model": model.name,
        "version": model.version,
        "methods": [{"name": r.name, "params": params_to_dict(r.params)} for r in runs],
        "morf": params_to_dict(morf),
        "dataset": dataset,
        "limit": limit,
        "randomisation": (
            None
            if randomisation is None
            else {"stops": randomisation.stops, "seed": randomisation.seed}
        ),
        "keep_variant_sets": keep_variant_sets,
        "passes_per_image": passes_per_image,
    }


def method_runs(spec: dict[str, Any]) -> list[MethodRun]:
    runs = []
    for m in spec["methods"]:
        method = get_method(m["name"])
        runs.append(
            MethodRun(m["name"], method, params_from_mapping(method.params_type, m["params"]))
        )
    return runs


_NPY_MAGIC = b"\x93NUMPY"


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def stage_item(
    index: int,
    name: str,
    label: int | None,
    image: bytes | np.ndarray,
    mask: np.ndarray | None,
) -> StagedItem:
    """A streamed item as stored for every replica: the image as the client encoded it (or,
    for a raw tensor, the decoded array as ``numpy.save`` bytes), the mask as ``numpy.save``
    bytes. Arrays are read back with ``allow_pickle=False``."""
    data = image if isinstance(image, bytes) else _npy(np.asarray(image, np.float32))
    return StagedItem(
        index, name, label, data, None if mask is None else _npy(np.asarray(mask, dtype=bool))
    )


def staged_dataset_items(
    items: list[StagedItem], limits: ImageLimits, grid: tuple[int, int] | None = None
) -> list[DatasetItem]:
    """Staged items, decoded lazily; with ``grid`` (the model's input ``(H, W)``) an encoded
    image without a mask is decoded no larger than the model needs (as it was validated)."""

    def image(item: StagedItem) -> Callable[[], np.ndarray]:
        if item.image.startswith(_NPY_MAGIC):
            data = item.image
            return lambda: np.load(io.BytesIO(data), allow_pickle=False)
        fit = grid if item.mask is None else None
        return lambda: decode_encoded(item.image, limits, fit)

    def mask(item: StagedItem) -> Callable[[], np.ndarray] | None:
        if item.mask is None:
            return None
        raw = item.mask
        return lambda: np.load(io.BytesIO(raw), allow_pickle=False)

    return [DatasetItem(i.name, image(i), i.label, mask(i)) for i in items]


def submit(
    operations: OperationStore,
    model: Model,
    runs: list[MethodRun],
    morf: MorfParams,
    *,
    total: int,
    chunk_items: int,
    message: str,
    dataset: str = "",
    limit: int = 0,
    staged: Sequence[StagedItem] = (),
    owner: str = "",
    randomisation: RandomisationOptions | None = None,
    keep_variant_sets: int = DEFAULT_KEEP,
    passes_per_image: int = 0,
) -> OperationRecord:
    """Record an ``evaluate_dataset`` operation: its spec, ``total`` items in chunks of
    ``chunk_items`` (:class:`~xaiserve.jobs.chunk_sizing.ChunkSizer` picks it from the cost
    estimate), and the client's staged items (one transaction); workers do the rest."""
    return operations.start(
        KIND,
        evaluation_spec(
            model,
            runs,
            morf,
            dataset=dataset,
            limit=limit,
            randomisation=randomisation,
            keep_variant_sets=keep_variant_sets,
            passes_per_image=passes_per_image,
        ),
        chunks_of(total, chunk_items),
        items=staged,
        total=total,
        message=message,
        owner=owner,
    )


def evaluate_item(
    model: Model,
    item: DatasetItem,
    runs: list[MethodRun],
    morf: MorfParams,
    randomisation: RandomisationOptions | None = None,
    keep_variant_sets: int = DEFAULT_KEEP,
) -> tuple[dict[str, ImageEvaluation], dict[str, Any], dict[str, RandomisationCurve]]:
    """Every method on one image: the evaluations, the per-image summary and, when asked, each
    method's randomisation curve."""
    image = fit_to_input(item.load(), model.config.input)
    mask = _mask(item, model) if item.load_mask is not None else None
    target = item.label
    if target is None:
        target = int(np.argmax(model.predict(image[None])[0]))
    per_method: dict[str, ImageEvaluation] = {}
    randomised: dict[str, RandomisationCurve] = {}
    summary: dict[str, Any] = {"name": item.name, "target": target}
    for run in runs:
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
            randomised[run.name] = curve
            summary[run.name]["randomisation_summary"] = curve.summary
    return per_method, summary, randomised


def randomisation_summary(
    curves: dict[str, list[RandomisationCurve]], options: RandomisationOptions
) -> dict[str, Any]:
    """Per method, the similarity per stop averaged over the images (JSON-ready)."""
    return {
        "seed": options.seed,
        "distribution": DISTRIBUTION,
        "methods": {name: mean_curve(runs).as_dict() for name, runs in curves.items() if runs},
    }


def _randomisation(spec: dict[str, Any]) -> RandomisationOptions | None:
    r = spec.get("randomisation")
    return None if r is None else RandomisationOptions(stops=r["stops"], seed=r["seed"])


def aggregate_result(aggregate: DatasetAggregate) -> dict[str, Any]:
    return {
        "images": aggregate.images,
        "columns": aggregate.columns(),
        "rows": aggregate.to_rows(),
        "relative_aopc_curves": {
            k: v.tolist() for k, v in aggregate.relative_aopc_curves().items()
        },
        "mean_aopc_curves": {k: v.tolist() for k, v in aggregate.mean_aopc_curves().items()},
    }


class DatasetEvaluationRunner:
    """The ``evaluate_dataset`` chunk runner (see module docs)."""

    def __init__(
        self,
        models: ModelSource,
        store: StateStore,
        limits: ImageLimits,
        datasets_dir: str,
        artifacts_root: str = "",
        sizer: ChunkSizer | None = None,
    ) -> None:
        self.models = models
        self.store = store
        self.limits = limits
        self.datasets_dir = datasets_dir
        self.artifacts_root = artifacts_root
        self.sizer = sizer

    def items(self, spec: dict[str, Any], model: Model, start: int, end: int, op_id: str
              ) -> list[DatasetItem]:
        if spec["dataset"]:
            folder = dataset_folder(self.datasets_dir, spec["dataset"])
            rows, _ = folder_items(
                folder, model.labels, self.limits, spec["limit"], model.input_size
            )
            return rows[start:end]
        return staged_dataset_items(
            self.store.staged_items(op_id, start, end), self.limits, model.input_size
        )

    def run(self, chunk: Any, handle: ProgressHandle) -> Any:
        spec = chunk.spec
        model = self.models.get(spec["model"], spec["version"])
        runs = method_runs(spec)
        morf = params_from_mapping(MorfParams, spec["morf"])
        items = self.items(spec, model, chunk.start, chunk.end, chunk.operation_id)
        sanity = _randomisation(spec)
        keep = spec.get("keep_variant_sets", DEFAULT_KEEP)
        out = []
        started = time.perf_counter()
        for k, item in enumerate(items, start=1):
            handle.check_cancelled()
            with bind(RequestContext(cancelled=handle.cancelled)):
                per_method, summary, curves = evaluate_item(model, item, runs, morf, sanity, keep)
            out.append(codec.encode({"evaluations": per_method, "randomisation": curves}))
            handle.update(done=k, item_result=summary)
        handle.check_cancelled()
        if self.sizer is not None:  # the next evaluation's chunks are sized from this one
            self.sizer.observe(
                model.name,
                model.version,
                len(items) * int(spec.get("passes_per_image", 0)),
                time.perf_counter() - started,
            )
        return out

    def finalize(self, op_id: str, spec: dict[str, Any], results: list[Any]) -> dict[str, Any]:
        """Every item's evaluations in item order into one aggregate; the report is written
        to ``<artifacts>/reports/<op id>/`` and named in the result."""
        aggregate = DatasetAggregate()
        sanity = _randomisation(spec)
        curves: dict[str, list[RandomisationCurve]] = {m["name"]: [] for m in spec["methods"]}
        for chunk_result in results:
            for encoded in chunk_result:
                item = codec.decode(encoded)
                aggregate.add(item["evaluations"])
                for name, curve in item["randomisation"].items():
                    curves[name].append(curve)
        result = aggregate_result(aggregate)
        if sanity is not None:
            result["randomisation"] = randomisation_summary(curves, sanity)
        if self.artifacts_root:
            try:
                path = write_report(self.artifacts_root, op_id, aggregate, json_safe(result))
                result["report"] = str(path)
            except OSError as exc:
                log.warning("report of %s not written: %s", op_id, exc)
        return result

    def discard(self, spec: dict[str, Any], result: Any) -> None:
        return None


def evaluate_dataset(
    model: Model,
    items: list[DatasetItem],
    methods: list[MethodRun],
    morf: MorfParams,
    handle: ProgressHandle,
    randomisation: RandomisationOptions | None = None,
    keep_variant_sets: int = DEFAULT_KEEP,
) -> dict[str, Any]:
    """The whole evaluation in this process (programmatic use; the reference the chunked run
    must equal)."""
    aggregate = DatasetAggregate()
    curves: dict[str, list[RandomisationCurve]] = {run.name: [] for run in methods}
    handle.update(total=len(items), message="evaluating")
    for done, item in enumerate(items, start=1):
        handle.check_cancelled()
        with bind(RequestContext(cancelled=handle.cancelled)):
            per_method, summary, item_curves = evaluate_item(
                model, item, methods, morf, randomisation, keep_variant_sets
            )
        aggregate.add(per_method)
        for name, curve in item_curves.items():
            curves[name].append(curve)
        handle.update(done=done, item_result=summary)
    result = aggregate_result(aggregate)
    if randomisation is not None:
        result["randomisation"] = randomisation_summary(curves, randomisation)
    return result


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
