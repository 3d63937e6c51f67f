"""The shared segmentation service: a label cache, a bounded worker pool and a device.

Methods that cut an image into regions (regional prediction difference, contextual importance)
ask the process-wide :class:`Segmenter` (:func:`shared_segmenter`) for *products* instead of
calling scikit-image themselves:

- :class:`Superpixels` — one superpixel call with the request's parameters;
- :class:`ExactRegions` — exactly ``n`` regions (:func:`~xaiserve.imaging.exact_regions.
  exact_superpixels`; its SLIC calls are :class:`Superpixels` products, so they are cached too);
- :class:`Prior` — Seo et al.'s boundary prior (Algorithm 3 line 2) on :class:`ExactRegions`
  at ``2^8``;
- :class:`NestedScales` — ``2^1 … 2^r`` regions merged from the ``2^8`` regions
  (:func:`~xaiserve.imaging.exact_regions.nested_scales`), the ``segmentation.nested`` option.

Any object with ``kind``, ``key()`` and ``compute()`` is a product: the regional prediction
difference caches its seeded per-scale noise draws this way (``ExclusionScatter``, kind
``noise``). On the CPU, SLIC calls of one image share its prepared input (CIELAB, smoothing:
:func:`~xaiserve.imaging.segmentation.slic_input`) through a few-entry side cache.

Three things happen behind that interface:

1. **Cache.** Every product is looked up in a :class:`~xaiserve.imaging.segmentation_cache.
   SegmentationCache` under (image digest, device, product key) first, so the same image
   segmented again — another target, another method, ``compare``, a data-set evaluation —
   costs a hash. Concurrent requests for a product being computed join that computation
   (single flight) instead of starting their own.
2. **Bounded pool.** Misses run in a pool of ``segmentation_workers`` threads, so segmentation
   uses at most that many cores however many requests arrive, and a request's segmentation
   runs beside the forward passes of its own earlier scales and of other requests. Dependencies
   inside a product (an exact count needs superpixels; the prior needs the exact count) run in
   the same worker thread; a worker never waits for a queued task (it runs it itself), so a
   pool of one cannot deadlock.
3. **Deadlines and cancellation.** :meth:`Ticket.result` waits in slices of 0.1 s and calls the
   request scope's ``check()`` (the server binds the RPC's deadline and cancellation), raising
   its ``DeadlineExceeded``/``Cancelled``. A queued task that no request waits for any more is
   dropped before it starts (``segmentation_dropped``); a running one finishes into the cache.

The device is ``cpu`` (scikit-image, the default) or ``gpu`` (:mod:`xaiserve.imaging.gpu_slic`,
SLIC only). The GPU path is opt-in and **not yet verified on a real GPU** (no CUDA machine has
run it in CI; its tests run the same tensor code on torch's CPU tensors), so it is never taken
silently: ``gpu``, or ``auto`` on a machine with CUDA, first runs :func:`~xaiserve.imaging.
gpu_slic.self_check` (torch SLIC on CUDA against scikit-image on a bundled photograph,
adjusted Rand index ≥ 0.9) and logs a warning either way; a failed check, ``gpu`` without
CUDA, or a GPU failure at run time logs a warning and moves this segmenter to the CPU for good
(``segmentation_device_fallbacks``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from xaiserve.imaging.exact_regions import (
    BoundaryPrior,
    boundary_prior,
    exact_superpixels,
    nested_scales,
)
from xaiserve.imaging.segmentation import (
    SegmentationParams,
    slic_input,
    split_slic_usable,
    superpixels,
)
from xaiserve.imaging.segmentation_cache import SegmentationCache, image_digest, unpack

if TYPE_CHECKING:
    from xaiserve.observability import Metrics

log = logging.getLogger(__name__)

Device = Literal["cpu", "gpu"]
DeviceSetting = Literal["auto", "cpu", "gpu"]

DEFAULT_CACHE_BYTES = 256 << 20
"""Default bound of the cache (``segmentation_cache_bytes``): ≈ 5000 label maps of 224²."""

WAIT_SLICE_S = 0.1
"""A waiting request checks its deadline and cancellation this often."""

SLIC_INPUTS_PER_WORKER = 2
"""Prepared SLIC inputs kept per worker (:class:`_SlicInputs`)."""


class _SlicInputs:
    """The few most recent :func:`~xaiserve.imaging.segmentation.slic_input` arrays.

    One image is clustered at six or more counts by the same workers within moments (its
    products are queued together), so a handful of prepared inputs — ``capacity`` entries, each
    ``H·W·3`` float64 (1.2 MB at 224²), outside ``segmentation_cache_bytes`` — lets every count
    after the first skip the CIELAB conversion and smoothing. Values are read-only.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, key: Hashable, make: Callable[[], np.ndarray]) -> np.ndarray:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return found
        value = make()  # outside the lock; two workers may race on a new image (both correct)
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)


