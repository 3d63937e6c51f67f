"""Per-model configuration: ``models/<name>/<version>/config.toml``.

Validated at load; every error names the file and the field, e.g.
``models/shapes/1/config.toml: input.layout must be "NCHW" or "NHWC", not "CHW"``.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from xaiserve.config import MAX_INFERENCE_WORKERS
from xaiserve.contracts.input import InputConfig
from xaiserve.runtime.oip_config import OIP_DATATYPES, OipConfig

CONFIG_FILE = "config.toml"
MODEL_FILE = "model.onnx"

MAX_SIDE = 8192
"""Upper bound on ``input.height`` and ``input.width``."""

MAX_INPUT_PIXELS = 2048 * 2048
"""Upper bound on ``input.height × input.width`` (one float32 image is then 48 MiB; every
method holds several, and the load check runs one through the network)."""

MAX_LABELS = 100_000
MAX_BATCH_SIZE = 4096
MAX_QUEUE_DELAY_MS = 1000.0


class ConfigError(ValueError):
    """A model folder whose configuration is missing or invalid."""


@dataclass(frozen=True)
class OutputConfig:
    labels: tuple[str, ...]
    kind: Literal["logits", "probabilities"] = "logits"


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0


@dataclass(frozen=True)
class ExecutionConfig:
    """``[execution]``: how a local onnxruntime version runs its batches, overriding the server's
    ``intra_op_threads`` and ``inference_workers`` for this model (0 = the server's setting).

    Light networks run best as one single-threaded batch per core (``intra_op_threads = 1``,
    ``workers`` = cores): a batch split across the cores waits at every operator for the core
    that segmentation or another request holds. Heavy networks gain from intra-op threads, so
    the choice is the model's, like Triton's per-model instance groups.
    """

    intra_op_threads: int = 0
    workers: int = 0


@dataclass(frozen=True)
class TorchConfig:
    """An operator-registered PyTorch module: ``entry_point`` = ``"package.module:factory"``
    (called with no arguments, returns an ``nn.Module``), ``weights`` = a state-dict file in
    the version folder loaded with ``torch.load(weights_only=True)``."""

    entry_point: str
    weights: str


@dataclass(frozen=True)
class BackendConfig:
    """``[backend]``: ``kind = "onnx"`` (local onnxruntime, the default) or ``"oip"``."""

    kind: Literal["onnx", "oip"] = "onnx"
    oip: OipConfig | None = None


@dataclass(frozen=True)
class ModelConfig:
    input: InputConfig
    output: OutputConfig
    batching: BatchingConfig = BatchingConfig()
    execution: ExecutionConfig = ExecutionConfig()
    torch: TorchConfig | None = None
    backend: BackendConfig = BackendConfig()
    description: str = ""
    sha256: str = ""  # optional pin: the model file must have this SHA-256


def load_config(path: Path) -> ModelConfig:
    """Parse and validate a ``config.toml``; raises :class:`ConfigError` naming file and field."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: file missing (every model version needs {CONFIG_FILE})"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(raw, str(path))


def parse_config(raw: dict[str, Any], where: str) -> ModelConfig:
    r = _Reader(raw, where)
    known_top = {
        "description",
        "sha256",
        "input",
        "output",
        "batching",
        "execution",
        "torch",
        "backend",
    }
    r.no_unknown(raw, known_top, "")
    inp = r.table("input", required=True)
    r.no_unknown(
        inp,
        {
            "name",
            "height",
            "width",
            "layout",
            "channel_order",
            "resize",
            "value_range",
            "mean",
            "std",
        },
        "input.",
    )
    value_range = cast(Any, r.floats(inp, "input.value_range", 2, (0.0, 1.0)))
    if value_range[0] >= value_range[1]:
        r.fail("input.value_range", "must be [low, high] with low < high")
    std = cast(Any, r.floats(inp, "input.std", 3, (1.0, 1.0, 1.0)))
    if any(s <= 0 for s in std):
        r.fail("input.std", "every value must be positive")
    # Every field is checked above (naming the file and field), so building the validated
    # InputConfig (which is the model's Preprocessing) cannot fail here.
    input_cfg = InputConfig(
        height=r.positive_int(inp, "input.height"),
        width=r.positive_int(inp, "input.width"),
        name=r.string(inp, "input.name", ""),
        layout=cast(Any, r.choice(inp, "input.layout", ("NCHW", "NHWC"), "NCHW")),
        channel_order=cast(Any, r.choice(inp, "input.channel_order", ("RGB", "BGR"), "RGB")),
        resize=cast(Any, r.choice(inp, "input.resize", ("stretch", "center_crop"), "stretch")),
        value_range=value_range,
        mean=cast(Any, r.floats(inp, "input.mean", 3, (0.0, 0.0, 0.0))),
        std=std,
    )
    for side in ("height", "width"):
        if getattr(input_cfg, side) > MAX_SIDE:
            r.fail(f"input.{side}", f"must be at most {MAX_SIDE}, not {getattr(input_cfg, side)}")
    if input_cfg.height * input_cfg.width > MAX_INPUT_PIXELS:
        r.fail(
            "input.height",
            f"× input.width is {input_cfg.height * input_cfg.width} pixels; the limit is "
            f"{MAX_INPUT_PIXELS} (2048 × 2048)",
        )
    if not all(map(math.isfinite, (*input_cfg.value_range, *input_cfg.mean, *input_cfg.std))):
        r.fail("input", "value_range, mean and std must be finite numbers")
    out = r.table("output", required=True)
    r.no_unknown(out, {"kind", "labels"}, "output.")
    labels: Any = out.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        r.fail("output.labels", "must be a non-empty list of strings")
    if len(labels) > MAX_LABELS:
        r.fail("output.labels", f"has {len(labels)} labels; the limit is {MAX_LABELS}")
    if len(set(labels)) != len(labels):
        r.fail("output.labels", "must not repeat a label")
    output_cfg = OutputConfig(
        labels=tuple(labels),
        kind=cast(Any, r.choice(out, "output.kind", ("logits", "probabilities"), "logits")),
    )
    bat = r.table("batching", required=False)
    r.no_unknown(bat, {"max_batch_size", "max_queue_delay_ms"}, "batching.")
    batching = BatchingConfig(
        max_batch_size=r.positive_int(bat, "batching.max_batch_size", 32),
        max_queue_delay_ms=r.nonnegative_float(bat, "batching.max_queue_delay_ms", 2.0),
    )
    if batching.max_batch_size > MAX_BATCH_SIZE:
        r.fail("batching.max_batch_size", f"must be at most {MAX_BATCH_SIZE}")
    if batching.max_queue_delay_ms > MAX_QUEUE_DELAY_MS:
        r.fail("batching.max_queue_delay_ms", f"must be at most {MAX_QUEUE_DELAY_MS:g}")
    execution = _execution(r)
    torch_cfg = None
    tor = r.table("torch", required=False)
    if tor:
        r.no_unknown(tor, {"entry_point", "weights"}, "torch.")
        entry = r.string(tor, "torch.entry_point", "")
        if ":" not in entry:
            r.fail("torch.entry_point", 'must look like "package.module:factory"')
        weights = r.string(tor, "torch.weights", "")
        if not weights or "/" in weights or "\\" in weights or weights.startswith("."):
            r.fail("torch.weights", "must be a file name inside the version folder")
        torch_cfg = TorchConfig(entry_point=entry, weights=weights)
    sha256 = r.string(raw, "sha256", "").lower()
    if sha256 and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256)):
        r.fail("sha256", "must be 64 hexadecimal digits")
    backend = _backend(r)
    if backend.kind != "onnx" and execution != ExecutionConfig():
        r.fail(
            "[execution]",
            "applies to a local onnxruntime model; a remote model's concurrency is "
            "backend.max_concurrency",
        )
    return ModelConfig(
        input=input_cfg,
        output=output_cfg,
        batching=batching,
        execution=execution,
        torch=torch_cfg,
        backend=backend,
        description=r.string(raw, "description", ""),
        sha256=sha256,
    )


