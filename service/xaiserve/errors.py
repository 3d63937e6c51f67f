"""Domain exceptions that carry their gRPC status.

Every layer raises these; one server interceptor (``xaiserve.api.interceptors``) maps them to
gRPC status codes. Anything that is not an :class:`XaiserveError` becomes ``INTERNAL`` with a
generic message, and its traceback goes to the log only.
"""

from __future__ import annotations

import enum


class Status(enum.Enum):
    """The gRPC status names our errors map to (kept free of grpc imports)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    UNAVAILABLE = "UNAVAILABLE"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    INTERNAL = "INTERNAL"


class XaiserveError(Exception):
    """Base class: ``status`` is the gRPC status, ``str(self)`` the client-facing message."""

    status: Status = Status.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(XaiserveError):
    """The request is malformed: the message says which field and what to fix."""

    status = Status.INVALID_ARGUMENT


class ModelNotFound(XaiserveError):
    """Unknown model name or version (names are validated first, see ``InvalidInput``)."""

    status = Status.NOT_FOUND


class NotFound(XaiserveError):
    """Some other named thing (operation, support set, data-set folder) does not exist."""

    status = Status.NOT_FOUND


class Overloaded(XaiserveError):
    """Admission refused: a queue or a pool is full. ``reason`` labels
    ``xaiserve_rejected_requests_total``: the server interceptor counts it when the refusal
    ends an RPC, unless the raiser counted it already (``counted=True``, e.g. the batcher,
    which also refuses work of long-running operations)."""

    status = Status.RESOURCE_EXHAUSTED

    def __init__(self, message: str, reason: str = "queue_full", *, counted: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.counted = counted


class LimitExceeded(XaiserveError):
    """A request parameter is over a configured limit (the message names the limit)."""

    status = Status.RESOURCE_EXHAUSTED


class DeadlineExceeded(XaiserveError):
    """The request's deadline passed before its work finished."""

    status = Status.DEADLINE_EXCEEDED


class Cancelled(XaiserveError):
    """The client cancelled the request, or the operation was cancelled."""

    status = Status.CANCELLED


class Unimplemented(XaiserveError):
    """A method, operator or feature that this server does not provide."""

    status = Status.UNIMPLEMENTED


class Unavailable(XaiserveError):
    """The server is draining or the model is not ready; clients may retry elsewhere."""

    status = Status.UNAVAILABLE


class FailedPrecondition(XaiserveError):
    """The request is valid but the system is not in a state to serve it."""

    status = Status.FAILED_PRECONDITION
