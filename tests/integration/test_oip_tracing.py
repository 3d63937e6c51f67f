"""One trace from the SDK through xaiserve to the OIP server (OpenTelemetry, in-memory exporter).

The test's own span stands for the client application; the SDK sends its W3C ``traceparent``;
xaiserve continues the trace (RPC → method → forward pass → remote ModelInfer) and sends it on
to KServe's server, which records the ``traceparent`` it received.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

from tests.oip_support import OipServer, write_remote_model
from xaiserve import tracing
from xaiserve.demo.shapes import render_sample
from xaiserve_client import ExplainClient


@pytest.fixture
def exporter() -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.use_provider(provider)
    yield spans, provider
    tracing.use_provider(None)


def by_name(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def test_oip_one_trace_from_the_sdk_to_the_oip_server(
    start_server, tmp_path: Path, oip_server: OipServer, exporter: Any
) -> None:  # type: ignore[no-untyped-def]
    spans, provider = exporter
    root = tmp_path / "repo"
    write_remote_model(root, oip_server, name="remote", max_batch_size=16)
    server, port = start_server(root)
    oip_server.clear_calls()
    spans.clear()  # the load's own calls (readiness, smoke test, warm-up) are traces of their own
    image = render_sample(seed=7, index=3).image
    client_tracer = provider.get_tracer("client-app")
    with (
        ExplainClient(f"127.0.0.1:{port}") as client,
        client_tracer.start_as_current_span("client request") as app_span,
    ):
        client.explain(
            image, "regional_prediction_difference", "remote", target=1, scales=2, seed=1
        )
    trace_id = app_span.get_span_context().trace_id
    finished = spans.get_finished_spans()
    assert all(s.context.trace_id == trace_id for s in finished), "one trace end to end"

    (rpc,) = by_name(finished, "xaiserve.v1.ExplainService/Explain")
    assert rpc.parent is not None and rpc.parent.span_id == app_span.get_span_context().span_id
    (method,) = by_name(finished, "method regional_prediction_difference")
    assert method.parent is not None and method.parent.span_id == rpc.context.span_id
    passes = by_name(finished, "forward_pass")
    assert passes and all(p.attributes["xaiserve.backend"] == "oip" for p in passes)
    sizes = [p.attributes["xaiserve.batch_size"] for p in passes]
    assert max(sizes) > 1 and all(0 < n <= 16 for n in sizes)
    ids = {rpc.context.span_id, method.context.span_id}
    # Each forward pass belongs to this request (parent: the method span, or the RPC span for
    # the prediction that resolves the target).
    assert all(p.parent is not None and p.parent.span_id in ids for p in passes)
    infers = by_name(finished, "oip.ModelInfer")
    pass_ids = {p.context.span_id for p in passes}
    assert len(infers) == len(passes)
    assert all(i.parent is not None and i.parent.span_id in pass_ids for i in infers)

    # What the OIP server received: the same trace, with the ModelInfer span as parent.
    calls = oip_server.calls()
    assert len(calls) == len(infers)
    infer_ids = {format(i.context.span_id, "016x") for i in infers}
    for call in calls:
        version, seen_trace, parent, flags = call["traceparent"].split("-")
        assert version == "00" and seen_trace == format(trace_id, "032x")
        assert int(flags, 16) & 1  # sampled
        assert parent in infer_ids

    # The forward-pass histogram links to the trace through exemplars.
    exposition = openmetrics(server.metrics.registry).decode()
    assert f'trace_id="{format(trace_id, "032x")}"' in exposition


def test_oip_tracing_off_still_passes_the_callers_context_on(
    start_server, tmp_path: Path, oip_server: OipServer
) -> None:  # type: ignore[no-untyped-def]
    tracing.use_provider(None)
    root = tmp_path / "repo"
    write_remote_model(root, oip_server, name="remote")
    _, port = start_server(root)
    oip_server.clear_calls()
    provider = TracerProvider()  # the client application traces; the server does not
    with (
        ExplainClient(f"127.0.0.1:{port}") as client,
        provider.get_tracer("app").start_as_current_span("app") as app_span,
    ):
        client.predict(render_sample(seed=1, index=0).image, "remote")
    (call,) = oip_server.calls()
    assert call["traceparent"].split("-")[1] == format(app_span.get_span_context().trace_id, "032x")
