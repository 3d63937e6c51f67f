"""Client exceptions: every failed call raises an :class:`XaiserveError` subclass.

The server reports errors as gRPC status codes with a message that says what to fix. The SDK
turns each ``grpc.RpcError`` into the subclass for its code, so callers can write::

    try:
        client.explain(image, model="nope")
    except NotFound as err:
        print(err.code, err.details)

Inputs the client can reject before sending (an unknown method name, a parameter the method
does not have) raise :class:`InvalidArgument` as well, exactly as the server would.
"""

from __future__ import annotations

import grpc


class XaiserveError(Exception):
    """A failed call: ``code`` is the gRPC status code, ``details`` the server's message."""

    default_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str, code: grpc.StatusCode | None = None) -> None:
        self.code: grpc.StatusCode = code if code is not None else self.default_code
        self.details: str = details
        super().__init__(f"{self.code.name}: {details}")


class InvalidArgument(XaiserveError, ValueError):
    """The request is malformed; the message names the field and what to fix."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(XaiserveError, LookupError):
    """Unknown model, version, operation or data set."""

    default_code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(XaiserveError):
    """The server's queue is full or the request is over a limit (never retried)."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(XaiserveError, TimeoutError):
    """The call's deadline passed before the server answered."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(XaiserveError, ConnectionError):
    """The server is unreachable or draining (already retried with backoff)."""

    default_code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(XaiserveError, PermissionError):
    """A bearer token or client certificate is missing or not accepted."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(XaiserveError, PermissionError):
    """The caller is authenticated but not allowed to do this."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class Unimplemented(XaiserveError, NotImplementedError):
    """The server does not provide this method or RPC."""

    default_code = grpc.StatusCode.UNIMPLEMENTED


class Cancelled(XaiserveError):
    """The call or the operation was cancelled."""

    default_code = grpc.StatusCode.CANCELLED


class FailedPrecondition(XaiserveError):
    """The request is valid but the server is not in a state to serve it."""

    default_code = grpc.StatusCode.FAILED_PRECONDITION


class Internal(XaiserveError):
    """The server failed unexpectedly (its log has the details)."""

    default_code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[XaiserveError]] = {
    cls.default_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        ResourceExhausted,
        DeadlineExceeded,
        Unavailable,
        Unauthenticated,
        PermissionDenied,
        Unimplemented,
        Cancelled,
        FailedPrecondition,
        Internal,
    )
}


def error_class(code: grpc.StatusCode) -> type[XaiserveError]:
    """The exception class for a status code (:class:`XaiserveError` for the rest)."""
    return _BY_CODE.get(code, XaiserveError)


def from_rpc_error(error: grpc.RpcError) -> XaiserveError:
    """The :class:`XaiserveError` subclass instance for a failed gRPC call."""
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    return error_class(code)(details or code.name.lower().replace("_", " "), code)


__all__ = [
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "XaiserveError",
    "error_class",
    "from_rpc_error",
]
