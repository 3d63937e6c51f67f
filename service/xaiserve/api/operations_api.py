"""Starting long-running operations from client-streaming RPCs (config first, then items)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from xaiserve.api import converters as conv
from xaiserve.api.scoring import morf_params
from xaiserve.errors import InvalidInput, LimitExceeded
from xaiserve.evaluation.morf import morf_cost
from xaiserve.jobs.dataset_evaluation import MethodRun, evaluate_dataset
from xaiserve.jobs.datasets import DatasetItem, dataset_folder, folder_items
from xaiserve.models.model import Model
from xaiserve.v1 import explain_pb2 as pb

if TYPE_CHECKING:
    from xaiserve.api.servicer import ExplainServicer

MAX_METHODS = 16


def start_dataset_evaluation(
    servicer: ExplainServicer, requests: Iterator[pb.EvaluateDatasetRequest]
) -> pb.Operation:
    first = next(requests, None)
    if first is None or first.WhichOneof("part") != "config":
        raise InvalidInput("the first EvaluateDatasetRequest must carry config")
    config = first.config
    model = servicer.repository.get(config.model, config.version)
    if not config.methods:
        raise InvalidInput("config.methods is empty: name at least one method")
    if len(config.methods) > MAX_METHODS:
        raise InvalidInput(
            f"config.methods has {len(config.methods)} entries; the limit is {MAX_METHODS}"
        )
    runs = []
    for i, params in enumerate(config.methods):
        resolved = servicer.resolve_method(model, params, f"config.methods[{i}]")
        runs.append(MethodRun(resolved.spec.name, resolved.spec, resolved.params))
    if len({r.name for r in runs}) != len(runs):
        raise InvalidInput("config.methods names a method twice")
    morf = morf_params(config.morf)
    limit = min(
        config.limit if config.HasField("limit") else servicer.settings.max_stream_images,
        servicer.settings.max_stream_images,
    )
    if config.dataset:
        folder = dataset_folder(servicer.settings.datasets_dir, config.dataset)
        items, _ = folder_items(folder, model.labels, servicer.limits, limit)
        if next(requests, None) is not None:
            raise InvalidInput("send either config.dataset or streamed items, not both")
    else:
        items = _streamed_items(requests, model, servicer, limit)
    if not items:
        raise InvalidInput(
            "the data set is empty: stream items after the config or name config.dataset"
        )
    per_image = sum(
        r.spec.cost(r.params, model.input_size) + morf_cost(morf, model.input_size) for r in runs
    )
    if per_image > servicer.settings.max_forward_passes:
        raise LimitExceeded(
            f"each image needs {per_image} forward passes, over max_forward_passes "
            f"({servicer.settings.max_forward_passes}): lower morf.steps/repeats or method costs"
        )
    op = servicer.operations.start(
        "evaluate_dataset",
        lambda handle: evaluate_dataset(model, items, runs, morf, handle),
        total=len(items),
        message=f"{len(items)} images × {len(runs)} methods on {model.name}/{model.version}",
    )
    return op.to_proto()


def _streamed_items(
    requests: Iterator[pb.EvaluateDatasetRequest],
    model: Model,
    servicer: ExplainServicer,
    limit: int,
) -> list[DatasetItem]:
    items: list[DatasetItem] = []
    for i, request in enumerate(requests):
        if request.WhichOneof("part") != "item":
            raise InvalidInput(f"message {i + 1} after the config must be an item")
        if len(items) >= limit:
            raise LimitExceeded(
                f"at most {limit} items per operation (max_stream_images or config.limit)"
            )
        item = request.item
        image = conv.image_from_proto(item.image, servicer.limits, f"items[{i}].image")
        label = conv.resolve_class(item.label, model, f"items[{i}].label")
        mask = None
        if item.HasField("mask"):
            t = item.mask
            from xaiserve.imaging.decode import decode_heatmap

            h, w = image.shape[:2]
            m = decode_heatmap(t.dtype, list(t.shape), t.data, h, w, f"items[{i}].mask") > 0
            mask = m
        items.append(
            DatasetItem(
                name=item.name or str(i),
                load=_constant(image),
                label=label,
                load_mask=_constant(mask) if mask is not None else None,
            )
        )
    return items


def _constant(value: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: value
