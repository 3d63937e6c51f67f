"""A model served elsewhere, reached over the Open Inference Protocol (KServe v2 gRPC).

Triton, KServe and MLServer all speak it. xaiserve keeps its own preprocessing and batching:
each batch the dynamic batcher forms becomes one ``ModelInfer`` whose input carries the batch
dimension. Around that call:

- **Deadlines.** Every attempt's timeout is the smaller of ``timeout_ms`` and what is left of
  the latest deadline among the batch's requests, so the remote stops when nobody waits.
- **Retries.** UNAVAILABLE and attempt time-outs are retried with exponential backoff and jitter
  while the deadline allows (at most ``max_attempts`` tries).
- **Circuit breaker.** ``circuit_failures`` consecutive failed batches open the circuit
  (:mod:`xaiserve.runtime.circuit`): requests are refused with UNAVAILABLE at once, the model
  shows FAILED in ``GetModel`` and ``xaiserve_remote_circuit_state`` is 1. A background probe
  (``ModelReady`` and one small ``ModelInfer``) closes it when the remote recovers.
- **Readiness** follows the remote's ``ModelReady``, polled every ``probe_interval_ms``.
- **Errors name the remote.** A remote that refuses the input, or answers with a shape or
  datatype that does not fit, gives FAILED_PRECONDITION (the configuration does not match the
  served model); an unreachable one UNAVAILABLE. Never INTERNAL.

The client is generated from the published protocol proto (``protos/xaiserve/oip/v2``):
``tritonclient[grpc]`` requires ``protobuf<7``, which our pinned ``protobuf==7.36.2`` excludes.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from xaiserve import tracing
from xaiserve.errors import DeadlineExceeded, FailedPrecondition, Unavailable, XaiserveError
from xaiserve.observability import Metrics
from xaiserve.oip.v2 import grpc_predict_v2_pb2 as oip
from xaiserve.oip.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from xaiserve.runtime import context
from xaiserve.runtime.circuit import CircuitBreaker, CircuitState
from xaiserve.runtime.oip_config import OIP_DATATYPES, OipConfig

log = logging.getLogger(__name__)

NUMPY_TYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP16": np.dtype("<f2"),
    "FP64": np.dtype("<f8"),
}
MAX_MESSAGE_BYTES = 1 << 30
MAX_BACKOFF_S = 2.0
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# Codes that say the request or configuration does not fit the served model.
MISMATCH = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
)


@dataclass(frozen=True)
class TensorNames:
    """The remote tensors after ``ModelMetadata`` filled what the config left empty."""

    input_name: str
    input_datatype: str
    output_name: str
    output_datatype: str  # "" = accept any floating-point datatype


class _TokenFile:
    """A bearer token read from a file, re-read when the file changes (rotated secrets)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._token = ""
        self.get()

    def get(self) -> str:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                token = self.path.read_text(encoding="utf-8").strip()
                if not token:
                    raise ValueError(f"token_file {self.path} is empty")
                self._token, self._stamp = token, stamp
        except OSError as exc:
            if not self._token:
                raise ValueError(f"token_file {self.path} cannot be read: {exc}") from None
        return self._token


def _file(folder: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else folder / path


def open_channel(cfg: OipConfig, folder: Path) -> grpc.Channel:
    options: list[tuple[str, int | str]] = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 0),  # ours are deadline-aware and counted
        # Find a restarted remote quickly (gRPC's default reconnect backoff grows to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if not cfg.tls:
        return grpc.insecure_channel(cfg.target, options=options)
    read = lambda name: _file(folder, name).read_bytes() if name else None  # noqa: E731
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(cfg.tls_ca_file),
        private_key=read(cfg.tls_key_file),
        certificate_chain=read(cfg.tls_cert_file),
    )
    if cfg.tls_server_name:
        options.append(("grpc.ssl_target_name_override", cfg.tls_server_name))
    return grpc.secure_channel(cfg.target, creds, options=options)


