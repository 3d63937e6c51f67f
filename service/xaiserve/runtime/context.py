"""Per-request state the runtime needs without methods passing it around.

The API layer opens a :class:`RequestContext` (deadline, cancellation, counters) for each RPC
and binds it to the handling thread with :func:`bind`; ``Model.predict`` reads it to attach the
deadline to queued work, count forward passes and stop at the next batch boundary once the
client has gone.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from xaiserve.errors import Cancelled, DeadlineExceeded

CLIENT_DEADLINE_SLACK = 0.25
"""Seconds by which a client's deadline may pass before ours. The server's deadline counts from
when the request arrived, the client's from when it was sent, so the client's expires first (by
the one-way latency, more under load) and gRPC reports it to us as a cancel. A cancel within
this slack of our deadline is that expiry, not a client's choice."""


def deadline_reached(remaining: float | None, cancelled: bool) -> bool:
    """Whether an RPC that ended (``cancelled``) or has ``remaining`` seconds left has run out of
    time rather than been cancelled by its client."""
    if remaining is None:
        return False
    return remaining <= (CLIENT_DEADLINE_SLACK if cancelled else 0.0)


@dataclass
class RequestContext:
    deadline: float | None = None  # time.monotonic() value
    cancelled: threading.Event = field(default_factory=threading.Event)
    forward_passes: int = 0
    inference_seconds: float = 0.0
    queue_seconds: float = 0.0
    has_queued_work: bool = False
    interactive: bool = False  # a cheap call (Predict): its images jump the batch queue
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def expired(self) -> bool:
        """The deadline passed; once the call has ended (cancel event set), also when the
        client's own deadline, a little earlier than ours, is what ended it."""
        return deadline_reached(self.remaining(), self.cancelled.is_set())

    def check(self) -> None:
        """Raise if the deadline passed (DEADLINE_EXCEEDED) or the client cancelled.

        The deadline is checked first: gRPC ends an expired RPC the same way as a cancelled
        one (the ``cancelled`` event fires for both), and an expiry must not be reported as a
        client cancel."""
        if self.expired():
            raise DeadlineExceeded("the request's deadline passed before its work finished")
        if self.cancelled.is_set():
            raise Cancelled("the request was cancelled")

    def record_batch(self, images: int, seconds: float, queued: float) -> None:
        with self._lock:
            self.forward_passes += images
            self.inference_seconds += seconds
            self.queue_seconds += queued


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "xaiserve_request", default=None
)


def current() -> RequestContext:
    """The bound context, or a fresh unbounded one (library use without the server)."""
    ctx = _current.get()
    if ctx is None:
        ctx = RequestContext()
        _current.set(ctx)
    return ctx


@contextlib.contextmanager
def bind(ctx: RequestContext) -> Iterator[RequestContext]:
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)