_OIP_FIELDS = {
    "kind",
    "url",
    "model_name",
    "model_version",
    "input_name",
    "input_datatype",
    "output_name",
    "output_datatype",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "tls_server_name",
    "token_file",
    "timeout_ms",
    "max_batch_size",
    "max_concurrency",
    "max_attempts",
    "backoff_ms",
    "circuit_failures",
    "circuit_reset_ms",
    "probe_interval_ms",
}


MAX_EXECUTION_WORKERS = MAX_INFERENCE_WORKERS
"""The server's own bound on ``inference_workers``."""

MAX_INTRA_OP_THREADS = 1024
"""Upper bound on ``execution.intra_op_threads``: far above any machine's cores, low enough that
a typo (an extra digit or two) is refused at load instead of spawning thousands of threads."""


def _execution(r: _Reader) -> ExecutionConfig:
    e = r.table("execution", required=False)
    r.no_unknown(e, {"intra_op_threads", "workers"}, "execution.")
    threads = r.nonnegative_int(e, "execution.intra_op_threads", 0)
    workers = r.nonnegative_int(e, "execution.workers", 0)
    if threads > MAX_INTRA_OP_THREADS:
        r.fail("execution.intra_op_threads", f"must be at most {MAX_INTRA_OP_THREADS}")
    if workers > MAX_EXECUTION_WORKERS:
        r.fail("execution.workers", f"must be at most {MAX_EXECUTION_WORKERS}")
    return ExecutionConfig(intra_op_threads=threads, workers=workers)