class OipBackend:
    """The ``Runner`` of a remote model version: ``run(batch) -> outputs``."""

    runtime = "oip"

    def __init__(
        self,
        cfg: OipConfig,
        *,
        folder: Path,
        model: str,
        version: str,
        num_classes: int,
        metrics: Metrics,
    ) -> None:
        self.cfg = cfg
        self.num_classes = num_classes
        self.where = f"remote OIP server {cfg.url} (model {cfg.model_name!r})"
        self._labels = {"model": model, "version": version}
        self._metrics = metrics
        self._token = _TokenFile(_file(folder, cfg.token_file)) if cfg.token_file else None
        self._channel = open_channel(cfg, folder)
        self._stub = oip_grpc.GRPCInferenceServiceStub(self._channel)
        self.circuit = CircuitBreaker(
            cfg.circuit_failures, cfg.circuit_reset_ms / 1000.0, on_change=self._circuit_changed
        )
        self.names = TensorNames(
            cfg.input_name, cfg.input_datatype, cfg.output_name, cfg.output_datatype
        )
        self.remote_ready = False
        self.remote_error = "not probed yet"
        self._says_not_ready = False  # the remote answered ModelReady = false
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._probe_shape: tuple[int, ...] | None = None
        metrics.remote_circuit_state.labels(**self._labels).set(0)

    @property
    def providers(self) -> list[str]:
        return [f"oip:{self.cfg.url}"]

    # -- load time -----------------------------------------------------------------------------
    def connect(self, input_shape: tuple[int, ...]) -> None:
        """At load: wait for the remote to say ``ModelReady``, then fill tensor names and
        datatypes from ``ModelMetadata`` (the config overrides). Raises ``ValueError`` with a
        message naming the remote and the field to set."""
        self._probe_shape = input_shape
        timeout = self.cfg.timeout_ms / 1000.0
        try:
            ready = self._stub.ModelReady(
                oip.ModelReadyRequest(name=self.cfg.model_name, version=self.cfg.model_version),
                timeout=timeout,
                metadata=self._metadata(),
                wait_for_ready=True,
            ).ready
        except grpc.RpcError as err:
            raise ValueError(f"{self.where} did not answer ModelReady: {_describe(err)}") from None
        if not ready:
            raise ValueError(f"{self.where} says the model is not ready (ModelReady = false)")
        self.names = self._fill_names(timeout)
        self._set_ready(True, "")

    def _fill_names(self, timeout: float) -> TensorNames:
        names = self.names
        if all((names.input_name, names.input_datatype, names.output_name)):
            return names
        try:
            meta = self._stub.ModelMetadata(
                oip.ModelMetadataRequest(name=self.cfg.model_name, version=self.cfg.model_version),
                timeout=timeout,
                metadata=self._metadata(),
            )
        except grpc.RpcError as err:
            raise ValueError(
                f"{self.where} did not answer ModelMetadata ({_describe(err)}): set input_name, "
                "input_datatype and output_name in [backend]"
            ) from None
        if not names.input_name:
            if len(meta.inputs) != 1:
                raise ValueError(
                    f"{self.where} has inputs {[t.name for t in meta.inputs]}: set "
                    "backend.input_name"
                )
            names = replace(names, input_name=meta.inputs[0].name)
        if not names.input_datatype:
            found = {t.name: t.datatype for t in meta.inputs}.get(names.input_name, "FP32")
            if found not in OIP_DATATYPES:
                raise ValueError(
                    f"{self.where} input {names.input_name!r} has datatype {found}; xaiserve "
                    f"sends {', '.join(OIP_DATATYPES)}"
                )
            names = replace(names, input_datatype=found)
        declared = {t.name: list(t.shape) for t in meta.inputs}.get(names.input_name)
        if declared and self._probe_shape and len(declared) == len(self._probe_shape) + 1:
            ours = list(self._probe_shape)
            if any(d not in (-1, o) for d, o in zip(declared[1:], ours, strict=True)):
                raise ValueError(
                    f"{self.where} declares input {names.input_name!r} of shape {declared}; "
                    f"[input] in config.toml gives [batch, {', '.join(map(str, ours))}] "
                    "(check height, width and layout)"
                )
        if not names.output_name and len(meta.outputs) > 1:
            raise ValueError(
                f"{self.where} has outputs {[t.name for t in meta.outputs]}: set "
                "backend.output_name"
            )
        if not names.output_name and meta.outputs:
            names = replace(names, output_name=meta.outputs[0].name)
        return names

    def start_monitor(self) -> None:
        """Poll ``ModelReady`` (readiness) and close an open circuit when the remote is back."""
        if self._monitor is None:
            self._monitor = threading.Thread(
                target=self._watch, name=f"oip-probe-{self.cfg.model_name}", daemon=True
            )
            self._monitor.start()

    def _watch(self) -> None:
        interval = self.cfg.probe_interval_ms / 1000.0
        while not self._stop.wait(interval):
            try:
                ready = self._stub.ModelReady(
                    oip.ModelReadyRequest(name=self.cfg.model_name, version=self.cfg.model_version),
                    timeout=min(interval, 5.0),
                    metadata=self._metadata(),
                ).ready
                self._says_not_ready = not ready
                self._set_ready(ready, "" if ready else "the remote says ModelReady = false")
            except grpc.RpcError as err:
                self._says_not_ready = (
                    False  # unreachable: requests find out (and feed the circuit)
                )
                self._set_ready(False, f"ModelReady failed: {_describe(err)}")
                continue
            if ready and self.circuit.state is not CircuitState.CLOSED and self._probe_shape:
                try:
                    self._infer(np.zeros((1, *self._probe_shape), np.float32), None)
                except XaiserveError as exc:
                    log.info("%s: recovery probe failed: %s", self.where, exc)
                    continue
                log.warning("%s recovered: circuit closed", self.where)
                self.circuit.close()

    def _set_ready(self, ready: bool, error: str) -> None:
        if ready != self.remote_ready:
            level = logging.INFO if ready else logging.WARNING
            log.log(level, "%s %s", self.where, "is ready" if ready else f"is not ready: {error}")
        self.remote_ready, self.remote_error = ready, error
        self._metrics.remote_ready.labels(**self._labels).set(1 if ready else 0)

    def _circuit_changed(self, state: CircuitState) -> None:
        self._metrics.remote_circuit_state.labels(**self._labels).set(int(state))
        if state is CircuitState.OPEN:
            log.error(
                "%s: circuit opened after %d consecutive failures (last: %s)",
                self.where,
                self.circuit.consecutive_failures,
                self.circuit.last_error,
            )

    def state_error(self) -> str:
        """Why the model is not serving now ("" when it is): shown by ``GetModel``."""
        if self.circuit.state is CircuitState.OPEN:
            return (
                f"{self.where} is failing: circuit open after {self.circuit.consecutive_failures} "
                f"consecutive failures (last: {self.circuit.last_error})"
            )
        if not self.remote_ready:
            return f"{self.where} is not ready: {self.remote_error}"
        return ""

    def close(self) -> None:
        self._stop.set()
        self._channel.close()

    # -- request time --------------------------------------------------------------------------
    def run(self, batch: np.ndarray) -> np.ndarray:
        """One ``ModelInfer`` for the whole batch, retried and guarded by the circuit."""
        if not self.circuit.allow():
            raise Unavailable(
                f"{self.where} is failing: circuit open after {self.circuit.consecutive_failures}"
                f" consecutive failures (last: {self.circuit.last_error}); the next try is in "
                f"{self.circuit.retry_in():.1f} s — retry later"
            )
        if self._says_not_ready:
            self.circuit.release_trial()
            raise Unavailable(f"{self.where} says the model is not ready (ModelReady = false)")
        deadline = context.current().deadline
        try:
            out = self._infer(batch, deadline)
        except _RemoteFailure as exc:
            self.circuit.record_failure(str(exc))
            raise
        except DeadlineExceeded:
            self.circuit.release_trial()  # the client ran out of time: says nothing of the remote
            raise
        except XaiserveError:
            self.circuit.record_success()  # the remote answered: it is up
            raise
        self.circuit.record_success()
        return out

    def _infer(self, batch: np.ndarray, deadline: float | None) -> np.ndarray:
        names = self.names
        dtype = NUMPY_TYPES[names.input_datatype or "FP32"]
        x = np.ascontiguousarray(batch, dtype=dtype)
        request = oip.ModelInferRequest(
            model_name=self.cfg.model_name,
            model_version=self.cfg.model_version,
            inputs=[
                oip.ModelInferRequest.InferInputTensor(
                    name=names.input_name, datatype=names.input_datatype, shape=list(x.shape)
                )
            ],
            raw_input_contents=[x.tobytes()],
        )
        if names.output_name:
            request.outputs.add(name=names.output_name)
        delay = self.cfg.backoff_ms / 1000.0
        attempt = 0
        while True:
            attempt += 1
            timeout = self.cfg.timeout_ms / 1000.0
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeadlineExceeded(
                        f"the request's deadline passed while waiting for {self.where}"
                    )
                timeout = min(timeout, left)
            try:
                with tracing.span(
                    "oip.ModelInfer",
                    {
                        "rpc.system": "grpc",
                        "rpc.service": "inference.GRPCInferenceService",
                        "rpc.method": "ModelInfer",
                        "server.address": self.cfg.target,
                        "xaiserve.remote_model": self.cfg.model_name,
                        "xaiserve.batch_size": len(x),
                        "xaiserve.attempt": attempt,
                    },
                ):
                    response = self._stub.ModelInfer(
                        request, timeout=timeout, metadata=self._metadata(inject=True)
                    )
            except grpc.RpcError as err:
                code = err.code()
                self._count(code)
                out_of_time = deadline is not None and time.monotonic() >= deadline
                if code == grpc.StatusCode.DEADLINE_EXCEEDED and out_of_time:
                    raise DeadlineExceeded(
                        f"the request's deadline passed while {self.where} was computing"
                    ) from None
                if code in RETRYABLE and attempt < self.cfg.max_attempts:
                    pause = min(delay * (1.0 + 0.5 * random.random()), MAX_BACKOFF_S)
                    if deadline is None or time.monotonic() + pause < deadline:
                        time.sleep(pause)
                        delay *= 2
                        continue
                raise self._error(err, attempt) from None
            self._count(grpc.StatusCode.OK)
            return self._decode(response, len(x))

    def _error(self, err: grpc.RpcError, attempts: int) -> XaiserveError:
        code = err.code()
        if code in MISMATCH:
            hint = (
                "check backend.token_file"
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
                else "check [backend] in the model's config.toml against ModelMetadata"
            )
            return FailedPrecondition(
                f"{self.where} refused ModelInfer ({code.name}: {err.details()}); {hint}"
            )
        tries = f" after {attempts} attempt{'s' if attempts > 1 else ''}"
        return _RemoteFailure(f"{self.where} failed{tries}: {_describe(err)}")

    def _decode(self, response: oip.ModelInferResponse, n: int) -> np.ndarray:
        outputs = list(response.outputs)
        names = self.names
        index = next((i for i, t in enumerate(outputs) if t.name == names.output_name), None)
        if index is None and len(outputs) == 1 and not names.output_name:
            index = 0
        if index is None:
            raise FailedPrecondition(
                f"{self.where} answered outputs {[t.name for t in outputs]} without "
                f"{names.output_name or 'a single output'}: set backend.output_name"
            )
        tensor = outputs[index]
        want = names.output_datatype
        if tensor.datatype not in NUMPY_TYPES or (want and tensor.datatype != want):
            raise FailedPrecondition(
                f"{self.where} answered datatype {tensor.datatype or '(none)'} for output "
                f"{tensor.name!r}; expected {want or ' or '.join(NUMPY_TYPES)}"
            )
        shape = tuple(int(d) for d in tensor.shape)
        if shape != (n, self.num_classes):
            raise FailedPrecondition(
                f"{self.where} answered shape {list(shape)} for output {tensor.name!r}; "
                f"expected [{n}, {self.num_classes}] (batch × output.labels)"
            )
        dtype = NUMPY_TYPES[tensor.datatype]
        if response.raw_output_contents:
            if index >= len(response.raw_output_contents):
                raise FailedPrecondition(f"{self.where} answered too few raw_output_contents")
            data = np.frombuffer(response.raw_output_contents[index], dtype=dtype)
        else:
            field = "fp64_contents" if tensor.datatype == "FP64" else "fp32_contents"
            data = np.asarray(getattr(tensor.contents, field), dtype=dtype)
        if data.size != n * self.num_classes:
            raise FailedPrecondition(
                f"{self.where} answered {data.size} values for output {tensor.name!r} of shape "
                f"{list(shape)}"
            )
        return data.reshape(shape).astype(np.float32)

    def _metadata(self, inject: bool = False) -> list[tuple[str, str]]:
        md: list[tuple[str, str]] = []
        if self._token is not None:
            md.append(("authorization", f"Bearer {self._token.get()}"))
        if inject:
            md.extend(tracing.inject_metadata())
        return md

    def _count(self, code: grpc.StatusCode) -> None:
        self._metrics.remote_calls_total.labels(**self._labels, code=code.name).inc()


class _RemoteFailure(Unavailable):
    """The remote did not answer (counted by the circuit breaker)."""


def _describe(err: grpc.RpcError) -> str:
    code: Callable[[], grpc.StatusCode] | None = getattr(err, "code", None)
    details = getattr(err, "details", lambda: "")()
    return f"{code().name if code else 'error'}: {details}"