def default_workers() -> int:
    """Half the cores, at least one: segmentation never takes all of them from inference."""
    return max(1, (os.cpu_count() or 1) // 2)


class RequestScope(Protocol):
    """What a waiting request is checked against (``runtime.context.RequestContext`` fits)."""

    def check(self) -> None:
        """Raise if the request was cancelled or its deadline passed."""
        ...

    def remaining(self) -> float | None:
        """Seconds left before the deadline, ``None`` without one."""
        ...


class _Unbounded:
    """The scope of library use without a server: no deadline, never cancelled."""

    def check(self) -> None:
        return None

    def remaining(self) -> float | None:
        return None


@dataclass(frozen=True)
class SegImage:
    """An image ``(H, W, 3)`` float32 on 0..255 and its content digest (computed once)."""

    pixels: np.ndarray
    digest: bytes

    @classmethod
    def of(cls, image: np.ndarray) -> SegImage:
        pixels = np.ascontiguousarray(image, dtype=np.float32)
        return cls(pixels, image_digest(pixels))


class Product(Protocol):
    """Something the segmenter computes from an image and caches."""

    @property
    def kind(self) -> str:
        """The metrics label: ``superpixels``, ``exact``, ``prior`` or ``nested``."""
        ...

    def key(self) -> Hashable: ...

    def compute(self, segmenter: Segmenter, image: SegImage) -> Any: ...


@dataclass(frozen=True)
class Superpixels:
    """One call of the chosen superpixel algorithm (``params.n_segments`` for SLIC)."""

    params: SegmentationParams
    kind: str = "superpixels"

    def key(self) -> Hashable:
        return self.params.algorithm_key(with_count=True)

    def compute(self, segmenter: Segmenter, image: SegImage) -> np.ndarray:
        return segmenter.run_superpixels(image.pixels, self.params, image.digest)


@dataclass(frozen=True)
class ExactRegions:
    """Exactly ``n`` regions (over-segment, merge, split: ``exact_superpixels``)."""

    n: int
    params: SegmentationParams
    kind: str = "exact"

    def key(self) -> Hashable:
        return (self.n, self.params.algorithm_key(with_count=False))

    def compute(self, segmenter: Segmenter, image: SegImage) -> np.ndarray:
        return exact_superpixels(
            image.pixels,
            self.n,
            self.params,
            segment=lambda p: segmenter.inline(image, Superpixels(p)),
        )


@dataclass(frozen=True)
class Prior:
    """Seo et al.'s boundary prior on ``n`` exact regions (Algorithm 3 line 2)."""

    n: int
    params: SegmentationParams
    bandwidth: float | None = None
    kind: str = "prior"

    def key(self) -> Hashable:
        return (self.n, self.params.algorithm_key(with_count=False), self.bandwidth)

    def compute(self, segmenter: Segmenter, image: SegImage) -> BoundaryPrior:
        labels = segmenter.inline(image, ExactRegions(self.n, self.params))
        return boundary_prior(image.pixels, labels, self.bandwidth)


@dataclass(frozen=True)
class NestedScales:
    """``2^1 … 2^scales`` regions merged from the ``finest`` exact regions (a tuple of maps)."""

    finest: int
    scales: int
    params: SegmentationParams
    kind: str = "nested"

    def key(self) -> Hashable:
        return (self.finest, self.scales, self.params.algorithm_key(with_count=False))

    def compute(self, segmenter: Segmenter, image: SegImage) -> tuple[np.ndarray, ...]:
        finest = segmenter.inline(image, ExactRegions(self.finest, self.params))
        return tuple(nested_scales(image.pixels, finest, self.scales))


class _Flight:
    """A product being computed: its future, who claimed it, how many requests wait on it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.future: Future[Any] = Future()
        self.claimed = False
        self.waiters = 0


class Ticket:
    """A request's claim on a product: :meth:`result` waits, :meth:`release` gives it up."""

    def __init__(
        self,
        segmenter: Segmenter,
        key: Hashable,
        flight: _Flight | None,
        value: Any = None,
    ) -> None:
        self._segmenter = segmenter
        self._key = key
        self._flight = flight
        self._value = value
        self._released = flight is None

    def done(self) -> bool:
        return self._flight is None or self._flight.future.done()

    def result(self, scope: RequestScope | None = None) -> Any:
        """The product (label maps as fresh int32 arrays), waiting while checking ``scope``."""
        if self._flight is None:
            return unpack(self._value)
        scope = scope if scope is not None else self._segmenter.scope()
        future = self._flight.future
        started = time.perf_counter()
        try:
            while True:
                remaining = scope.remaining()
                timeout = (
                    WAIT_SLICE_S if remaining is None else max(0.0, min(WAIT_SLICE_S, remaining))
                )
                try:
                    value = future.result(timeout=timeout)
                    break
                except FutureTimeout:
                    scope.check()
        except BaseException:
            self.release(abandoned=True)
            raise
        finally:
            self._segmenter.observe_wait(time.perf_counter() - started)
        self.release()
        return unpack(value)

    def release(self, abandoned: bool = False) -> None:
        """Stop waiting; a queued product nobody waits for any more is dropped."""
        if self._released or self._flight is None:
            return
        self._released = True
        self._segmenter.leave(self._key, self._flight, abandoned)


class Segmenter:
    """Cache + bounded pool + device; see the module docstring."""

    def __init__(
        self,
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        workers: int = 0,
        device: DeviceSetting = "cpu",
        metrics: Metrics | None = None,
        scope: Callable[[], RequestScope] | None = None,
    ) -> None:
        if workers < 0:
            raise ValueError("segmentation workers must not be negative")
        self.metrics = metrics
        self.workers = workers or default_workers()
        self.device: Device = resolve_device(device)
        self._scope = scope if scope is not None else _Unbounded
        self._lock = threading.Lock()
        self._flights: dict[Hashable, _Flight] = {}
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="segment")
        self.cache = SegmentationCache(cache_bytes, on_evict=self._evicted)
        self.slic_inputs = _SlicInputs(SLIC_INPUTS_PER_WORKER * self.workers)
        self.hits = 0
        self.misses = 0
        self.computed = 0
        self.dropped = 0
        self._publish_size()
        if self.device == "gpu":
            self._verify_gpu()

    # -- the interface methods use -------------------------------------------------------------
    def image(self, pixels: np.ndarray) -> SegImage:
        """Hash ``pixels`` once per request (every product of the image shares the digest)."""
        return SegImage.of(pixels)

    def scope(self) -> RequestScope:
        return self._scope()

    def request(self, image: SegImage, product: Product) -> Ticket:
        """Look ``product`` up; on a miss start it in the pool. Never blocks."""
        key = self._key(image, product)
        start = False
        with self._lock:
            found, value = self.cache.get(key)
            if found:
                self._count(product.kind, hit=True)
                return Ticket(self, key, None, value)
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = _Flight(product.kind)
                start = True
            self._count(product.kind, hit=not start)
            flight.waiters += 1
        if start:
            self._pool.submit(self._run_queued, key, flight, image, product, time.perf_counter())
        return Ticket(self, key, flight)

    def get(self, image: SegImage, product: Product, scope: RequestScope | None = None) -> Any:
        """``request(image, product).result(scope)``."""
        return self.request(image, product).result(scope)

    def inline(self, image: SegImage, product: Product) -> Any:
        """Inside a computation: the product now, computed in this thread if nobody is at it."""
        key = self._key(image, product)
        with self._lock:
            found, value = self.cache.get(key)
            if found:
                self._count(product.kind, hit=True)
                return unpack(value)
            flight = self._flights.get(key)
            if flight is None:
                self._count(product.kind, hit=False)
                flight = self._flights[key] = _Flight(product.kind)
            else:
                self._count(product.kind, hit=True)
            mine = not flight.claimed
            flight.claimed = True
        if mine:
            self._compute(key, flight, image, product)
        return unpack(flight.future.result())

    def start_workers(self, timeout: float = 1.0) -> None:
        """Start every worker thread now (model warm-up): the pool otherwise starts them one
        per product queued while all are busy, on a request's clock. Each start-up task waits
        (at most ``timeout``) until all are running, so no thread picks up two of them."""
        meeting = threading.Barrier(self.workers)

        def meet() -> None:
            with contextlib.suppress(threading.BrokenBarrierError):
                meeting.wait(timeout)

        for started in [self._pool.submit(meet) for _ in range(self.workers)]:
            started.result()

    # -- pool side -----------------------------------------------------------------------------
    def _run_queued(
        self, key: Hashable, flight: _Flight, image: SegImage, product: Product, queued: float
    ) -> None:
        with self._lock:
            if flight.claimed or flight.future.cancelled():
                return
            flight.claimed = True
        if self.metrics is not None:
            self.metrics.segmentation_queue_seconds.observe(time.perf_counter() - queued)
        self._compute(key, flight, image, product)

    def _compute(self, key: Hashable, flight: _Flight, image: SegImage, product: Product) -> None:
        started = time.perf_counter()
        try:
            value = product.compute(self, image)
        except BaseException as exc:
            with self._lock:
                self._flights.pop(key, None)
            flight.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        seconds = time.perf_counter() - started
        with self._lock:
            stored = self.cache.put(key, value)
            self._flights.pop(key, None)
            self.computed += 1
        flight.future.set_result(stored)
        if self.metrics is not None:
            self.metrics.segmentation_seconds.labels(product.kind, self.device).observe(seconds)
        self._publish_size()

    def leave(self, key: Hashable, flight: _Flight, abandoned: bool) -> None:
        """A request stops waiting for ``flight``; drop it if queued and nobody else waits."""
        drop = False
        with self._lock:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.claimed and not flight.future.done():
                drop = flight.future.cancel()
                if self._flights.get(key) is flight:
                    del self._flights[key]
        if drop:
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.segmentation_dropped.inc()

    # -- devices -------------------------------------------------------------------------------
    def run_superpixels(
        self, pixels: np.ndarray, params: SegmentationParams, digest: bytes | None = None
    ) -> np.ndarray:
        """One superpixel call on this segmenter's device (GPU for SLIC, else scikit-image).

        On the CPU, SLIC calls of the image with content ``digest`` share its prepared input
        (:class:`_SlicInputs`): the same labels as ``slic`` called whole.
        """
        if self.device == "gpu" and params.algorithm == "slic":
            from xaiserve.imaging import gpu_slic

            try:
                return gpu_slic.superpixels(pixels, params)
            except Exception as exc:
                self.fall_back(f"GPU SLIC failed ({type(exc).__name__}: {exc})")
        if digest is not None and params.algorithm == "slic" and split_slic_usable():
            prepared = self.slic_inputs.get(
                (digest, params.sigma, params.compactness),
                lambda: slic_input(pixels, params),
            )
            return superpixels(pixels, params, prepared)
        return superpixels(pixels, params)

    def _verify_gpu(self) -> None:
        """Check the GPU SLIC against scikit-image before using it (never silently)."""
        from xaiserve.imaging import gpu_slic

        why = gpu_slic.self_check()
        if why is not None:
            self.fall_back(why)
            return
        log.warning(
            "segmentation on the GPU (xaiserve.imaging.gpu_slic): it agreed with scikit-image "
            "on the start-up check, but this path has not been verified on GPUs in CI; set "
            "segmentation_device=cpu to segment with scikit-image"
        )

    def fall_back(self, why: str) -> None:
        """Move to the CPU for good, with a warning and a metric."""
        with self._lock:
            if self.device == "cpu":
                return
            self.device = "cpu"
        log.warning("segmentation falls back to the CPU: %s", why)
        if self.metrics is not None:
            self.metrics.segmentation_device_fallbacks.inc()

    # -- bookkeeping ---------------------------------------------------------------------------
    def _key(self, image: SegImage, product: Product) -> Hashable:
        return (image.digest, self.device, product.kind, product.key())

    def _count(self, kind: str, hit: bool) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        if self.metrics is not None:
            counter = (
                self.metrics.segmentation_cache_hits
                if hit
                else self.metrics.segmentation_cache_misses
            )
            counter.labels(kind).inc()

    def _evicted(self, n: int) -> None:
        if self.metrics is not None:
            self.metrics.segmentation_cache_evictions.inc(n)

    def _publish_size(self) -> None:
        if self.metrics is not None:
            self.metrics.segmentation_cache_bytes.set(self.cache.bytes)
            self.metrics.segmentation_cache_entries.set(len(self.cache))

    def observe_wait(self, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.segmentation_wait_seconds.observe(seconds)

    def close(self) -> None:
        """Stop the pool (queued products are dropped; running ones finish)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def resolve_device(setting: str) -> Device:
    """``cpu``/``gpu``/``auto`` → the device used; ``gpu`` without CUDA warns and gives ``cpu``."""
    if setting == "cpu":
        return "cpu"
    if setting not in ("auto", "gpu"):
        raise ValueError(f"segmentation device {setting!r} is unknown; choose auto, cpu or gpu")
    from xaiserve.imaging import gpu_slic

    why = gpu_slic.unavailable_reason()
    if why is None:
        return "gpu"
    if setting == "gpu":
        log.warning("segmentation_device is gpu but %s: segmenting on the CPU", why)
    else:
        log.info("segmentation on the CPU (%s)", why)
    return "cpu"


_shared: Segmenter | None = None
_shared_lock = threading.Lock()


def shared_segmenter() -> Segmenter:
    """The process-wide segmenter (the server installs its own with :func:`install_segmenter`)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Segmenter()
        return _shared


def install_segmenter(segmenter: Segmenter) -> Segmenter | None:
    """Make ``segmenter`` the process-wide one; returns the previous one (not closed)."""
    global _shared
    with _shared_lock:
        previous, _shared = _shared, segmenter
    return previous


def uninstall_segmenter(segmenter: Segmenter) -> None:
    """If ``segmenter`` is the process-wide one, forget it (the next use builds a default)."""
    global _shared
    with _shared_lock:
        if _shared is segmenter:
            _shared = None
