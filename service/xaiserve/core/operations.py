"""Starting the long-running operations: data-set evaluation and GAD fitting.

Both take a configuration and then items — a server-side data-set folder named in the
configuration, or items streamed by the client (never both). Everything that can be checked
before the job starts is checked here, so a bad request fails with its status at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xaiserve.contracts.footprint import check_footprint
from xaiserve.core.methods import check_cost, resolve_method
from xaiserve.core.score import morf_params
from xaiserve.core.services import Services
from xaiserve.core.targets import resolve_class
from xaiserve.core.types import ClassRef, MethodChoice
from xaiserve.errors import InvalidInput, LimitExceeded, Unimplemented
from xaiserve.evaluation.morf import morf_cost, morf_memory
from xaiserve.imaging.decode import ImageInput, RawTensor, decode_image, decode_map
from xaiserve.imaging.preprocess import fit_to_input
from xaiserve.jobs import dataset_evaluation as evaluation
from xaiserve.jobs import gad_fitting
from xaiserve.jobs.dataset_evaluation import MethodRun
from xaiserve.jobs.datasets import dataset_folder, folder_items
from xaiserve.jobs.gad_fitting import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_LEARNING_RATE,
    GadFitConfig,
)
from xaiserve.jobs.operations import OperationState
from xaiserve.jobs.store import StagedItem
from xaiserve.models.model import Model
from xaiserve.models.randomised_variants import RandomisationOptions, randomisation_cost
from xaiserve.models.support_sets import SupportSetStore

MAX_METHODS = 16
"""Methods one data-set evaluation may compare."""

MAX_FIT_IMAGES = 5000
"""Images of classes a and b one fit may use (they are held in memory on the model's grid)."""


@dataclass(frozen=True)
class StreamedItem:
    """One labelled image the client streamed after the configuration (``index`` counts from
    0 and names the item in error messages: ``items[i]``)."""

    index: int
    name: str
    image: ImageInput
    label: ClassRef = field(default_factory=ClassRef)
    mask: RawTensor | None = None


@dataclass(frozen=True)
class DatasetEvaluationInput:
    model: str
    version: str
    methods: Sequence[MethodChoice]
    morf: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""
    limit: int | None = None
    randomisation: RandomisationOptions | None = None


@dataclass(frozen=True)
class GadFitInput:
    model: str
    version: str
    class_a: ClassRef
    class_b: ClassRef
    dataset: str = ""
    alphas: tuple[float, ...] = ()
    epochs: int | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    seed: int | None = None


# ---------------------------------------------------------------------------------------------
# data-set evaluation


def start_dataset_evaluation(
    services: Services,
    config: DatasetEvaluationInput,
    items: Iterator[StreamedItem],
    owner: str = "",
) -> OperationState:
    """Validate and record an ``evaluate_dataset`` operation (Samek et al. Sec. IV on a set):
    its chunks are run by the workers of every replica (:mod:`xaiserve.jobs.dataset_evaluation`);
    streamed items are staged in the state store, where every replica reads them."""
    settings = services.settings
    model = services.repository.get(config.model, config.version)
    if not config.methods:
        raise InvalidInput("config.methods is empty: name at least one method")
    if len(config.methods) > MAX_METHODS:
        raise InvalidInput(
            f"config.methods has {len(config.methods)} entries; the limit is {MAX_METHODS}"
        )
    runs = []
    footprints = []
    for choice in config.methods:
        resolved = resolve_method(services, model, choice)
        runs.append(MethodRun(resolved.spec.name, resolved.spec, resolved.params))
        footprints.append(resolved.footprint)
    if len({r.name for r in runs}) != len(runs):
        raise InvalidInput("config.methods names a method twice")
    morf = morf_params(config.morf)
    # Bounded before any item is read: passes and memory per image (items run one by one).
    sanity = config.randomisation
    per_image = sum(
        r.spec.cost(r.params, model.input_size)
        + morf_cost(morf, model.input_size)
        + (randomisation_cost(model, r.spec, r.params, sanity) if sanity else 0)
        for r in runs
    )
    check_cost(
        settings,
        per_image,
        "each image",
        "lower morf.steps/repeats or method costs"
        + (" or randomisation.stops (each variant is a full method call)" if sanity else ""),
    )
    morf_fp = morf_memory(morf, model.input_size, model.num_classes)
    for run, footprint in zip(runs, footprints, strict=True):
        check_footprint(morf_fp + footprint, settings.max_request_bytes, f"{run.name} per image")
    limit = min(
        config.limit if config.limit is not None else settings.max_stream_images,
        settings.max_stream_images,
    )
    staged: list[StagedItem] = []
    if config.dataset:
        folder = dataset_folder(settings.datasets_dir, config.dataset)
        count = len(folder_items(folder, model.labels, services.limits, limit)[0])
        _no_items_after_dataset(items)
    else:
        staged = _evaluation_items(services, model, items, limit)
        count = len(staged)
    if not count:
        raise InvalidInput(
            "the data set is empty: stream items after the config or name config.dataset"
        )
    return evaluation.submit(
        services.operations,
        model,
        runs,
        morf,
        total=count,
        chunk_items=services.operations.chunk_sizer.items(
            model.name, model.version, per_image, count
        ),
        message=f"{count} images × {len(runs)} methods on {model.name}/{model.version}",
        dataset=config.dataset,
        limit=limit,
        staged=staged,
        owner=owner,
        randomisation=sanity,
        keep_variant_sets=settings.randomisation_variant_sets,
        passes_per_image=per_image,
    )


def _evaluation_items(
    services: Services, model: Model, items: Iterator[StreamedItem], limit: int
) -> list[StagedItem]:
    """Streamed items, validated (decoded once) and staged as the client encoded them."""
    out: list[StagedItem] = []
    for item in items:
        if len(out) >= limit:
            raise LimitExceeded(
                f"at most {limit} items per operation (max_stream_images or config.limit)"
            )
        where = f"items[{item.index}]"
        grid = None if item.mask is not None else model.input_size
        image = decode_image(item.image, services.limits, f"{where}.image", grid)
        label = resolve_class(item.label, model, f"{where}.label")
        mask = None
        if item.mask is not None:
            h, w = image.shape[:2]
            mask = decode_map(item.mask, h, w, f"{where}.mask") > 0
        out.append(evaluation.stage_item(len(out), item.name, label, _as_staged(item, image), mask))
    return out


def _as_staged(item: StreamedItem, decoded: np.ndarray) -> bytes | np.ndarray:
    """The encoded bytes as sent (small), or the decoded array for a raw tensor."""
    return item.image.encoded if item.image.encoded is not None else decoded


# ---------------------------------------------------------------------------------------------
# GAD fitting


def start_gad_fit(
    services: Services,
    config: GadFitInput,
    items: Iterator[StreamedItem],
    owner: str = "",
) -> OperationState:
    """Validate and start a ``fit_gad`` operation (Mazini Rodrigues et al. Sections 4.1–4.2).

    Checked first: the model (and that it has a torch backend), the two classes (``a ≠ b``,
    Section 4.1), the hyper-parameters, that the version folder is writable, that the items
    carry labels and that both classes are present. Only images of classes ``a`` and ``b`` are
    kept. The result's ``support_set`` is the id to pass as the ``gad`` method's
    ``support_set``. The fit is one chunk (one training run) that any replica's worker runs;
    the set is written to the artifact location every replica shares.
    """
    settings = services.settings
    model = services.repository.get(config.model, config.version)
    if not model.supports("torch"):
        raise Unimplemented(f"GAD needs the torch backend, which model {model.name!r} lacks")
    fit = fit_config(config, model)
    SupportSetStore(model.artifact_folder).check_writable()
    limit = min(MAX_FIT_IMAGES, settings.max_stream_images)
    if config.dataset:
        folder = dataset_folder(settings.datasets_dir, config.dataset)
        rows, _ = folder_items(folder, model.labels, services.limits, settings.max_stream_images)
        for row in rows:
            if row.label is None:
                raise InvalidInput(
                    f"data set {config.dataset!r}: {row.name!r} has no label; GAD needs labels"
                )
        labels: list[int | None] = [r.label for r in rows if r.label in (fit.class_a, fit.class_b)]
        labels = labels[:limit]
        _no_items_after_dataset(items)
        staged: list[StagedItem] = []
    else:
        staged = _fit_items(services, model, items, fit, limit)
        labels = [i.label for i in staged]
    counts = [sum(1 for label in labels if label == k) for k in (fit.class_a, fit.class_b)]
    if min(counts) == 0:
        raise InvalidInput(
            f"the data set needs images of both classes: it has {counts[0]} of class "
            f"{fit.class_a} ({model.labels[fit.class_a]}) and {counts[1]} of class "
            f"{fit.class_b} ({model.labels[fit.class_b]})"
        )
    return gad_fitting.submit(
        services.operations,
        model,
        fit,
        message=(
            f"GAD support set for {model.labels[fit.class_a]} vs {model.labels[fit.class_b]} "
            f"on {model.name}/{model.version}: {len(labels)} images, {len(fit.alphas)} α × "
            f"{fit.epochs} epochs"
        ),
        dataset=config.dataset,
        limit=limit,
        rows_limit=settings.max_stream_images,
        staged=staged,
        owner=owner,
    )


def fit_config(config: GadFitInput, model: Model) -> GadFitConfig:
    """The fit's hyper-parameters (unset fields take the paper's defaults)."""
    a = resolve_class(config.class_a, model, "config.class_a")
    b = resolve_class(config.class_b, model, "config.class_b")
    if a is None or b is None:
        raise InvalidInput("config.class_a and config.class_b must name classes (index or label)")
    if a == b:
        raise InvalidInput(f"config.class_a and config.class_b are both {model.labels[a]!r}")
    return GadFitConfig(
        class_a=a,
        class_b=b,
        alphas=tuple(config.alphas),
        epochs=DEFAULT_EPOCHS if config.epochs is None else config.epochs,
        learning_rate=(
            DEFAULT_LEARNING_RATE if config.learning_rate is None else config.learning_rate
        ),
        batch_size=DEFAULT_BATCH_SIZE if config.batch_size is None else config.batch_size,
        seed=0 if config.seed is None else config.seed,
    )


def _fit_items(
    services: Services,
    model: Model,
    items: Iterator[StreamedItem],
    fit: GadFitConfig,
    limit: int,
) -> list[StagedItem]:
    """Labelled items of classes a and b (others are skipped), validated (decoded once) and
    staged for whichever replica runs the fit."""
    stream_limit = services.settings.max_stream_images
    out: list[StagedItem] = []
    for item in items:
        if item.index >= stream_limit:
            raise LimitExceeded(f"at most {stream_limit} items per stream (max_stream_images)")
        where = f"items[{item.index}]"
        label = resolve_class(item.label, model, f"{where}.label")
        if label is None:
            raise InvalidInput(f"{where}.label is required: GAD fits on labelled images")
        if label not in (fit.class_a, fit.class_b):
            continue
        if len(out) >= limit:
            raise LimitExceeded(f"at most {limit} images of the two classes per fit")
        image = fit_to_input(
            decode_image(item.image, services.limits, f"{where}.image", model.input_size),
            model.preprocessing,
        )
        out.append(evaluation.stage_item(len(out), item.name, label, _as_staged(item, image), None))
    return out


def _no_items_after_dataset(items: Iterator[StreamedItem]) -> None:
    if next(items, None) is not None:
        raise InvalidInput("send either config.dataset or streamed items, not both")

