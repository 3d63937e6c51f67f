"""Server interceptors: errors → status codes, metrics, admission, draining, authentication.

One place maps domain exceptions to gRPC status codes: an :class:`XaiserveError` becomes its
status with its message; anything else becomes INTERNAL with a generic message and the traceback
goes to the log only. The same wrapper counts requests by status, times them, tracks in-flight
RPCs, refuses work beyond ``max_concurrent_requests`` and refuses new work while draining.
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from xaiserve import tracing
from xaiserve.errors import Cancelled, Overloaded, Unavailable, XaiserveError
from xaiserve.observability import Metrics
from xaiserve.runtime.context import deadline_reached
from xaiserve.runtime.priority import lower_current_thread

log = logging.getLogger(__name__)

SERVICE_PREFIX = "/xaiserve.v1.ExplainService/"
AUTH_EXEMPT_PREFIXES = ("/grpc.health.v1.",)
"""Only health checks skip the token (Kubernetes probes cannot authenticate). Reflection
describes the whole API, so with authentication on it needs a token like any other call."""
UNKNOWN_METHOD = "none"


@dataclass
class RpcInfo:
    """Filled in by the servicer so the interceptor can label the request by method."""

    method: str = UNKNOWN_METHOD


_rpc_info: contextvars.ContextVar[RpcInfo | None] = contextvars.ContextVar(
    "xaiserve_rpc", default=None
)


def set_method_label(name: str) -> None:
    """Label this RPC's metrics with a registered method name (never a client string)."""
    info = _rpc_info.get()
    if info is not None:
        info.method = name


CHEAP = "cheap"
EXPENSIVE = "expensive"

CHEAP_RPCS = frozenset(
    {"Predict", "PredictStream", "ListModels", "GetModel", "GetOperation", "CancelOperation",
     "ListOperations"}
)  # fmt: skip
"""Calls served from the cheap pool: one forward pass or a look-up. Everything else (Explain,
Score, operation starts) is served from the expensive pool, so neither class can take the
other's slots."""

UNSLOTTED_RPCS = frozenset({"WatchOperation"})
"""Calls that hold no request slot: a watcher mostly waits. They are bounded by their own
count (``max_watchers``)."""

PER_ITEM_RPCS = frozenset({"PredictStream", "ExplainStream"})
"""Bidirectional streams take a slot per item while it is processed, none while idle."""


class Pool:
    """A bound on concurrently admitted calls of one class."""

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self.active = 0


class Admission:
    """Admission pools (cheap / expensive), the watcher bound and the draining switch (shared
    by the interceptor and the server)."""

    def __init__(self, max_concurrent: int, max_cheap: int = 0, max_watchers: int = 0) -> None:
        self.max_concurrent = max_concurrent
        self.pools = {
            EXPENSIVE: Pool(EXPENSIVE, max_concurrent),
            CHEAP: Pool(CHEAP, max_cheap or max_concurrent),
            "watch": Pool("watch", max_watchers or 4 * max_concurrent),
        }
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self.draining = threading.Event()

    @property
    def active(self) -> int:
        """Calls holding a request slot now (watchers excluded)."""
        return self.pools[EXPENSIVE].active + self.pools[CHEAP].active

    def try_enter(self, pool: str = EXPENSIVE) -> bool:
        with self._lock:
            p = self.pools[pool]
            if p.active >= p.capacity:
                return False
            p.active += 1
            return True

    def leave(self, pool: str = EXPENSIVE) -> None:
        with self._lock:
            self.pools[pool].active -= 1
            if self.active == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.active > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True


def pool_of(rpc: str) -> str:
    if rpc in UNSLOTTED_RPCS:
        return "watch"
    return CHEAP if rpc in CHEAP_RPCS else EXPENSIVE


