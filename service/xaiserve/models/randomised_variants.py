"""Randomised variants of a model version, and the model-parameter randomisation test
(Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018, Sec. 3.1).

:func:`randomised_variants` returns the cascading variants of a model version for one seed and
one number of stops (:mod:`xaiserve.runtime.parameter_randomisation` decides the layers, their
order, the stops and the distribution). Each variant is a :class:`RandomisedModel` — the same
``Model`` facade as the original, so every method runs on it unchanged:

* black-box methods call ``predict``: the variant's graph runs in its own onnxruntime session
  behind its own dynamic batcher, sharing the server's queued-image budget (admission) and
  metrics with every other model;
* white-box methods lease a PyTorch module rebuilt from the variant's graph (the original's
  operator-supplied module, if any, is not used: the variant is defined by the graph).

Sessions and modules are built on first use and kept: variants are cached per model version
(they die with the ``Model``), at most ``keep`` (seed, stops) sets per version, least recently
used first out. Memory: one randomised copy of the parameters per set (plus, once a white-box
method ran, the two converted modules the variant modules are assembled from), and one copy of
the weights per variant per backend used (onnxruntime session, one torch module).

:func:`randomisation_test` runs one method on the original and on every variant and returns
the similarity curve (:mod:`xaiserve.evaluation.randomisation`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from xaiserve.errors import FailedPrecondition, InvalidInput
from xaiserve.evaluation.randomisation import (
    MapSimilarity,
    RandomisationCurve,
    ReferenceMap,
    curve_from_similarities,
)
from xaiserve.methods.base import MethodSpec, Target
from xaiserve.models.config import MODEL_FILE
from xaiserve.models.model import Model
from xaiserve.runtime import context
from xaiserve.runtime.batcher import DynamicBatcher
from xaiserve.runtime.onnx_session import OnnxSession
from xaiserve.runtime.parameter_randomisation import (
    DISTRIBUTION,
    MAX_STOPS,
    RandomisationPlan,
    WeightedLayer,
    layer_stops,
    randomised_model,
    randomised_tensors,
    weighted_layers,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: (seed, stops) sets of variants kept per model version by default.
DEFAULT_KEEP = 2

__all__ = [
    "DEFAULT_KEEP",
    "DISTRIBUTION",
    "RandomisationOptions",
    "RandomisedModel",
    "StackedComparisons",
    "VariantSet",
    "layers_of",
    "randomisation_cost",
    "randomisation_plan",
    "randomisation_test",
    "randomised_variants",
    "variant_count",
]


@dataclass(frozen=True)
class RandomisationOptions:
    """What a caller asks of the randomisation test: ``stops`` (0 = the default stops, see
    :func:`~xaiserve.runtime.parameter_randomisation.layer_stops`) and the re-initialisation
    ``seed`` (default 0, so that requests share the cached variants)."""

    stops: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.stops <= MAX_STOPS:
            raise InvalidInput(
                f"randomisation.stops {self.stops} must be between 0 (default) and {MAX_STOPS}"
            )
        if not 0 <= self.seed < 2**64:
            raise InvalidInput(f"randomisation.seed {self.seed} must fit in 64 unsigned bits")


def randomisation_cost(
    model: Model, spec: MethodSpec, params: Any, options: RandomisationOptions
) -> int:
    """Forward passes of the variants' method calls (each variant is one full method call;
    the original map is not included)."""
    return variant_count(model, options.stops) * int(spec.cost(params, model.input_size))


class RandomisedModel(Model):
    """One cascading variant: the original ``Model`` with its top ``stop`` layers re-initialised.

    Built lazily: the onnxruntime session and batcher on the first ``predict``, the torch pool
    on the first ``torch_backend`` lease.
    """

    def __init__(self, owner: VariantSet, index: int) -> None:
        base = owner.base
        self._owner = owner
        self.index = index
        self.stop = owner.plan.stops[index]
        self._batcher_lock = threading.Lock()
        self._lazy_batcher: DynamicBatcher | None = None
        super().__init__(
            name=base.name,
            version=base.version,
            folder=base.folder,
            config=base.config,
            sha256=base.sha256,
            batcher=None,  # type: ignore[arg-type]  # built on first use (the property below)
            providers=list(base.providers),
            input_name=base.input_name,
            # One module copy per variant: the pool frees its template once its copies exist,
            # so a variant holds one copy of the weights (concurrent tests of one variant
            # wait for it, up to the pool's timeout).
            torch_copies=1,
            torch_batch_bytes=base.torch_batch_bytes,
        )

    @property
    def deepest_layer(self) -> WeightedLayer:
        return self._owner.plan.deepest_layer(self.stop)

    # The base class stores ``self.batcher`` in ``__init__``; a property makes it lazy.
    @property  # type: ignore[override]
    def batcher(self) -> DynamicBatcher:
        with self._batcher_lock:
            if self._lazy_batcher is None:
                self._lazy_batcher = self._owner.build_batcher(self.stop)
            return self._lazy_batcher

    @batcher.setter
    def batcher(self, value: DynamicBatcher | None) -> None:
        self._lazy_batcher = value

    @property
    def max_batch_size(self) -> int:
        return self.config.batching.max_batch_size

    def _torch_available(self) -> bool:
        try:
            import xaiserve.runtime.onnx_to_torch
            import xaiserve.runtime.torch_backend  # noqa: F401
        except ImportError:
            return False
        return True

    def _module_factory(self) -> Callable[[], torch.nn.Module]:
        return lambda: self._owner.torch_module(self.stop)

    def close(self) -> None:
        with self._batcher_lock:
            built, self._lazy_batcher = self._lazy_batcher, None
        if built is not None:
            built.close(timeout=5.0)


class VariantSet:
    """The cascading variants of one model version for one plan (seed and stops)."""

    def __init__(self, base: Model, plan: RandomisationPlan) -> None:
        self.base = base
        self.plan = plan
        self._lock = threading.Lock()
        self._proto: onnx.ModelProto | None = None
        self._tensors: dict[str, np.ndarray] | None = None
        self._modules: Any = None  # runtime.randomised_modules.CascadeModules, built on demand
        self.variants = [RandomisedModel(self, i) for i in range(len(plan.stops))]

    def __len__(self) -> int:
        return len(self.variants)

    def _sources(self) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        with self._lock:
            if self._proto is None or self._tensors is None:
                proto = _load_graph(self.base)
                self._tensors = randomised_tensors(proto, self.plan)
                self._proto = proto
            return self._proto, self._tensors

    def variant_proto(self, stop: int) -> onnx.ModelProto:
        """The variant graph with ``stop`` layers randomised (a fresh copy each call)."""
        proto, tensors = self._sources()
        return randomised_model(proto, self.plan, stop, tensors)

    def torch_module(self, stop: int) -> torch.nn.Module:
        """The PyTorch module of the variant with ``stop`` layers randomised (two graph
        conversions for the whole cascade; see :mod:`xaiserve.runtime.randomised_modules`)."""
        from xaiserve.runtime.randomised_modules import CascadeModules

        _, tensors = self._sources()
        with self._lock:
            if self._modules is None:
                self._modules = CascadeModules(
                    self.variant_proto,
                    max(self.plan.stops),
                    [{n: tensors[n] for n in layer.initializers} for layer in self.plan.layers],
                )
            modules = self._modules
        return modules.module(stop)  # type: ignore[no-any-return]

    def build_batcher(self, stop: int) -> DynamicBatcher:
        base = self.base
        data = self.variant_proto(stop).SerializeToString()
        session = OnnxSession(
            base.folder / MODEL_FILE,
            input_name=base.config.input.name,
            providers=tuple(base.providers),
            threads=base.intra_op_threads,
            model_bytes=data,
        )
        parent = base.batcher
        return DynamicBatcher(
            session.run,
            model=base.name,
            version=base.version,
            runtime=session.runtime,
            max_batch_size=parent.max_batch_size,
            max_queue_delay_s=parent.max_queue_delay_s,
            budget=parent.budget,
            metrics=parent._metrics,
        )

    def close(self) -> None:
        for variant in self.variants:
            variant.close()


def _load_graph(model: Model) -> onnx.ModelProto:
    path = model.folder / MODEL_FILE
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise FailedPrecondition(
            f"the ONNX graph of model {model.name!r} version {model.version!r} could not be "
            f"read for randomisation ({type(exc).__name__})"
        ) from exc


class _ModelCache:
    def __init__(self) -> None:
        self.layers: tuple[WeightedLayer, ...] | None = None
        self.sets: OrderedDict[tuple[int, tuple[int, ...]], VariantSet] = OrderedDict()


_CACHE: weakref.WeakKeyDictionary[Model, _ModelCache] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def _entry(model: Model) -> _ModelCache:
    with _CACHE_LOCK:
        entry = _CACHE.get(model)
        if entry is None:
            entry = _CACHE[model] = _ModelCache()
            weakref.finalize(model, entry_closer(entry))
        return entry


def entry_closer(entry: _ModelCache) -> Callable[[], None]:
    def close() -> None:
        for s in list(entry.sets.values()):
            s.close()

    return close


def layers_of(model: Model) -> tuple[WeightedLayer, ...]:
    """The weighted layers of ``model``'s graph, output first (read once per version)."""
    entry = _entry(model)
    with _CACHE_LOCK:
        if entry.layers is not None:
            return entry.layers
    try:
        layers = tuple(weighted_layers(_load_graph(model)))
    except ValueError as exc:
        raise FailedPrecondition(f"model {model.name!r}: {exc}") from exc
    if not layers:
        raise FailedPrecondition(
            f"model {model.name!r} version {model.version!r} has no parameter initializers to "
            "randomise (weights stored as Constant nodes are not supported)"
        )
    with _CACHE_LOCK:
        entry.layers = layers
    return layers


