"""Prometheus metrics and structured logging.

Metrics take an injected ``CollectorRegistry`` so tests read fresh values. Label values come only
from the repository and the code (model names that exist, method names that are registered, RPC
names, status names); a request's unknown model name never becomes a label.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

NAMESPACE = "xaiserve"

# Latency buckets from 1 ms to ~2 min (forward passes on CPU of big models take seconds).
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def batch_bucket(n: int) -> str:
    """The batch-size bucket label for a forward pass of ``n`` images ("1", "2", "3-4", ...)."""
    if n <= 1:
        return "1"
    if n == 2:
        return "2"
    upper = 4
    while upper < n:
        upper *= 2
    return f"{upper // 2 + 1}-{upper}"


class Metrics:
    """All metrics the server exports. Names are the public contract (see README)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.forward_seconds = Histogram(
            "forward_pass_seconds",
            "Latency of one forward pass (one batch through the network).",
            ["model", "version", "runtime", "batch_size"],
            namespace=NAMESPACE,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.batch_images = Histogram(
            "batch_images",
            "Images per forward pass.",
            ["model", "version"],
            namespace=NAMESPACE,
            registry=r,
            buckets=BATCH_BUCKETS,
        )
        self.images_total = Counter(
            "inference_images",
            "Images through the network (forward passes counted per image).",
            ["model", "version"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "queue_wait_seconds",
            "Time an image chunk waited in the batch queue before its forward pass.",
            ["model", "version"],
            namespace=NAMESPACE,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.queue_images = Gauge(
            "queue_images",
            "Images waiting in the batch queue.",
            ["model", "version"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.request_seconds = Histogram(
            "request_seconds",
            "Server-side latency of an RPC, by method for Explain/Score.",
            ["rpc", "method"],
            namespace=NAMESPACE,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.requests_total = Counter(
            "requests",
            "Finished RPCs by status code.",
            ["rpc", "method", "code"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.inflight = Gauge(
            "inflight_requests",
            "RPCs being handled now.",
            ["rpc"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.waiting_to_run = Gauge(
            "requests_waiting_to_run",
            "Admitted Explain/Score calls waiting for one of max_running_requests runners.",
            namespace=NAMESPACE,
            registry=r,
        )
        self.run_wait_seconds = Histogram(
            "run_wait_seconds",
            "Time an admitted Explain/Score call waited for a runner before it started.",
            namespace=NAMESPACE,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.rejected_total = Counter(
            "rejected_requests",
            "Requests refused before or during admission, by reason.",
            ["reason"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.dropped_images_total = Counter(
            "dropped_images",
            "Queued images dropped before their forward pass (deadline passed or cancelled).",
            ["model", "version", "reason"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.model_load_failures_total = Counter(
            "model_load_failures",
            "Model versions that failed to load.",
            ["model"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.models_ready = Gauge(
            "models_ready",
            "Model versions loaded and serving.",
            namespace=NAMESPACE,
            registry=r,
        )
        self.model_info = Gauge(
            "model_info",
            "Loaded model versions (value 1), with their file hash and runtime providers.",
            ["model", "version", "sha256", "providers"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.segmentation_cache_hits = Counter(
            "segmentation_cache_hits",
            "Segmentation products (superpixels, exact, prior, nested) served from the cache or "
            "from a computation already running for another request.",
            ["kind"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.segmentation_cache_misses = Counter(
            "segmentation_cache_misses",
            "Segmentation products computed because the cache did not hold them.",
            ["kind"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.segmentation_cache_evictions = Counter(
            "segmentation_cache_evictions",
            "Cache entries evicted (least recently used) to stay within segmentation_cache_bytes.",
            namespace=NAMESPACE,
            registry=r,
        )
        self.segmentation_cache_bytes = Gauge(
            "segmentation_cache_bytes",
            "Bytes held by the segmentation cache.",
            namespace=NAMESPACE,
            registry=r,
        )
        self.segmentation_cache_entries = Gauge(
            "segmentation_cache_entries",
            "Entries held by the segmentation cache.",
            namespace=NAMESPACE,
            registry=r,
        )
        self.segmentation_seconds = Histogram(
            "segmentation_seconds",
            "Time to compute one segmentation product (cache misses only), by kind and device.",
            ["kind", "device"],
            namespace=NAMESPACE,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.segmentation_queue_seconds = Histogram(
            "segmentation_queue_seconds",
            "Time a segmentation product waited for a worker of the segmentation pool.",
            namespace=NAMESPACE,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.segmentation_wait_seconds = Histogram(
            "segmentation_wait_seconds",
            "Time a request waited for a segmentation product that was not in the cache.",
            namespace=NAMESPACE,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.segmentation_dropped = Counter(
            "segmentation_dropped",
            "Queued segmentation products dropped unstarted: every request waiting for them "
            "was cancelled or ran out of time.",
            namespace=NAMESPACE,
            registry=r,
        )
        self.segmentation_device_fallbacks = Counter(
            "segmentation_device_fallbacks",
            "Times GPU segmentation failed and the server moved segmentation to the CPU.",
            namespace=NAMESPACE,
            registry=r,
        )
        self.provider_fallback = Gauge(
            "provider_fallback",
            "1 when a version serves without an accelerator provider it was configured for "
            "(e.g. CUDA missing: a GPU deployment serving on CPU).",
            ["model", "version", "missing"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.warmup_seconds = Gauge(
            "model_warmup_seconds",
            "Seconds the last load's warm-up of a version took (before it was marked ready).",
            ["model", "version"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.warmup_runs = Counter(
            "model_warmup_runs",
            "Paths a version's warm-up ran before it was marked ready (forward, "
            "segmentation_workers, torch_pool, method:<name>), by outcome (ok, failed, skipped).",
            ["model", "version", "path", "outcome"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.remote_circuit_state = Gauge(
            "remote_circuit_state",
            "Circuit breaker toward a remote (OIP) backend: 0 closed, 1 open, 2 half-open.",
            ["model", "version"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.remote_ready = Gauge(
            "remote_ready",
            "Whether the remote (OIP) server says the model is ready (ModelReady): 1 or 0.",
            ["model", "version"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.remote_calls_total = Counter(
            "remote_calls",
            "ModelInfer attempts toward a remote (OIP) backend, by gRPC status code.",
            ["model", "version", "code"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.operations = Gauge(
            "operations",
            "Long-running operations by kind and state, fleet-wide (read from the state store).",
            ["kind", "state"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.operations_stored = Gauge(
            "operations_stored",
            "Operation records in the state store, fleet-wide (bounded by retention).",
            namespace=NAMESPACE,
            registry=r,
        )
        self.chunks_pending = Gauge(
            "operation_chunks_pending",
            "Chunks of running operations not yet done, fleet-wide (the HPA scales on it).",
            namespace=NAMESPACE,
            registry=r,
        )
        self.chunks_total = Counter(
            "operation_chunks",
            "Chunks this replica ran, by outcome (done, cancelled, failed).",
            ["outcome"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.state_store_up = Gauge(
            "state_store_up",
            "1 when this replica reached the state store at its last attempt, else 0.",
            namespace=NAMESPACE,
            registry=r,
        )


def metric_names(metrics: Metrics) -> list[str]:
    """Every exported sample family name (with namespace), for docs and deployment checks."""
    return sorted({family.name for family in metrics.registry.collect()})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    _RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._RESERVED and not key.startswith("_"):
                entry[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