def _abort_handler(code: grpc.StatusCode, message: str, kind: str) -> grpc.RpcMethodHandler:
    def deny(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    # No request deserializer: a refused request is never parsed (or its image decoded).
    if kind == "unary_unary":
        return grpc.unary_unary_rpc_method_handler(deny)
    if kind == "unary_stream":
        return grpc.unary_stream_rpc_method_handler(deny)
    if kind == "stream_unary":
        return grpc.stream_unary_rpc_method_handler(deny)
    return grpc.stream_stream_rpc_method_handler(deny)


def _kind(handler: grpc.RpcMethodHandler) -> str:
    if handler.unary_unary:
        return "unary_unary"
    if handler.unary_stream:
        return "unary_stream"
    if handler.stream_unary:
        return "stream_unary"
    return "stream_stream"


class IdleWatchdog:
    """Ends streams whose client has sent nothing for ``idle_seconds`` (one thread for all).

    A stream registers while it waits for its next message; the watchdog cancels the RPC
    (the client sees CANCELLED) once the wait passes the limit, so an idle stream holds
    neither a request slot nor, for long, a handler thread."""

    def __init__(self, idle_seconds: float, metrics: Metrics) -> None:
        self.idle_seconds = idle_seconds
        self._metrics = metrics
        self._waiting: dict[int, tuple[float, grpc.ServicerContext, list[bool]]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="idle-streams", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        tick = min(0.5, max(0.05, self.idle_seconds / 4))
        while True:
            time.sleep(tick)
            now = time.monotonic()
            with self._lock:
                expired = [
                    (k, v) for k, v in self._waiting.items() if now - v[0] >= self.idle_seconds
                ]
                for key, _ in expired:
                    del self._waiting[key]
            for _, (_, context, fired) in expired:
                fired[0] = True
                self._metrics.rejected_total.labels(reason="idle").inc()
                context.cancel()

    def bounded(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        """``requests``, ended with :class:`Cancelled` once the client idles too long."""
        if self.idle_seconds <= 0:
            yield from requests
            return
        with self._lock:
            self._start()
        it = iter(requests)
        key = id(context)
        fired = [False]
        while True:
            with self._lock:
                self._waiting[key] = (time.monotonic(), context, fired)
            try:
                item = next(it)
            except StopIteration:
                return
            except Exception:
                if fired[0]:
                    raise Cancelled(
                        f"stream idle for {self.idle_seconds:g} s (stream_idle_seconds)"
                    ) from None
                raise
            finally:
                with self._lock:
                    self._waiting.pop(key, None)
            yield item


class ServiceInterceptor(grpc.ServerInterceptor):
    """Status mapping, metrics and admission for every ExplainService call.

    Admission: cheap calls (:data:`CHEAP_RPCS`) and expensive ones take slots from separate
    pools (``max_concurrent_cheap``, ``max_concurrent_requests``), so a flood of explanations
    never starves Predict or the look-ups, and the reverse. Bidirectional streams take a slot
    per item while it is processed (:data:`PER_ITEM_RPCS`); watchers take none, only a place
    among ``max_watchers``. Client-streaming requests end when idle (``stream_idle_seconds``).

    Expensive unary calls (Explain, Score) run in threads of their own at a lower CPU priority
    (``runtime.priority``): the torch threads, segmentation workers and numpy work they start
    inherit it, so on a saturated machine the cores go to Predict and the look-ups first. At
    most ``running`` of them run at once (``max_running_requests``); the other admitted ones
    wait in arrival order, and one whose client leaves meanwhile never starts.
    """

    def __init__(
        self,
        metrics: Metrics,
        admission: Admission,
        stream_idle_seconds: float = 0.0,
        running: int = 0,
    ) -> None:
        self.metrics = metrics
        self.admission = admission
        self.idle = IdleWatchdog(stream_idle_seconds, metrics)
        # ``running`` runners (default: one per expensive slot). Admitted calls beyond them wait
        # in arrival order: on a small machine, two dozen explanations at once add no throughput,
        # only threads contending for the cores and the GIL that a Predict also needs.
        capacity = admission.pools[EXPENSIVE].capacity
        self.running = min(running, capacity) if running > 0 else capacity
        self.background = ThreadPoolExecutor(
            self.running, thread_name_prefix="expensive", initializer=lower_current_thread
        )

    def close(self) -> None:
        """Stop the expensive calls' threads (after the gRPC server has stopped)."""
        self.background.shutdown(wait=False, cancel_futures=True)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or not details.method.startswith(SERVICE_PREFIX):
            return handler
        rpc = details.method[len(SERVICE_PREFIX) :]
        kind = _kind(handler)
        if self.admission.draining.is_set():
            self.metrics.rejected_total.labels(reason="draining").inc()
            self.metrics.requests_total.labels(
                rpc=rpc, method=UNKNOWN_METHOD, code="UNAVAILABLE"
            ).inc()
            return _abort_handler(
                grpc.StatusCode.UNAVAILABLE,
                "server is shutting down; retry on another replica",
                kind,
            )
        behaviour = getattr(handler, kind)
        wrapped = (
            self._wrap_unary(rpc, behaviour, kind)
            if kind in ("unary_unary", "stream_unary")
            else self._wrap_stream(rpc, behaviour, kind)
        )
        factory = getattr(grpc, f"{kind}_rpc_method_handler")
        return factory(  # type: ignore[no-any-return]
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _enter(self, rpc: str, pool: str) -> None:
        if not self.admission.try_enter(pool):
            setting = {
                EXPENSIVE: "max_concurrent_requests",
                CHEAP: "max_concurrent_cheap",
                "watch": "max_watchers",
            }[pool]
            self.metrics.rejected_total.labels(reason="concurrency").inc()
            refused = Overloaded(
                f"server busy: {self.admission.pools[pool].capacity} {pool} calls in progress "
                f"({setting}); retry later with backoff",
                reason="concurrency",
            )
            refused.counted = True
            raise refused
        self.metrics.inflight.labels(rpc=rpc).inc()

    def _leave(self, rpc: str, pool: str) -> None:
        self.metrics.inflight.labels(rpc=rpc).dec()
        self.admission.leave(pool)

    def _finish(self, rpc: str, info: RpcInfo, start: float, code: str) -> None:
        self.metrics.requests_total.labels(rpc=rpc, method=info.method, code=code).inc()
        self.metrics.request_seconds.labels(rpc=rpc, method=info.method).observe(
            time.perf_counter() - start
        )

    def _requests(self, request: Any, context: grpc.ServicerContext, kind: str) -> Any:
        return self.idle.bounded(request, context) if kind.startswith("stream_") else request

    def _per_item(self, rpc: str, requests: Iterator[Any]) -> Iterator[Any]:
        """Hold a slot of ``rpc``'s pool only while an item is being processed."""
        pool = pool_of(rpc)
        held = False
        it = iter(requests)
        try:
            while True:
                if held:  # the previous item is done: free its slot before waiting
                    self._leave(rpc, pool)
                    held = False
                try:
                    item = next(it)
                except StopIteration:
                    return
                self._enter(rpc, pool)
                held = True
                yield item
        finally:
            if held:
                self._leave(rpc, pool)

    def _wrap_unary(self, rpc: str, behaviour: Callable[..., Any], kind: str) -> Callable[..., Any]:
        pool = pool_of(rpc)
        lowered = pool == EXPENSIVE and kind == "unary_unary"

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            info = RpcInfo()
            token = _rpc_info.set(info)
            try:
                self._enter(rpc, pool)
            except Overloaded as exc:
                _rpc_info.reset(token)
                self._finish(rpc, info, start, "RESOURCE_EXHAUSTED")
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message)
            code = "OK"
            try:
                with tracing.server_span(SERVICE_PREFIX[1:] + rpc, context.invocation_metadata()):
                    if lowered:
                        return self._run_in_background(behaviour, request, context)
                    return behaviour(self._requests(request, context, kind), context)
            except Exception as exc:
                code, message = self._status_of(exc, rpc, context)
                _abort(context, code, message)
            finally:
                self._leave(rpc, pool)
                self._finish(rpc, info, start, code)
                _rpc_info.reset(token)

        return call

    def _run_in_background(
        self, behaviour: Callable[..., Any], request: Any, context: grpc.ServicerContext
    ) -> Any:
        """Run an admitted expensive call on a lowered runner, waiting in arrival order for one.
        A call whose client leaves (cancel, deadline) while it waits never starts."""
        run = contextvars.copy_context().run  # the span and RpcInfo go along
        queued = time.perf_counter()

        def job() -> Any:
            self.metrics.waiting_to_run.dec()
            self.metrics.run_wait_seconds.observe(time.perf_counter() - queued)
            return run(behaviour, request, context)

        self.metrics.waiting_to_run.inc()
        future = self.background.submit(job)

        def abandon() -> None:  # the RPC ended (cancel, deadline): a call still waiting never runs
            future.cancel()

        if not context.add_callback(abandon):  # it has already ended
            abandon()
        try:
            return future.result()
        except CancelledError:
            self.metrics.waiting_to_run.dec()  # cancelled before it started
            if context.is_active():
                raise Unavailable("the server is stopping; retry on another replica") from None
            raise

    def _wrap_stream(
        self, rpc: str, behaviour: Callable[..., Iterator[Any]], kind: str
    ) -> Callable[..., Iterator[Any]]:
        per_item = rpc in PER_ITEM_RPCS and kind == "stream_stream"
        pool = pool_of(rpc)

        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            start = time.perf_counter()
            info = RpcInfo()
            if not per_item:
                try:
                    self._enter(rpc, pool)
                except Overloaded as exc:
                    self._finish(rpc, info, start, "RESOURCE_EXHAUSTED")
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message)
            code = "OK"
            requests = self._requests(request, context, kind)
            if per_item:
                requests = self._per_item(rpc, requests)
            try:
                token = _rpc_info.set(info)
                try:
                    with tracing.server_span(
                        SERVICE_PREFIX[1:] + rpc, context.invocation_metadata()
                    ):
                        yield from behaviour(requests, context)
                finally:
                    _rpc_info.reset(token)
            except GeneratorExit:
                code = "CANCELLED"
                raise
            except Exception as exc:
                code, message = self._status_of(exc, rpc, context)
                _abort(context, code, message)
            finally:
                if per_item:
                    requests.close()  # releases an item's slot if one is held
                else:
                    self._leave(rpc, pool)
                self._finish(rpc, info, start, code)

        return call

    def _status_of(
        self, exc: Exception, rpc: str, context: grpc.ServicerContext | None = None
    ) -> tuple[str, str]:
        if isinstance(exc, Overloaded) and not exc.counted:
            self.metrics.rejected_total.labels(reason=exc.reason).inc()
            exc.counted = True
        return _status_of(exc, rpc, context)


def _status_of(
    exc: Exception, rpc: str, context: grpc.ServicerContext | None = None
) -> tuple[str, str]:
    if context is not None and not context.is_active() and not isinstance(exc, XaiserveError):
        # The RPC already ended: the client cancelled or its deadline passed, and reading the
        # request stream failed because of it. Not a server error: no INTERNAL, no traceback.
        expired = deadline_reached(context.time_remaining(), cancelled=True)
        return ("DEADLINE_EXCEEDED" if expired else "CANCELLED"), "the call ended"
    if isinstance(exc, XaiserveError):
        return exc.status.value, exc.message
    incident = uuid.uuid4().hex[:12]
    log.error("unexpected error in %s (incident %s)", rpc, incident, exc_info=exc)
    return "INTERNAL", f"internal error (incident {incident}); the server log has the details"


def _abort(context: grpc.ServicerContext, code: str, message: str) -> None:
    # gRPC messages travel in a header: keep them short.
    context.abort(getattr(grpc.StatusCode, code), message[:1000])


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Bearer tokens (``authorization: Bearer <token>``) compared in constant time.

    Health checks stay reachable without a token (Kubernetes probes cannot
    authenticate). A refusal says only UNAUTHENTICATED — nothing that helps guess a token — and
    happens before the request body is parsed.
    """

    def __init__(self, tokens: list[bytes], metrics: Metrics) -> None:
        if not tokens:
            raise ValueError("token authentication needs at least one token")
        self._tokens = tokens
        self._metrics = metrics

    @classmethod
    def from_file(cls, path: str, metrics: Metrics) -> TokenAuthInterceptor:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        tokens = [ln.strip().encode() for ln in lines if ln.strip() and not ln.startswith("#")]
        return cls(tokens, metrics)

    def _valid(self, presented: bytes) -> bool:
        ok = False
        for token in self._tokens:
            ok |= hmac.compare_digest(presented, token)
        return ok

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        if details.method.startswith(AUTH_EXEMPT_PREFIXES):
            return continuation(details)
        presented = b""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                raw = value.encode() if isinstance(value, str) else value
                if raw[:7].lower() == b"bearer ":
                    presented = raw[7:].strip()
        if presented and self._valid(presented):
            return continuation(details)
        handler = continuation(details)
        self._metrics.rejected_total.labels(reason="unauthenticated").inc()
        return _abort_handler(
            grpc.StatusCode.UNAUTHENTICATED,
            "authentication required",
            _kind(handler) if handler is not None else "unary_unary",
        )
