"""Dynamic batching with admission control counted in images.

Concurrent requests' images merge into shared forward passes (up to ``max_batch_size`` images,
waiting at most ``max_queue_delay`` for a batch to fill). Admission is our own, not gRPC's
``maximum_concurrent_rpcs``: an :class:`ImageBudget` bounds the images queued across all models;
a request whose first chunk does not fit is refused at once with RESOURCE_EXHAUSTED, while a
request already admitted waits for room for its later chunks (it holds at most a couple of
chunks, so memory stays bounded). Items whose deadline passed or whose client cancelled are
dropped before a batch forms. A failed batch is retried item by item, so one bad request
cannot fail its neighbours — unless the runner raises a domain error (a remote backend that is
unavailable or answers with the wrong shape), which every request of the batch receives as is.

``workers`` threads take batches from the queue (for a local session ``inference_workers``,
1 by default since the session parallelises inside; the remote backend's ``max_concurrency``
for a remote server).

Interactive lane: with an ``interactive_runner`` (a small second session of the same graph),
interactive requests (Predict) get a thread of their own. Their images never wait for a running
batch of explanation work, nor share its forward pass: under 64 explanation clients a Predict
otherwise waited for the running 64-image batch (queue ≈ 37 ms) and then rode in the next one
(≈ 59 ms). While no explanation batch runs or waits, the lane uses the main runner (all its
threads), so an idle server answers as fast as before. The runner sees a bound
request context whose deadline is the latest of the batch's requests, and a ``forward_pass``
span whose parent is the first request's trace (the others are links); the forward-pass
histogram's observations carry that trace id as an exemplar.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xaiserve import tracing
from xaiserve.errors import Cancelled, DeadlineExceeded, Overloaded, Unavailable, XaiserveError
from xaiserve.observability import Metrics, batch_bucket
from xaiserve.runtime import context
from xaiserve.runtime.context import RequestContext
from xaiserve.runtime.priority import lower_current_thread

log = logging.getLogger(__name__)


class InferenceFailed(XaiserveError):
    """The network failed on this item even when run alone (the log has the cause)."""


class ImageBudget:
    """The shared bound on queued images (``max_queued_images``)."""

    INTERACTIVE_RESERVE = 256
    """Images an interactive request (Predict) may queue beyond ``capacity``, so that a queue
    full of explanation work never refuses the cheap calls."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._used = 0
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        return self._used

    def try_acquire(self, n: int, interactive: bool = False) -> bool:
        limit = self.capacity + (self.INTERACTIVE_RESERVE if interactive else 0)
        with self._cond:
            if self._used + n > limit and self._used > 0:
                return False
            self._used += n
            return True

    def acquire(self, n: int, ctx: RequestContext) -> None:
        """Wait for room (an admitted request's later chunk), until deadline or cancellation."""
        with self._cond:
            while self._used + n > self.capacity and self._used > 0:
                ctx.check()
                remaining = ctx.remaining()
                self._cond.wait(0.05 if remaining is None else max(0.0, min(0.05, remaining)))
            self._used += n

    def release(self, n: int) -> None:
        with self._cond:
            self._used -= n
            self._cond.notify_all()


@dataclass(eq=False)
class _Item:
    x: np.ndarray
    ctx: RequestContext
    enqueued: float
    future: Future[np.ndarray] = field(default_factory=Future)
    trace: Any = None  # the submitting thread's OpenTelemetry context
    interactive: bool = False  # queued in the urgent queue (a Predict)
    taken: int = 0
    done: int = 0
    out: np.ndarray | None = None


Runner = Callable[[np.ndarray], np.ndarray]

ALL, BULK, INTERACTIVE = "all", "bulk", "interactive"
"""Lanes a worker thread serves: both queues (urgent first), or one of them."""


