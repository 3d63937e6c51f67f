"""Configuration of a remote model (``[backend] kind = "oip"`` in a model's ``config.toml``).

Kept in the runtime layer so the backend needs nothing above it; ``models/config.py`` parses it.
"""

from __future__ import annotations

from dataclasses import dataclass

OIP_DATATYPES = ("FP32", "FP16", "FP64")


@dataclass(frozen=True)
class OipConfig:
    """A model served elsewhere over the Open Inference Protocol (KServe v2 gRPC).

    ``url`` is ``host:port``, ``grpc://host:port`` or ``grpcs://host:port`` (TLS). Tensor names
    and datatypes left empty are filled from the remote's ``ModelMetadata``. Files (CA,
    client certificate, token) are absolute or relative to the version folder.
    """

    url: str
    model_name: str
    model_version: str = ""
    input_name: str = ""
    input_datatype: str = ""
    output_name: str = ""
    output_datatype: str = ""
    tls: bool = False
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_server_name: str = ""
    token_file: str = ""
    timeout_ms: float = 30_000.0  # per ModelInfer attempt (a request's deadline can shorten it)
    max_batch_size: int = 0  # bound on images per ModelInfer; 0 = batching.max_batch_size
    max_concurrency: int = 4  # ModelInfer calls in flight toward the remote, per model version
    max_attempts: int = 4  # tries per batch on UNAVAILABLE / attempt timeout
    backoff_ms: float = 50.0  # first retry delay; doubles each retry (with jitter), ≤ 2 s
    circuit_failures: int = 5  # consecutive failed batches that open the circuit
    circuit_reset_ms: float = 5_000.0  # open → probe the remote again after this long
    probe_interval_ms: float = 2_000.0  # ModelReady polling (readiness, circuit recovery)

    @property
    def target(self) -> str:
        return self.url.split("://", 1)[-1]
