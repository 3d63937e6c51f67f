"""Server start and stop: ``create_server(settings) -> (server, port)`` and ``serve(settings)``.

Lifecycle: the gRPC port opens at once with health NOT_SERVING; models load in the background
and the state store is connected and migrated in the background (retrying with backoff while it
is unreachable, logging why); health turns SERVING when every model has loaded or failed (the
failure is logged and shown by ``GetModel``) *and* the store is ready. Chunk workers start then. On SIGTERM/SIGINT health flips to NOT_SERVING at once, new RPCs get UNAVAILABLE,
in-flight RPCs get up to ``drain_seconds`` to finish, then the process exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, start_http_server

from xaiserve.api.interceptors import Admission, ServiceInterceptor, TokenAuthInterceptor
from xaiserve.api.owners import Owners, read_tokens
from xaiserve.api.servicer import ExplainServicer
from xaiserve.config import Settings, models_dir_origin
from xaiserve.imaging.decode import ImageLimits
from xaiserve.imaging.segmenter import Segmenter, install_segmenter, uninstall_segmenter
from xaiserve.jobs.fleet import Fleet
from xaiserve.models.repository import ModelRepository
from xaiserve.observability import Metrics, configure_logging
from xaiserve.runtime import context as rctx
from xaiserve.runtime.batcher import ImageBudget
from xaiserve.runtime.cpus import available_cpus, half_the_cpus
from xaiserve.runtime.thread_pools import cap_torch_threads, configure_thread_pools
from xaiserve_client.v1 import explain_pb2, explain_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = explain_pb2.DESCRIPTOR.services_by_name["ExplainService"].full_name
HEALTH_SERVICES = ("", SERVICE_NAME)
MODEL_HEALTH_PREFIX = "model/"  # per-model health: "model/<name>" (a remote backend's state)


class XaiServer:
    """The running server and the parts tests and the lifecycle need to reach."""

    def __init__(
        self,
        settings: Settings,
        grpc_server: grpc.Server,
        port: int,
        metrics: Metrics,
        repository: ModelRepository,
        fleet: Fleet,
        health_servicer: health.HealthServicer,
        admission: Admission,
        segmenter: Segmenter,
        service: ServiceInterceptor,
    ) -> None:
        self.settings = settings
        self.service = service
        self.segmenter = segmenter
        self.grpc_server = grpc_server
        self.port = port
        self.metrics = metrics
        self.repository = repository
        self.fleet = fleet
        self.operations = fleet.operations
        self.health = health_servicer
        self.admission = admission
        self.metrics_http: Any = None
        self._loader: threading.Thread | None = None
        self._stopped = threading.Event()
        self._ready_lock = threading.Lock()
        self._serving = False

    def _serving_if_ready(self) -> None:
        with self._ready_lock:
            if (
                self.repository.loaded.is_set()
                and self.fleet.ready.is_set()
                and not self.admission.draining.is_set()
                and not self._serving
            ):
                self._serving = True
                for name in HEALTH_SERVICES:
                    self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
                log.info("ready", extra={"models": len(self.repository.ready_models())})

    def load_models(self, wait: bool) -> None:
        def load() -> None:
            self.repository.load_all()
            self._serving_if_ready()  # SERVING once the state store is ready too
            self._update_model_health()
            threading.Thread(
                target=self._watch_model_health, name="model-health", daemon=True
            ).start()

        self.fleet.start(self._serving_if_ready, self.repository.loaded)
        self._loader = threading.Thread(target=load, name="model-loader", daemon=True)
        self._loader.start()
        if wait:
            self._loader.join()
            self.fleet.ready.wait()

    def _update_model_health(self) -> None:
        """``model/<name>`` is SERVING while some version of it can serve: loaded, and for a
        remote backend the remote says ready and its circuit is closed."""
        for entry in self.repository.entries():
            serving = any(
                v.model is not None and not v.model.state_error() for v in entry.versions.values()
            )
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            self.health.set(MODEL_HEALTH_PREFIX + entry.name, status)

    def _watch_model_health(self, every: float = 1.0) -> None:
        while not self._stopped.wait(every):
            if not self.admission.draining.is_set():
                self._update_model_health()

    def watch_models(self, every: float) -> None:
        """Rescan the repository every ``every`` seconds (changed files reload atomically)."""

        def loop() -> None:
            self.repository.loaded.wait()
            while not self._stopped.wait(every):
                try:
                    self.repository.scan()
                except Exception:
                    log.exception("repository scan failed")

        threading.Thread(target=loop, name="model-watcher", daemon=True).start()

    def begin_drain(self) -> None:
        """Health NOT_SERVING and refuse new RPCs; in-flight ones continue."""
        self.admission.draining.set()
        self.health.enter_graceful_shutdown()

    def stop(self, grace: float | None = None) -> None:
        """Drain (up to ``grace`` or ``drain_seconds``), then stop everything. Idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.begin_drain()
        budget = self.settings.drain_seconds if grace is None else grace
        drained = self.admission.wait_idle(budget)
        if not drained:
            log.warning("drain time over with %d requests still running", self.admission.active)
        # Running chunks are released for another replica (or this one after a restart) to
        # resume; their operations say "interrupted by shutdown".
        self.fleet.stop()
        self.grpc_server.stop(grace=0.5).wait()
        self.service.close()
        self.repository.close()
        uninstall_segmenter(self.segmenter)
        self.segmenter.close()
        if self.metrics_http is not None:
            self.metrics_http.shutdown()

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.tls_cert:
        return None
    key = Path(settings.tls_key).read_bytes()
    cert = Path(settings.tls_cert).read_bytes()
    client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def create_server(
    settings: Settings, registry: CollectorRegistry | None = None, *, wait_ready: bool = True
) -> tuple[XaiServer, int]:
    """Build, bind and start the server; returns it and the bound port (port 0 → a free one)."""
    configure_thread_pools(settings.numpy_blas_threads)
    cap_torch_threads()
    metrics = Metrics(registry)
    segmenter = Segmenter(
        cache_bytes=settings.segmentation_cache_bytes,
        workers=settings.segmentation_workers or half_the_cpus(),
        device=settings.segmentation_device,  # type: ignore[arg-type]  # validated by Settings
        metrics=metrics,
        scope=rctx.current,
    )
    install_segmenter(segmenter)
    admission = Admission(
        settings.max_concurrent_requests, settings.max_concurrent_cheap, settings.max_watchers
    )
    interceptors: list[grpc.ServerInterceptor] = []
    admin_tokens = read_tokens(settings.admin_tokens_file)
    if settings.auth_tokens_file:
        tokens = read_tokens(settings.auth_tokens_file) + admin_tokens
        interceptors.append(TokenAuthInterceptor(tokens, metrics))
    running = settings.max_running_requests or 2 * available_cpus()
    service = ServiceInterceptor(metrics, admission, settings.stream_idle_seconds, running)
    log.info(
        "admission: %d expensive calls admitted, %d running at once, %d cheap",
        settings.max_concurrent_requests,
        service.running,
        settings.max_concurrent_cheap,
    )
    interceptors.append(service)
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.handler_threads, thread_name_prefix="rpc"),
        interceptors=interceptors,
        options=options,
        # A backstop above our own exact admission: gRPC refuses the excess in its accept loop,
        # so under heavy overload calls do not pile up in gRPC core's pending queue, where core
        # sheds them with CANCELLED (its backlog protection) before our interceptor sees them.
        maximum_concurrent_rpcs=settings.max_rpcs or 2 * settings.admission_slots + 16,
    )
    budget = ImageBudget(settings.max_queued_images)
    log.info(
        "model repository %s (%s)",
        settings.models_dir,
        models_dir_origin(settings.models_dir),
        extra={"models_dir": settings.models_dir},
    )
    repository = ModelRepository(settings.models_dir, settings, metrics, budget)
    limits = ImageLimits(
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        formats=tuple(settings.allowed_image_formats),
    )
    fleet = Fleet(settings, metrics, repository, limits)
    servicer = ExplainServicer(
        settings,
        repository,
        fleet.operations,
        Owners(auth=bool(settings.auth_tokens_file), admin_tokens=admin_tokens),
    )
    explain_pb2_grpc.add_ExplainServiceServicer_to_server(servicer, grpc_server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    for name in HEALTH_SERVICES:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    if settings.reflection:
        from grpc_reflection.v1alpha import reflection

        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server
        )
    address = f"{settings.host}:{settings.port}"
    credentials = _credentials(settings)
    port = (
        grpc_server.add_secure_port(address, credentials)
        if credentials is not None
        else grpc_server.add_insecure_port(address)
    )
    if port == 0:
        raise OSError(f"could not bind {address}")
    grpc_server.start()
    server = XaiServer(
        settings,
        grpc_server,
        port,
        metrics,
        repository,
        fleet,
        health_servicer,
        admission,
        segmenter,
        service,
    )
    if settings.metrics_port:
        httpd, _ = start_http_server(
            settings.metrics_port, addr=settings.host, registry=metrics.registry
        )
        server.metrics_http = httpd
    log.info("listening", extra={"address": address, "port": port, "tls": credentials is not None})
    server.load_models(wait=wait_ready)
    if settings.model_poll_seconds > 0:
        server.watch_models(settings.model_poll_seconds)
    return server, port


def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT, drain, exit code 0."""
    configure_logging(settings.log_level, settings.log_format)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: draining", signal.Signals(signum).name)
        stop.set()

    rescan = threading.Event()

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        rescan.set()

    # Handlers go in before the (slow) model loading so an early SIGTERM still drains cleanly.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    server, port = create_server(settings, wait_ready=False)
    print(f"xaiserve listening on {settings.host}:{port}", flush=True)
    while not stop.wait(0.5):
        if rescan.is_set() and server.repository.loaded.is_set():
            rescan.clear()
            log.info("SIGHUP: rescanning the model repository")
            server.repository.scan()
    started = time.monotonic()
    server.stop()
    log.info("stopped", extra={"drain_seconds": round(time.monotonic() - started, 3)})
    return 0


def serve_and_exit(settings: Settings) -> NoReturn:
    """``serve``, then leave the process at once.

    Everything is drained, persisted and closed when ``serve`` returns; what is left is native
    library teardown (torch, gRPC core), which takes seconds and can hold up a rolling update.
    """
    code = serve(settings)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
