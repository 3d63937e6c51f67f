"""``FitGad``: start fitting a GAD support set (config first, then labelled items, or a
server-side data-set folder), mirroring :mod:`xaiserve.api.operations_api`.

Everything that can be checked before the job starts is checked here, so a bad request fails
with its status at once: the model (and that it has a torch backend), the two classes
(``a ≠ b``, Section 4.1), the hyper-parameters, that the version folder is writable, that the
items carry labels and that both classes are present. Only images of classes ``a`` and ``b``
are kept. The operation (kind ``fit_gad``) runs :func:`xaiserve.jobs.gad_fitting.run_gad_fit`;
its result's ``support_set`` is the id to pass as ``GadParams.support_set``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from xaiserve.api import converters as conv
from xaiserve.errors import InvalidInput, LimitExceeded, Unimplemented
from xaiserve.jobs.datasets import DatasetItem, dataset_folder, folder_items
from xaiserve.jobs.gad_fitting import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_LEARNING_RATE,
    GadFitConfig,
    run_gad_fit,
)
from xaiserve.models.model import Model
from xaiserve.models.support_sets import SupportSetStore
from xaiserve.v1 import explain_pb2 as pb

if TYPE_CHECKING:
    from xaiserve.api.servicer import ExplainServicer

MAX_FIT_IMAGES = 5000
"""Images of classes a and b one fit may use (they are held in memory on the model's grid)."""


def start_gad_fit(servicer: ExplainServicer, requests: Iterator[pb.FitGadRequest]) -> pb.Operation:
    """Validate a ``FitGad`` stream and start the ``fit_gad`` operation (see module docs)."""
    first = next(requests, None)
    if first is None or first.WhichOneof("part") != "config":
        raise InvalidInput("the first FitGadRequest must carry config")
    config = first.config
    model = servicer.repository.get(config.model, config.version)
    if "torch" not in model.backends:
        raise Unimplemented(f"GAD needs the torch backend, which model {model.name!r} lacks")
    fit = fit_config(config, model)
    SupportSetStore(model.folder).check_writable()
    limit = min(MAX_FIT_IMAGES, servicer.settings.max_stream_images)
    if config.dataset:
        folder = dataset_folder(servicer.settings.datasets_dir, config.dataset)
        rows, _ = folder_items(
            folder, model.labels, servicer.limits, servicer.settings.max_stream_images
        )
        for row in rows:
            if row.label is None:
                raise InvalidInput(
                    f"data set {config.dataset!r}: {row.name!r} has no label; GAD needs labels"
                )
        items = [r for r in rows if r.label in (fit.class_a, fit.class_b)][:limit]
        if next(requests, None) is not None:
            raise InvalidInput("send either config.dataset or streamed items, not both")
    else:
        items = _streamed_items(requests, model, servicer, fit, limit)
    counts = [sum(1 for i in items if i.label == k) for k in (fit.class_a, fit.class_b)]
    if min(counts) == 0:
        raise InvalidInput(
            f"the data set needs images of both classes: it has {counts[0]} of class "
            f"{fit.class_a} ({model.labels[fit.class_a]}) and {counts[1]} of class "
            f"{fit.class_b} ({model.labels[fit.class_b]})"
        )
    op = servicer.operations.start(
        "fit_gad",
        lambda handle: run_gad_fit(model, items, fit, handle),
        total=len(fit.alphas) * fit.epochs,
        message=(
            f"GAD support set for {model.labels[fit.class_a]} vs {model.labels[fit.class_b]} "
            f"on {model.name}/{model.version}: {len(items)} images, {len(fit.alphas)} α × "
            f"{fit.epochs} epochs"
        ),
    )
    return op.to_proto()


def fit_config(config: pb.FitGadConfig, model: Model) -> GadFitConfig:
    """``FitGadConfig`` → :class:`GadFitConfig` (unset fields take the paper's defaults)."""
    a = conv.resolve_class(config.class_a, model, "config.class_a")
    b = conv.resolve_class(config.class_b, model, "config.class_b")
    if a is None or b is None:
        raise InvalidInput("config.class_a and config.class_b must name classes (index or label)")
    if a == b:
        raise InvalidInput(f"config.class_a and config.class_b are both {model.labels[a]!r}")
    return GadFitConfig(
        class_a=a,
        class_b=b,
        alphas=tuple(config.alphas),
        epochs=config.epochs if config.HasField("epochs") else DEFAULT_EPOCHS,
        learning_rate=(
            config.learning_rate if config.HasField("learning_rate") else DEFAULT_LEARNING_RATE
        ),
        batch_size=config.batch_size if config.HasField("batch_size") else DEFAULT_BATCH_SIZE,
        seed=config.seed if config.HasField("seed") else 0,
    )


def _streamed_items(
    requests: Iterator[pb.FitGadRequest],
    model: Model,
    servicer: ExplainServicer,
    fit: GadFitConfig,
    limit: int,
) -> list[DatasetItem]:
    """Labelled items of classes a and b (others are skipped), decoded onto the model grid."""
    items: list[DatasetItem] = []
    for i, request in enumerate(requests):
        if request.WhichOneof("part") != "item":
            raise InvalidInput(f"message {i + 1} after the config must be an item")
        if i >= servicer.settings.max_stream_images:
            raise LimitExceeded(
                f"at most {servicer.settings.max_stream_images} items per stream "
                "(max_stream_images)"
            )
        item = request.item
        label = conv.resolve_class(item.label, model, f"items[{i}].label")
        if label is None:
            raise InvalidInput(f"items[{i}].label is required: GAD fits on labelled images")
        if label not in (fit.class_a, fit.class_b):
            continue
        if len(items) >= limit:
            raise LimitExceeded(f"at most {limit} images of the two classes per fit")
        image = conv.model_image(item.image, model, servicer.limits, f"items[{i}].image")
        items.append(DatasetItem(item.name or str(i), _constant(image), label, None))
    return items


def _constant(value: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: value
