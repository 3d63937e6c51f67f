"""Support sets as models: the support regression networks of a fitted GAD support set, each
presented as a :class:`~xaiserve.contracts.models.WhiteBoxModel` so gradient methods run on them
unchanged (Mazini Rodrigues et al., Sections 4.2–4.3).

``Model.support_set(id)`` loads a set once per model version and keeps it while the ``Model``
lives; every support network sits behind its own :class:`TorchModelPool`.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from xaiserve.contracts.images import ImageBatch, OutputSpace
from xaiserve.contracts.models import TorchBackend
from xaiserve.errors import FailedPrecondition
from xaiserve.models.model import Model, softmax
from xaiserve.models.support_sets import (
    SupportSetRecord,
    SupportSetStore,
    logit_module,
    support_module_factory,
)
from xaiserve.runtime.torch_backend import TorchModelPool


class SupportModel:
    """A support regression network as a :class:`WhiteBoxModel` (a thin adapter, so the
    gradient methods of :mod:`xaiserve.methods.gradients` run on it unchanged). It holds no
    reference to the owning ``Model``, so the cache entry dies with it."""

    def __init__(
        self,
        input_size: tuple[int, int],
        num_classes: int,
        pool: TorchModelPool,
        alpha: float | None,
    ) -> None:
        self._input_size = input_size
        self._num_classes = num_classes
        self.pool = pool
        self.alpha = alpha

    @property
    def input_size(self) -> tuple[int, int]:
        return self._input_size

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def output_kind(self) -> Literal["logits", "probabilities"]:
        return "logits"  # Section 4.2: a linear output replaces the softmax

    def predict(
        self, images: ImageBatch | Iterable[ImageBatch], output: OutputSpace = "probabilities"
    ) -> np.ndarray:
        chunks: Iterable[np.ndarray] = (images,) if isinstance(images, np.ndarray) else images
        outs = []
        with self.pool.lease() as lease, torch.no_grad():
            for chunk in chunks:
                outs.append(lease.module(lease.to_input(chunk)).cpu().numpy())
        raw = np.concatenate(outs).astype(np.float32)
        return softmax(raw) if output == "probabilities" else raw

    def torch_backend(self) -> contextlib.AbstractContextManager[TorchBackend]:
        return self.pool.lease()


@dataclass
class LoadedSupportSet:
    """A support set ready to explain with: its record, the linear-output copy of the original
    network for probability models (``None``: explain the model itself) and one model per α."""

    record: SupportSetRecord
    original: SupportModel | None
    supports: list[SupportModel]


_CACHE: weakref.WeakKeyDictionary[Model, dict[str, LoadedSupportSet]] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def load_support_set(model: Model, set_id: str) -> LoadedSupportSet:
    """The support set ``set_id`` of this model version, loaded once and cached while ``model``
    lives (:class:`~xaiserve.errors.NotFound` naming it when it does not exist)."""
    with _CACHE_LOCK:
        cached = _CACHE.get(model, {}).get(set_id)
    if cached is not None:
        return cached
    store = SupportSetStore(model.artifact_folder)
    record = store.get(set_id)
    if record.model_sha256 and record.model_sha256 != model.sha256:
        raise FailedPrecondition(
            f"support set {set_id!r} was fitted on another model file "
            f"(sha256 {record.model_sha256[:12]}…, this version has {model.sha256[:12]}…)"
        )
    prep, copies = model.preprocessing, model.torch_copies

    def pool(factory: Any) -> TorchModelPool:
        return TorchModelPool(factory, prep, copies=copies)

    size, n = model.input_size, model.num_classes
    original = None
    if model.output_kind == "probabilities":
        build = model.torch_module_factory()
        original = SupportModel(size, n, pool(lambda: logit_module(build(), "probabilities")), None)
    supports = [
        SupportModel(size, n, pool(support_module_factory(model, store, record, a)), a)
        for a in record.alphas
    ]
    loaded = LoadedSupportSet(record, original, supports)
    with _CACHE_LOCK:
        return _CACHE.setdefault(model, {}).setdefault(set_id, loaded)
