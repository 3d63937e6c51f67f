"""OpenTelemetry traces: off by default, exported over OTLP when ``otlp_endpoint`` is set.

One trace follows a request across processes: the SDK injects the W3C ``traceparent`` into the
gRPC metadata, the server continues it (span ``<Service>/<Rpc>``, kind SERVER), the method runs
in a ``method <name>`` span, each forward pass is a ``forward_pass`` span (batch size, backend)
— its parent is the first request in the batch, the other requests it served are links — and a
remote backend's ``oip.ModelInfer`` span injects the context again toward the OIP server.

With tracing off the OpenTelemetry API hands out non-recording spans: an incoming
``traceparent`` still passes through to the remote, at the cost of a few dictionary look-ups.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind

log = logging.getLogger(__name__)

TRACER_NAME = "xaiserve"
_provider: Any = None  # an SDK TracerProvider once configured; None = the API's no-op


def configure(endpoint: str, sample_ratio: float = 1.0, service_name: str = "xaiserve") -> None:
    """Export spans over OTLP/gRPC to ``endpoint`` (e.g. ``http://otel-collector:4317``)."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    use_provider(provider)
    log.info("tracing on: OTLP to %s (sample ratio %s)", endpoint, sample_ratio)


def use_provider(provider: Any) -> None:
    """Install ``provider`` (an SDK ``TracerProvider``), or ``None`` to turn tracing off.
    Kept apart from the API's global provider so that tests can swap it."""
    global _provider
    if _provider is not None and provider is not _provider:
        _provider.shutdown()
    _provider = provider


def shutdown() -> None:
    use_provider(None)


def _tracer() -> trace.Tracer:
    if _provider is None:
        return trace.NoOpTracer()
    return _provider.get_tracer(TRACER_NAME)  # type: ignore[no-any-return]


@contextlib.contextmanager
def span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: otel_context.Context | None = None,
    links: Sequence[otel_context.Context] = (),
) -> Iterator[trace.Span]:
    """A current span for the ``with`` block (child of ``parent``, else of the current one)."""
    span_links = []
    for ctx in links:
        sc = trace.get_current_span(ctx).get_span_context()
        if sc.is_valid:
            span_links.append(Link(sc))
    if _provider is None:
        # Keep an incoming context current so that it still reaches the remote.
        token = otel_context.attach(parent) if parent is not None else None
        try:
            yield trace.get_current_span()
        finally:
            if token is not None:
                otel_context.detach(token)
        return
    with _tracer().start_as_current_span(
        name, context=parent, kind=kind, attributes=dict(attributes or {}), links=span_links
    ) as current:
        yield current


def server_span(
    name: str, metadata: Sequence[tuple[str, Any]] | None
) -> contextlib.AbstractContextManager[trace.Span]:
    """The span of one incoming RPC, continuing the caller's trace from its metadata."""
    return span(name, {"rpc.system": "grpc"}, kind=SpanKind.SERVER, parent=extract(metadata))


def current_context() -> otel_context.Context:
    return otel_context.get_current()


def extract(metadata: Sequence[tuple[str, Any]] | None) -> otel_context.Context:
    """The trace context a client sent in its gRPC metadata (W3C ``traceparent``)."""
    carrier = {k.lower(): v for k, v in (metadata or ()) if isinstance(v, str)}
    return propagate.extract(carrier)


def inject_metadata() -> list[tuple[str, str]]:
    """The current trace context as gRPC metadata (``traceparent``, ``tracestate``)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())


def trace_id_of(ctx: otel_context.Context | None = None) -> str:
    """The hex trace id of the current (or given) context's span, "" when none is sampled."""
    sc = trace.get_current_span(ctx).get_span_context()
    return format(sc.trace_id, "032x") if sc.is_valid and sc.trace_flags.sampled else ""