class DynamicBatcher:
    """One worker thread per model version feeding ``runner`` with merged batches."""

    def __init__(
        self,
        runner: Runner,
        *,
        model: str,
        version: str,
        runtime: str,
        max_batch_size: int,
        max_queue_delay_s: float,
        budget: ImageBudget,
        metrics: Metrics,
        workers: int = 1,
        interactive_runner: Runner | None = None,
    ) -> None:
        self.runner = runner
        self.interactive_runner = interactive_runner
        self.max_batch_size = max_batch_size
        self.workers = max(1, workers)  # bulk lanes: batches that run at once
        self.max_queue_delay_s = max_queue_delay_s
        self.budget = budget
        self._labels = {"model": model, "version": version}
        self._runtime = runtime
        self._metrics = metrics
        self._queue: deque[_Item] = deque()
        self._urgent: deque[_Item] = deque()  # interactive requests' items go first
        self._pending = {False: 0, True: 0}  # images waiting, by interactive
        self._active = {False: 0, True: 0}  # requests using the model, by interactive
        self._bulk_running = 0  # explanation batches in a forward pass now
        self._cond = threading.Condition()
        self._closed = False
        self._deliver_lock = threading.Lock()
        lane = ALL if interactive_runner is None else BULK
        self._threads = [
            threading.Thread(
                target=self._loop, args=(lane,), name=f"batcher-{model}-{version}-{i}", daemon=True
            )
            for i in range(self.workers)
        ]
        if interactive_runner is not None:
            self._threads.append(
                threading.Thread(
                    target=self._loop,
                    args=(INTERACTIVE,),
                    name=f"batcher-{model}-{version}-interactive",
                    daemon=True,
                )
            )
        for thread in self._threads:
            thread.start()

    def submit(self, x: np.ndarray, ctx: RequestContext) -> Future[np.ndarray]:
        """Queue ``x`` (≤ max_batch_size network inputs); the future holds its outputs."""
        n = len(x)
        if n > self.max_batch_size:
            raise ValueError(f"chunk of {n} exceeds max_batch_size {self.max_batch_size}")
        if self._closed:
            raise Unavailable("the model is being unloaded; retry")
        if not ctx.has_queued_work:
            if not self.budget.try_acquire(n, ctx.interactive):
                self._metrics.rejected_total.labels(reason="queue_full").inc()
                raise Overloaded(
                    f"server busy: {self.budget.used} images queued (max_queued_images="
                    f"{self.budget.capacity}); retry later with backoff",
                    reason="queue_full",
                    counted=True,
                )
            ctx.has_queued_work = True
        else:
            self.budget.acquire(n, ctx)
        item = _Item(
            x=x,
            ctx=ctx,
            enqueued=time.monotonic(),
            trace=tracing.current_context(),
            interactive=ctx.interactive,
        )
        with self._cond:
            (self._urgent if item.interactive else self._queue).append(item)
            self._pending[item.interactive] += n
            self._set_queue_gauge()
            self._cond.notify_all()  # the lanes' threads wait on one condition
        return item.future

    def enter(self, interactive: bool = False) -> None:
        """A request starts using this model (it may submit work at any moment)."""
        with self._cond:
            self._active[interactive] += 1

    def leave(self, interactive: bool = False) -> None:
        with self._cond:
            self._active[interactive] -= 1
            self._cond.notify_all()

    def _set_queue_gauge(self) -> None:
        self._metrics.queue_images.labels(**self._labels).set(sum(self._pending.values()))

    def _lane_queues(self, lane: str) -> tuple[deque[_Item], ...]:
        if lane == INTERACTIVE:
            return (self._urgent,)
        if lane == BULK:
            return (self._queue,)
        return (self._urgent, self._queue)

    def _lane_kinds(self, lane: str) -> tuple[bool, ...]:
        """The ``interactive`` values of the requests whose items ``lane`` serves."""
        return {INTERACTIVE: (True,), BULK: (False,)}.get(lane, (False, True))

    def _others_may_join(self, lane: str) -> bool:
        """Whether waiting can fill the batch: some active request has nothing queued yet.

        A lone client never waits out ``max_queue_delay``; under concurrency the batch waits
        (at most that long) for the requests that are still preparing their images.
        """
        waiting = {id(item.ctx) for q in self._lane_queues(lane) for item in q}
        return sum(self._active[k] for k in self._lane_kinds(lane)) > len(waiting)

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _loop(self, lane: str) -> None:
        if lane == BULK:
            lower_current_thread()  # it runs explanation batches (it joins onnxruntime's work)
        while True:
            parts = self._next_batch(lane)
            if parts is None:
                return
            if not parts:
                continue
            try:
                self._run(parts, self._runner_for(lane))
            finally:
                if lane != INTERACTIVE:
                    with self._cond:
                        self._bulk_running -= 1

    def _runner_for(self, lane: str) -> Runner:
        """The interactive lane's own runner while explanation work runs or waits; otherwise
        the main runner (with all its threads)."""
        busy = self._bulk_running or self._queue
        if lane == INTERACTIVE and self.interactive_runner is not None and busy:
            return self.interactive_runner
        return self.runner

    def _next_batch(self, lane: str) -> list[tuple[_Item, int, int]] | None:
        queues = self._lane_queues(lane)
        kinds = self._lane_kinds(lane)
        with self._cond:
            while not any(queues) and not self._closed:
                self._cond.wait()
            if not any(queues):
                return None
            oldest = min(q[0].enqueued for q in queues if q)
            while (
                sum(self._pending[k] for k in kinds) < self.max_batch_size
                and not self._closed
                and self._others_may_join(lane)
            ):
                remaining = oldest + self.max_queue_delay_s - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            parts: list[tuple[_Item, int, int]] = []
            count = 0
            now = time.monotonic()
            while any(queues) and count < self.max_batch_size:
                queue = next(q for q in queues if q)
                item = queue[0]
                if item.future.done() or item.ctx.cancelled.is_set() or item.ctx.expired():
                    queue.popleft()
                    self._drop(item)
                    continue
                take = min(len(item.x) - item.taken, self.max_batch_size - count)
                if item.taken == 0:
                    waited = now - item.enqueued
                    self._metrics.queue_wait_seconds.labels(**self._labels).observe(waited)
                    item.ctx.record_batch(0, 0.0, waited)
                parts.append((item, item.taken, item.taken + take))
                item.taken += take
                count += take
                self._pending[item.interactive] -= take
                if item.taken == len(item.x):
                    queue.popleft()
            if parts and lane != INTERACTIVE:
                self._bulk_running += 1
            self._set_queue_gauge()
            return parts

    def _drop(self, item: _Item) -> None:
        left = len(item.x) - item.taken
        self._pending[item.interactive] -= left
        self.budget.release(left)
        if item.future.done():
            return
        reason = "deadline" if item.ctx.expired() else "cancelled"
        self._metrics.dropped_images_total.labels(**self._labels, reason=reason).inc(left)
        self._metrics.rejected_total.labels(reason=reason).inc()
        exc: XaiserveError = (
            Cancelled("the request was cancelled")
            if reason == "cancelled"
            else DeadlineExceeded("the request's deadline passed while its images were queued")
        )
        _settle(item.future, exc=exc)

    def _run(self, parts: list[tuple[_Item, int, int]], runner: Runner) -> None:
        count = sum(b - a for _, a, b in parts)
        if len(parts) == 1 and parts[0][1] == 0 and parts[0][2] == len(parts[0][0].x):
            batch = parts[0][0].x
        else:
            batch = np.concatenate([item.x[a:b] for item, a, b in parts])
        start = time.perf_counter()
        try:
            out, trace_id = self._forward(batch, parts, runner)
            elapsed = time.perf_counter() - start
            self._observe(count, elapsed, trace_id)
            offset = 0
            for item, a, b in parts:
                self._deliver(item, a, b, out[offset : offset + (b - a)], elapsed)
                offset += b - a
        except XaiserveError as exc:
            # A domain error (remote unavailable, output that does not fit): the same answer
            # for every request in the batch; running them one by one would only repeat it.
            for item, _, _ in parts:
                _settle(item.future, exc=exc)
        except Exception:
            log.warning("batch of %d failed; retrying its items one by one", count, exc_info=True)
            for item, a, b in parts:
                if item.future.done():
                    continue
                t0 = time.perf_counter()
                try:
                    single, trace_id = self._forward(item.x[a:b], [(item, a, b)], runner)
                except XaiserveError as exc:
                    _settle(item.future, exc=exc)
                    continue
                except Exception:
                    log.exception("inference failed for one request's images")
                    _settle(
                        item.future,
                        exc=InferenceFailed("inference failed for this input; see the server log"),
                    )
                    continue
                elapsed = time.perf_counter() - t0
                self._observe(b - a, elapsed, trace_id)
                self._deliver(item, a, b, single, elapsed)
        finally:
            self.budget.release(count)

    def _forward(
        self, batch: np.ndarray, parts: list[tuple[_Item, int, int]], runner: Runner
    ) -> tuple[np.ndarray, str]:
        """Run one batch inside a ``forward_pass`` span, with the batch's deadline bound."""
        deadlines = [item.ctx.deadline for item, _, _ in parts]
        deadline = None if any(d is None for d in deadlines) else max(d for d in deadlines if d)
        traces = [item.trace for item, _, _ in parts if item.trace is not None]
        with (
            context.bind(RequestContext(deadline=deadline)),
            tracing.span(
                "forward_pass",
                {
                    "xaiserve.model": self._labels["model"],
                    "xaiserve.version": self._labels["version"],
                    "xaiserve.backend": self._runtime,
                    "xaiserve.batch_size": len(batch),
                    "xaiserve.requests": len(parts),
                },
                parent=traces[0] if traces else None,
                links=traces[1:],
            ),
        ):
            return runner(batch), tracing.trace_id_of()

    def _observe(self, n: int, seconds: float, trace_id: str = "") -> None:
        self._metrics.forward_seconds.labels(
            **self._labels, runtime=self._runtime, batch_size=batch_bucket(n)
        ).observe(seconds, exemplar={"trace_id": trace_id} if trace_id else None)
        self._metrics.batch_images.labels(**self._labels).observe(n)
        self._metrics.images_total.labels(**self._labels).inc(n)

    def _deliver(self, item: _Item, a: int, b: int, out: np.ndarray, seconds: float) -> None:
        with self._deliver_lock:
            if item.future.done():
                return
            if item.out is None:
                item.out = np.empty((len(item.x), *out.shape[1:]), dtype=np.float32)
            item.out[a:b] = out
            item.done += b - a
            finished = item.done == len(item.x)
        item.ctx.record_batch(b - a, seconds, 0.0)
        if finished:
            _settle(item.future, result=item.out)


def _settle(
    future: Future[np.ndarray], result: np.ndarray | None = None, exc: BaseException | None = None
) -> None:
    """Complete a future unless its waiter already gave up (cancelled it)."""
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:
        pass