def randomisation_plan(model: Model, stops: int = 0, seed: int = 0) -> RandomisationPlan:
    """The plan for ``model`` (:class:`InvalidInput` for a number of stops out of range)."""
    layers = layers_of(model)
    try:
        chosen = layer_stops(len(layers), stops)
    except ValueError as exc:
        raise InvalidInput(f"randomisation.stops: {exc}") from None
    return RandomisationPlan(layers, chosen, int(seed))


def variant_count(model: Model, stops: int = 0) -> int:
    """How many variants a test with ``stops`` builds (for cost checks; O(1) once cached)."""
    return len(randomisation_plan(model, stops).stops)


def randomised_variants(
    model: Model, stops: int = 0, seed: int = 0, keep: int = DEFAULT_KEEP
) -> VariantSet:
    """The cached variants of ``model`` for (``seed``, ``stops``), built lazily."""
    plan = randomisation_plan(model, stops, seed)
    key = (plan.seed, plan.stops)
    entry = _entry(model)
    evicted: list[VariantSet] = []
    with _CACHE_LOCK:
        found = entry.sets.get(key)
        if found is not None:
            entry.sets.move_to_end(key)
            return found
        created = VariantSet(model, plan)
        entry.sets[key] = created
        while len(entry.sets) > max(1, keep):
            evicted.append(entry.sets.popitem(last=False)[1])
    for old in evicted:  # requests still holding an evicted set finish on it (lazy rebuild)
        _close_later(old)
    return created


