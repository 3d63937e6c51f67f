"""Server settings: defaults, overridden by ``XAISERVE_*`` environment variables, then flags.

Every field's environment variable is ``XAISERVE_`` + the field name in upper case (e.g.
``XAISERVE_MAX_QUEUED_IMAGES``). Booleans accept 1/0, true/false, yes/no, on/off.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

ENV_PREFIX = "XAISERVE_"
DEFAULT_PORT = 50051
DEFAULT_METRICS_PORT = 9464
MAX_INFERENCE_WORKERS = 64
"""Upper bound on ``inference_workers`` (and a model's ``[execution] workers``): each worker is
a thread holding its own onnxruntime session, so more than this is a mistake, not a machine."""


def _default_data_dir() -> str:
    """``$XDG_DATA_HOME/xaiserve`` (``~/.local/share/xaiserve``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "xaiserve")


#: Where an installed server (a wheel, the Docker image) looks for models when neither
#: ``XAISERVE_MODELS_DIR`` nor ``--models`` names a repository: the image's volume.
INSTALLED_MODELS_DIR = "/models"


def default_models_dir() -> tuple[str, str]:
    """The ``models_dir`` used when nothing sets one, and why: a source checkout (this module
    under a folder with ``pyproject.toml`` and ``models/``) serves its bundled ``models/``;
    an installed server uses :data:`INSTALLED_MODELS_DIR`."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "models").is_dir() and (parent / "pyproject.toml").is_file():
            return str(parent / "models"), "default: the source checkout's bundled models/"
    return INSTALLED_MODELS_DIR, "default for an installed server"


def models_dir_origin(models_dir: str, environ: Mapping[str, str] | None = None) -> str:
    """Where ``models_dir`` came from, for the startup log line."""
    env = os.environ if environ is None else environ
    if env.get(ENV_PREFIX + "MODELS_DIR") == models_dir:
        return f"from {ENV_PREFIX}MODELS_DIR"
    default, why = default_models_dir()
    if models_dir == default:
        return f"{why}; set {ENV_PREFIX}MODELS_DIR or --models to change it"
    return "set by --models (or the caller's Settings)"


@dataclass(frozen=True)
class Settings:
    """Everything an operator can set. See README "Configuration reference"."""

    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    metrics_port: int = DEFAULT_METRICS_PORT  # 0 disables the metrics HTTP server
    models_dir: str = field(default_factory=lambda: default_models_dir()[0])
    reflection: bool = True
    worker_threads: int = 0  # gRPC handler threads; 0 = every admission slot + 16 spare
    max_concurrent_requests: int = 24  # expensive RPCs at once (Explain, Score, operations)
    max_concurrent_cheap: int = 32  # cheap RPCs at once (Predict, look-ups, Get/Cancel operation)
    # admitted Explain/Score calls running at once, the rest wait their turn in arrival order;
    # 0 = 2 × the CPUs this process may use, at most max_concurrent_requests
    max_running_requests: int = 0
    max_watchers: int = 32  # open WatchOperation streams (they hold no request slot)
    stream_idle_seconds: float = 60.0  # a client stream silent this long is ended (0 = never)
    max_rpcs: int = 0  # gRPC-level backstop incl. health checks; 0 = all slots × 2 + 16
    max_queued_images: int = 4096  # images waiting in all batch queues; more → RESOURCE_EXHAUSTED
    max_forward_passes: int = 200_000  # per request (cost estimate before any work starts)
    max_request_bytes: int = 1024 * 2**20  # per request: a method's declared peak memory
    memory_budget_bytes: int = 4096 * 2**20  # all running requests' declared memory together
    torch_batch_bytes: int = 256 * 2**20  # memory budget of one batch through a torch module
    max_message_bytes: int = 32 * 1024 * 1024
    max_image_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 0  # 0 = sized to the models served (see effective_max_image_pixels)
    allowed_image_formats: tuple[str, ...] = ("PNG", "JPEG")
    max_stream_images: int = 10_000  # items per streaming RPC / data-set operation
    intra_op_threads: int = 0  # onnxruntime threads per session; 0 = its cores, ≤ the CPU quota
    # batches a local model version runs at once (concurrent runs of its onnxruntime session);
    # with intra_op_threads = 1, one per core runs light networks one batch per core
    inference_workers: int = 1
    # threads of Predict's own onnxruntime session per local CPU model version (its lane never
    # waits behind explanation batches); 0 = no own session, Predict's lane shares the main one
    interactive_threads: int = 1
    # numpy's BLAS pool (OpenBLAS); requests, not matrix products, are the unit of parallelism
    # here; 0 = the library's default (one per core)
    numpy_blas_threads: int = 1
    providers: tuple[str, ...] = ()  # onnxruntime providers; empty = best available
    torch_copies: int = 2  # module copies per model for white-box methods
    # randomisation test: (seed, stops) sets of randomised variants cached per model version
    randomisation_variant_sets: int = 2
    drain_seconds: float = 25.0  # SIGTERM: time in-flight requests get to finish
    model_poll_seconds: float = 0.0  # rescan the repository this often (0 = only on SIGHUP)
    log_level: str = "INFO"
    log_format: str = "json"  # json | text
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""  # set → mutual TLS (client certificates required)
    auth_tokens_file: str = ""  # one bearer token per line; set → auth required
    datasets_dir: str = ""  # server-side data-set folders for EvaluateDataset/FitGad ("" = none)
    segmentation_cache_bytes: int = 256 * 1024 * 1024  # LRU bound of the label cache; 0 = off
    segmentation_workers: int = 0  # threads that segment; 0 = half the usable CPUs (at least 1)
    # cpu | gpu | auto: SLIC on CUDA is opt-in and unverified on real GPUs; gpu/auto check it
    # against scikit-image at start and fall back to the CPU with a warning
    segmentation_device: str = "cpu"
    otlp_endpoint: str = ""  # OpenTelemetry traces over OTLP/gRPC to this URL ("" = tracing off)
    trace_sample_ratio: float = 1.0  # fraction of new traces sampled (a caller's decision wins)
    warmup: bool = True  # at load: forward passes, torch pool, one run of each method (readiness after)
    warmup_budget_seconds: float = 120.0  # bound of one version's warm-up; what is left is skipped
    # -- fleet: shared state, chunked work, artifacts (README "Running a fleet") --
    data_dir: str = field(default_factory=_default_data_dir)  # SQLite state + default artifacts
    state_url: str = ""  # postgresql://… for a fleet; "" = SQLite file <data_dir>/state.db
    artifacts: str = ""  # writable artifact location; "" = <data_dir>/artifacts
    operation_workers: int = 2  # chunk workers of this replica (0 = this replica runs no chunks)
    chunk_seconds: float = 2.0  # target compute per data-set evaluation chunk (sized by cost)
    chunk_items: int = 0  # images per chunk; 0 = sized from the cost estimate (chunk_seconds)
    lease_seconds: float = 30.0  # a chunk whose worker stopped heartbeating is re-claimed after this
    max_active_operations: int = 16  # pending + running operations, fleet-wide
    operations_retention_count: int = 10_000  # ended operations kept (newest first); 0 = no limit
    operations_retention_days: float = 30.0  # ended operations older than this are deleted; 0 = keep
    admin_tokens_file: str = ""  # tokens (one per line) that see every caller's operations

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults ← environment ← ``overrides`` (flags). Unknown overrides raise TypeError."""
        env = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = ENV_PREFIX + f.name.upper()
            if key in env:
                values[f.name] = parse_value(hints[f.name], env[key], key)
        for name, value in overrides.items():
            if name not in hints:
                raise TypeError(f"unknown setting {name!r}")
            if value is not None:
                values[name] = value
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for name in (
            "max_concurrent_requests",
            "max_concurrent_cheap",
            "max_watchers",
            "max_queued_images",
            "max_forward_passes",
            "max_message_bytes",
            "max_image_bytes",
            "torch_copies",
            "randomisation_variant_sets",
            "max_request_bytes",
            "memory_budget_bytes",
            "torch_batch_bytes",
            "max_active_operations",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"setting {name} must be at least 1")
        if self.worker_threads < 0 or self.stream_idle_seconds < 0:
            raise ValueError("settings worker_threads and stream_idle_seconds must not be negative")
        if self.max_image_pixels < 0:
            raise ValueError("setting max_image_pixels must be 0 (auto) or positive")
        if self.max_request_bytes > self.memory_budget_bytes:
            raise ValueError("setting max_request_bytes must not exceed memory_budget_bytes")
        for name in (
            "max_running_requests",
            "operation_workers",
            "operations_retention_count",
            "chunk_items",
            "interactive_threads",
            "numpy_blas_threads",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"setting {name} must be at least 0")
        if not self.chunk_seconds > 0:
            raise ValueError("setting chunk_seconds must be greater than 0")
        if not self.lease_seconds >= 1.0:
            raise ValueError("setting lease_seconds must be at least 1")
        if not self.warmup_budget_seconds >= 0:
            raise ValueError("setting warmup_budget_seconds must be at least 0 (0 = forward only)")
        if not self.operations_retention_days >= 0:
            raise ValueError("setting operations_retention_days must be at least 0 (0 = keep)")
        if self.state_url and not self.state_url.startswith(
            ("postgresql://", "postgres://", "sqlite://")
        ):
            raise ValueError("setting state_url must be postgresql://… or sqlite:///path")
        if self.max_rpcs and self.max_rpcs < self.max_concurrent_requests:
            raise ValueError(
                "setting max_rpcs must be 0 (auto) or at least max_concurrent_requests"
            )
        if not 0 <= self.port < 65536 or not 0 <= self.metrics_port < 65536:
            raise ValueError("ports must be within 0..65535")
        if not 1 <= self.inference_workers <= MAX_INFERENCE_WORKERS:
            raise ValueError(f"setting inference_workers must be in 1..{MAX_INFERENCE_WORKERS}")
        if self.segmentation_cache_bytes < 0 or self.segmentation_workers < 0:
            raise ValueError(
                "settings segmentation_cache_bytes and segmentation_workers must not be negative"
            )
        if self.segmentation_device not in ("auto", "cpu", "gpu"):
            raise ValueError("setting segmentation_device must be 'auto', 'cpu' or 'gpu'")
        if self.log_format not in ("json", "text"):
            raise ValueError("setting log_format must be 'json' or 'text'")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("settings tls_cert and tls_key must be given together")
        if not 0.0 <= self.trace_sample_ratio <= 1.0:
            raise ValueError("setting trace_sample_ratio must be within 0..1")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("setting tls_client_ca needs tls_cert and tls_key")

    @property
    def admission_slots(self) -> int:
        """Every call the admission pools can hold at once (watchers included)."""
        return self.max_concurrent_requests + self.max_concurrent_cheap + self.max_watchers

    @property
    def handler_threads(self) -> int:
        """gRPC handler threads: ``worker_threads``, or every admission slot plus spare
        threads that answer refusals quickly."""
        return self.worker_threads or self.admission_slots + 16

    @property
    def artifacts_root(self) -> str:
        """The artifact location: ``artifacts``, or ``<data_dir>/artifacts``."""
        return self.artifacts or str(Path(self.data_dir) / "artifacts")

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def env_names() -> dict[str, str]:
    """Field name → environment variable, for docs and deployment checks."""
    return {f.name: ENV_PREFIX + f.name.upper() for f in fields(Settings)}


def parse_value(hint: Any, raw: str, key: str) -> Any:
    text = raw.strip()
    if hint is bool or hint == "bool":
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{key}={raw!r} is not a boolean")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{key}={raw!r} is not an integer") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{key}={raw!r} is not a number") from None
    if getattr(hint, "__origin__", None) is tuple:
        return tuple(p.strip() for p in text.split(",") if p.strip())
    return text
