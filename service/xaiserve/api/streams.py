"""The transport side of a request: its deadline and cancellation, and reading streams."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import grpc

from xaiserve.errors import InvalidInput, LimitExceeded
from xaiserve.runtime import context as rctx


def request_context(
    context: grpc.ServicerContext, interactive: bool = False
) -> rctx.RequestContext:
    """Deadline and cancellation of this RPC, for the runtime (see ``runtime.context``);
    ``interactive`` calls (Predict) go ahead of explanation work in the batch queue."""
    remaining = context.time_remaining()
    deadline = None if remaining is None or remaining > 1e8 else time.monotonic() + remaining
    ctx = rctx.RequestContext(deadline=deadline, interactive=interactive)

    def ended() -> None:  # the RPC ended, early or not: by its deadline, or the client left
        left = context.time_remaining()
        if ctx.deadline is not None and left is not None and left <= 0:
            # gRPC's clock ran out: make ours agree, so the work reports DEADLINE_EXCEEDED
            # (our deadline was taken a moment after gRPC's, when the handler started).
            ctx.deadline = min(ctx.deadline, time.monotonic())
        ctx.cancelled.set()

    context.add_callback(ended)
    return ctx


def child(parent: rctx.RequestContext) -> rctx.RequestContext:
    """A per-item context on a stream: the stream's deadline and cancellation, own counters."""
    return rctx.RequestContext(
        deadline=parent.deadline, cancelled=parent.cancelled, interactive=parent.interactive
    )


def bounded(items: Iterable[Any], limit: int) -> Iterator[Any]:
    """The items of a bidirectional stream, at most ``limit`` of them."""
    for i, item in enumerate(items):
        if i >= limit:
            raise LimitExceeded(f"a stream may carry at most {limit} items (max_stream_images)")
        yield item


class _ConfigOrItem(Protocol):
    """``EvaluateDatasetRequest`` and ``FitGadRequest``: a ``part`` oneof of config or item."""

    @property
    def config(self) -> Any: ...

    @property
    def item(self) -> Any: ...

    def WhichOneof(self, name: str) -> str | None: ...


def config_then_items(
    requests: Iterator[_ConfigOrItem], what: str
) -> tuple[Any, Iterator[tuple[int, Any]]]:
    """Read a "config, then items" client stream: the first message's config, and the items
    that follow as ``(index, item)``, read lazily (so the consumer can stop early)."""
    first = next(requests, None)
    if first is None or first.WhichOneof("part") != "config":
        raise InvalidInput(f"the first {what} must carry config")

    def items() -> Iterator[tuple[int, Any]]:
        for i, request in enumerate(requests):
            if request.WhichOneof("part") != "item":
                raise InvalidInput(f"message {i + 1} after the config must be an item")
            yield i, request.item

    return first.config, items()