def _backend(r: _Reader) -> BackendConfig:
    b = r.table("backend", required=False)
    kind = r.choice(b, "backend.kind", ("onnx", "oip"), "onnx")
    if kind == "onnx":
        r.no_unknown(b, {"kind"}, "backend.")
        return BackendConfig()
    r.no_unknown(b, _OIP_FIELDS, "backend.")
    url = r.string(b, "backend.url", "")
    scheme, sep, rest = url.rpartition("://")
    if not url or (sep and scheme not in ("grpc", "grpcs")) or ":" not in rest or "/" in rest:
        r.fail(
            "backend.url",
            f'must be "host:port", "grpc://host:port" or "grpcs://host:port", not {url!r}',
        )
    model_name = r.string(b, "backend.model_name", "")
    if not model_name:
        r.fail("backend.model_name", "is required (the model's name on the remote server)")
    datatypes = {}
    for key in ("input_datatype", "output_datatype"):
        value = r.string(b, f"backend.{key}", "").upper()
        if value and value not in OIP_DATATYPES:
            r.fail(f"backend.{key}", f"must be one of {', '.join(OIP_DATATYPES)}, not {value!r}")
        datatypes[key] = value
    tls_files = {
        k: r.string(b, f"backend.{k}", "") for k in ("tls_ca_file", "tls_cert_file", "tls_key_file")
    }
    tls = scheme == "grpcs"
    if not tls and any(tls_files.values()):
        r.fail("backend.url", "must start with grpcs:// when TLS files are given")
    if bool(tls_files["tls_cert_file"]) != bool(tls_files["tls_key_file"]):
        r.fail("backend.tls_cert_file", "and backend.tls_key_file must be given together")
    oip = OipConfig(
        url=url,
        model_name=model_name,
        model_version=r.string(b, "backend.model_version", ""),
        input_name=r.string(b, "backend.input_name", ""),
        input_datatype=datatypes["input_datatype"],
        output_name=r.string(b, "backend.output_name", ""),
        output_datatype=datatypes["output_datatype"],
        tls=tls,
        tls_server_name=r.string(b, "backend.tls_server_name", ""),
        token_file=r.string(b, "backend.token_file", ""),
        timeout_ms=r.positive_float(b, "backend.timeout_ms", 30_000.0),
        max_batch_size=r.nonnegative_int(b, "backend.max_batch_size", 0),
        max_concurrency=r.positive_int(b, "backend.max_concurrency", 4),
        max_attempts=r.positive_int(b, "backend.max_attempts", 4),
        backoff_ms=r.nonnegative_float(b, "backend.backoff_ms", 50.0),
        circuit_failures=r.positive_int(b, "backend.circuit_failures", 5),
        circuit_reset_ms=r.positive_float(b, "backend.circuit_reset_ms", 5_000.0),
        probe_interval_ms=r.positive_float(b, "backend.probe_interval_ms", 2_000.0),
        **tls_files,
    )
    return BackendConfig(kind="oip", oip=oip)


class _Reader:
    def __init__(self, raw: dict[str, Any], where: str) -> None:
        self.raw = raw
        self.where = where

    def fail(self, field: str, message: str) -> Any:
        raise ConfigError(f"{self.where}: {field} {message}")

    def no_unknown(self, table: dict[str, Any], known: set[str], prefix: str) -> None:
        for key in table:
            if key not in known:
                self.fail(
                    f"{prefix}{key}", f"is not a known field (known: {', '.join(sorted(known))})"
                )

    def table(self, key: str, required: bool) -> dict[str, Any]:
        value = self.raw.get(key)
        if value is None:
            if required:
                self.fail(f"[{key}]", "section is missing")
            return {}
        if not isinstance(value, dict):
            self.fail(key, "must be a table")
        return cast(dict[str, Any], value)

    def _get(self, table: dict[str, Any], field: str) -> Any:
        return table.get(field.rsplit(".", 1)[-1])

    def string(self, table: dict[str, Any], field: str, default: str) -> str:
        value = self._get(table, field)
        if value is None:
            return default
        if not isinstance(value, str):
            self.fail(field, "must be a string")
        return cast(str, value)

    def choice(
        self, table: dict[str, Any], field: str, options: tuple[str, ...], default: str
    ) -> str:
        value = self.string(table, field, default)
        if value not in options:
            self.fail(field, f"must be one of {', '.join(repr(o) for o in options)}, not {value!r}")
        return value

    def positive_int(self, table: dict[str, Any], field: str, default: int | None = None) -> int:
        value = self._get(table, field)
        if value is None:
            if default is None:
                self.fail(field, "is required")
            return cast(int, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(field, f"must be a positive integer, not {value!r}")
        return cast(int, value)

    def nonnegative_float(self, table: dict[str, Any], field: str, default: float) -> float:
        value = self._get(table, field)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            self.fail(field, f"must be a non-negative number, not {value!r}")
        return float(value)

    def positive_float(self, table: dict[str, Any], field: str, default: float) -> float:
        value = self.nonnegative_float(table, field, default)
        if value <= 0:
            self.fail(field, f"must be a positive number, not {value!r}")
        return value

    def nonnegative_int(self, table: dict[str, Any], field: str, default: int) -> int:
        value = self._get(table, field)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(field, f"must be a non-negative integer, not {value!r}")
        return value

    def floats(
        self, table: dict[str, Any], field: str, n: int, default: tuple[float, ...]
    ) -> tuple[float, ...]:
        value = self._get(table, field)
        if value is None:
            return default
        if (
            not isinstance(value, list)
            or len(value) != n
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            self.fail(field, f"must be a list of {n} numbers, not {value!r}")
        return tuple(float(v) for v in value)
