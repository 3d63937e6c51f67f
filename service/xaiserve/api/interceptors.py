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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from xaiserve.errors import Overloaded, XaiserveError
from xaiserve.observability import Metrics

log = logging.getLogger(__name__)

SERVICE_PREFIX = "/xaiserve.v1.ExplainService/"
EXEMPT_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
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


class Admission:
    """Concurrent-RPC bound and the draining switch (shared by interceptor and server)."""

    def __init__(self, max_concurrent: int) -> None:
        self.max_concurrent = max_concurrent
        self._active = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self.draining = threading.Event()

    @property
    def active(self) -> int:
        return self._active

    def try_enter(self) -> bool:
        with self._lock:
            if self._active >= self.max_concurrent:
                return False
            self._active += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._active > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True


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


class ServiceInterceptor(grpc.ServerInterceptor):
    def __init__(self, metrics: Metrics, admission: Admission) -> None:
        self.metrics = metrics
        self.admission = admission

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
            self._wrap_unary(rpc, behaviour)
            if kind in ("unary_unary", "stream_unary")
            else self._wrap_stream(rpc, behaviour)
        )
        factory = getattr(grpc, f"{kind}_rpc_method_handler")
        return factory(  # type: ignore[no-any-return]
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _enter(self, rpc: str) -> None:
        if not self.admission.try_enter():
            self.metrics.rejected_total.labels(reason="concurrency").inc()
            raise _Refused(
                f"server busy: {self.admission.max_concurrent} requests in progress "
                "(max_concurrent_requests); retry later with backoff"
            )
        self.metrics.inflight.labels(rpc=rpc).inc()

    def _leave(self, rpc: str) -> None:
        self.metrics.inflight.labels(rpc=rpc).dec()
        self.admission.leave()

    def _finish(self, rpc: str, info: RpcInfo, start: float, code: str) -> None:
        self.metrics.requests_total.labels(rpc=rpc, method=info.method, code=code).inc()
        self.metrics.request_seconds.labels(rpc=rpc, method=info.method).observe(
            time.perf_counter() - start
        )

    def _wrap_unary(self, rpc: str, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            info = RpcInfo()
            token = _rpc_info.set(info)
            try:
                self._enter(rpc)
            except _Refused as exc:
                _rpc_info.reset(token)
                self._finish(rpc, info, start, "RESOURCE_EXHAUSTED")
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            code = "OK"
            try:
                return behaviour(request, context)
            except Exception as exc:
                code, message = self._status_of(exc, rpc)
                _abort(context, code, message)
            finally:
                self._leave(rpc)
                self._finish(rpc, info, start, code)
                _rpc_info.reset(token)

        return call

    def _wrap_stream(
        self, rpc: str, behaviour: Callable[..., Iterator[Any]]
    ) -> Callable[..., Iterator[Any]]:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            start = time.perf_counter()
            info = RpcInfo()
            try:
                self._enter(rpc)
            except _Refused as exc:
                self._finish(rpc, info, start, "RESOURCE_EXHAUSTED")
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            code = "OK"
            try:
                token = _rpc_info.set(info)
                try:
                    yield from behaviour(request, context)
                finally:
                    _rpc_info.reset(token)
            except GeneratorExit:
                code = "CANCELLED"
                raise
            except Exception as exc:
                code, message = self._status_of(exc, rpc)
                _abort(context, code, message)
            finally:
                self._leave(rpc)
                self._finish(rpc, info, start, code)

        return call


    def _status_of(self, exc: Exception, rpc: str) -> tuple[str, str]:
        if isinstance(exc, Overloaded) and not exc.counted:
            self.metrics.rejected_total.labels(reason=exc.reason).inc()
            exc.counted = True
        return _status_of(exc, rpc)


class _Refused(Exception):
    pass


def _status_of(exc: Exception, rpc: str) -> tuple[str, str]:
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

    Health checks and reflection stay reachable without a token (Kubernetes probes cannot
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
        if details.method.startswith(EXEMPT_PREFIXES):
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
