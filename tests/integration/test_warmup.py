"""Warm-up at load (``models/warmup.py``) on a real server: not ready while it runs, and every
path it reports as warmed really ran (evidence from the metrics and the torch module itself)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests import warmup_gate
from tests.support import region_logit_model, write_model_folder
from xaiserve.api.server import XaiServer, create_server
from xaiserve.config import Settings
from xaiserve.methods import catalog as _catalog  # noqa: F401 - registers the methods
from xaiserve.methods import registered_methods

SERVING = health_pb2.HealthCheckResponse.SERVING


def _gated_model(root: Path, masks: tuple[np.ndarray, np.ndarray]) -> None:
    """The region-logit ONNX graph for black-box methods, and the same map as a registered
    torch module (its weights copied from the graph) for white-box ones."""
    graph = region_logit_model(warmup_gate.SIZE, warmup_gate.SIZE, list(masks))
    folder = write_model_folder(graph, root, height=16, width=16, name="gated", max_batch_size=8)
    weight = next(t for t in graph.graph.initializer if t.name == "W")
    w = torch.from_numpy(np.frombuffer(weight.raw_data, np.float32).reshape(weight.dims).copy())
    torch.save({"fc.weight": w.T.contiguous(), "fc.bias": torch.zeros(2)}, folder / "weights.pt")
    config = (folder / "config.toml").read_text()
    (folder / "config.toml").write_text(
        config + '[torch]\nentry_point = "tests.warmup_gate:gated_linear"\nweights = "weights.pt"\n'
    )


def _wait_serving(health: health_pb2_grpc.HealthStub, timeout: float = 300) -> None:
    give_up = time.monotonic() + timeout
    while health.Check(health_pb2.HealthCheckRequest(), timeout=10).status != SERVING:
        assert time.monotonic() < give_up, "the server never became ready"
        time.sleep(0.05)


@pytest.fixture
def gated_server(tmp_path: Path, region_masks) -> Iterator[XaiServer]:  # type: ignore[no-untyped-def]
    """A real server on the gated model, started without waiting for its warm-up."""
    root = tmp_path / "repo"
    _gated_model(root, region_masks)
    warmup_gate.GATE.clear()
    warmup_gate.WAITING.clear()
    warmup_gate.GRAD_BATCHES.clear()
    settings = Settings(
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        models_dir=str(root),
        data_dir=str(tmp_path / "data"),
        log_format="text",
        warmup=True,
        torch_copies=2,
    )
    server, _ = create_server(settings, wait_ready=False)
    try:
        yield server
    finally:
        warmup_gate.GATE.set()
        server.stop(grace=1.0)


def test_server_is_ready_only_after_warmup_ran_every_path(  # type: ignore[no-untyped-def]
    gated_server: XaiServer, channel_to
) -> None:
    server = gated_server
    health = health_pb2_grpc.HealthStub(channel_to(server.port))
    try:
        # Warm-up reached the white-box methods (a gradient pass waits at the gate) …
        assert warmup_gate.WAITING.wait(timeout=120), "warm-up never ran a gradient pass"
        # … and the server does not say it is ready while it runs.
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status != SERVING
        assert not server.repository.ready_models()
    finally:
        warmup_gate.GATE.set()
    _wait_serving(health)

    registry = server.metrics.registry

    def runs(path: str, outcome: str) -> float:
        value = registry.get_sample_value(
            "xaiserve_model_warmup_runs_total",
            {"model": "gated", "version": "1", "path": path, "outcome": outcome},
        )
        return value or 0.0

    methods = registered_methods()
    expected_ok = ["forward", "decode", "predict", "segmentation_workers", "torch_pool"] + [
        f"method:{name}" for name in methods if name != "gad"
    ]
    for path in expected_ok:
        assert runs(path, "ok") == 1, f"warm-up path {path} did not run ok"
    assert runs("method:gad", "skipped") == 1  # needs a fitted support set: nothing to warm
    seconds = registry.get_sample_value(
        "xaiserve_model_warmup_seconds", {"model": "gated", "version": "1"}
    )
    assert seconds is not None and seconds > 0

    # Independent evidence that the paths ran: the torch pool holds both copies; the module saw
    # one gradient pass per white-box method run at least; images went through the batcher
    # (one per black-box method and predict at least); the segmenter computed products (RPD, CI).
    model = server.repository.get("gated")
    assert len(model._pool().built_copies) == 2
    whitebox = [n for n, s in methods.items() if s.backend == "whitebox" and n != "gad"]
    assert len(warmup_gate.GRAD_BATCHES) >= len(whitebox)
    images = registry.get_sample_value(
        "xaiserve_inference_images_total", {"model": "gated", "version": "1"}
    )
    blackbox = [n for n, s in methods.items() if s.backend == "blackbox"]
    assert images is not None and images >= 1 + len(blackbox)
    misses = sum(
        registry.get_sample_value("xaiserve_segmentation_cache_misses_total", {"kind": kind})
        or 0.0
        for kind in ("superpixels", "exact", "prior", "nested")
    )
    assert misses > 0