def _close_later(variants: VariantSet, delay: float = 30.0) -> None:
    timer = threading.Timer(delay, variants.close)
    timer.daemon = True
    timer.start()


def randomisation_test(
    model: Model,
    spec: MethodSpec,
    params: Any,
    image: np.ndarray,
    target: Target,
    variants: VariantSet,
    original: np.ndarray | None = None,
) -> RandomisationCurve:
    """Run ``spec`` on the original ``model`` (unless its map is given as ``original``) and on
    every variant, for the same image, target and parameters (seeds included), and compare.

    The maps are compared in vectorised passes over stacks of maps
    (:meth:`ReferenceMap.similarities`), on this thread: small maps are stacked
    (:data:`BATCH_PIXELS`) so that the per-call overhead of the figures is shared (all the demo
    model's 64² maps in one pass after the last call), larger ones compared one by one as they
    come. Not on a helper thread: the method calls already keep every core busy (onnxruntime's
    and torch's intra-op threads), and a comparison beside them only slowed both (+5–8 % CPU on
    a ResNet-50 test, ``bench/sanity.py``).
    """
    ctx = context.current()
    base_map = (
        np.asarray(spec.explain(model, image, target, params).heatmap, np.float32)
        if original is None
        else np.asarray(original, np.float32)
    )
    reference = ReferenceMap(base_map)
    comparisons = StackedComparisons(reference)
    for variant in variants.variants:
        ctx.check()
        try:
            with _quiet_numpy():
                explained = spec.explain(variant, image, target, params)
            heatmap = np.asarray(explained.heatmap)
        except FailedPrecondition as exc:
            if "non-finite" not in str(exc):
                raise
            # a randomised network overflowed: no map, so no similarity (NaN)
            heatmap = np.full(base_map.shape, np.nan, np.float32)
        comparisons.add(heatmap)
    sims = comparisons.results()
    plan = variants.plan
    return curve_from_similarities(
        spec.name,
        reference,
        sims,
        plan.stops,
        [plan.deepest_layer(s).label for s in plan.stops],
        plan.total_layers,
    )


#: Pixels per similarity pass: smaller maps are stacked until they reach it, so that numpy's
#: per-call overhead is shared (one pass for all the demo model's 64² maps; one pass per map
#: for a 224² map).
BATCH_PIXELS = 2**16


class StackedComparisons:
    """Compares maps with a reference as they come, in stacks of at least
    :data:`BATCH_PIXELS` pixels (the last stack takes what is left), on the caller's thread."""

    def __init__(self, reference: ReferenceMap) -> None:
        self._reference = reference
        self.per_stack = max(1, BATCH_PIXELS // max(1, int(np.prod(reference.shape))))
        self.passes = 0
        self._pending: list[np.ndarray] = []
        self._done: list[MapSimilarity] = []

    def add(self, heatmap: np.ndarray) -> None:
        self._pending.append(heatmap)
        if len(self._pending) >= self.per_stack:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            stack = np.stack(self._pending)
            self._pending = []
            self.passes += 1
            with _quiet_numpy():
                self._done.extend(self._reference.similarities(stack))

    def results(self) -> list[MapSimilarity]:
        """The similarities of every added map, in order."""
        self._flush()
        return list(self._done)


@contextlib.contextmanager
def _quiet_numpy() -> Any:
    """A randomised network may overflow to inf/NaN; the similarity then says NaN."""
    with np.errstate(all="ignore"):
        yield
