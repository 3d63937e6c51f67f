"""Connecting to the service: channel options, retries, TLS credentials and bearer tokens.

Shared by :class:`~xaiserve_client.client.ExplainClient` and
:class:`~xaiserve_client.aio.AsyncExplainClient`.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from typing import Any

import grpc

DEFAULT_TARGET = "localhost:50051"
SERVICE_NAME = "xaiserve.v1.ExplainService"
USER_AGENT = "xaiserve-client/0.1.0"


class _Default(enum.Enum):
    TIMEOUT = "the client's timeout"


DEFAULT = _Default.TIMEOUT
"""Per-call ``timeout`` default: use the client's ``timeout`` (pass ``None`` for no deadline)."""

Timeout = float | None | _Default




def service_config(target: str, retries: int) -> dict[str, Any]:
    """The channel's service config: retries on UNAVAILABLE only, and round-robin balancing
    for ``dns:///`` targets (every address the name resolves to gets calls)."""
    config: dict[str, Any] = {}
    if retries > 0:
        config["methodConfig"] = [
            {
                "name": [{"service": SERVICE_NAME}],
                "retryPolicy": {
                    "maxAttempts": min(retries + 1, 5),  # gRPC caps attempts at 5
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
        config["retryThrottling"] = {"maxTokens": 10, "tokenRatio": 0.1}
    if target.startswith("dns:"):
        config["loadBalancingConfig"] = [{"round_robin": {}}]
    return config


def channel_options(
    target: str, retries: int, extra: Sequence[tuple[str, Any]] = ()
) -> list[tuple[str, Any]]:
    """Channel arguments: service config, message limits and keepalive (``extra`` wins).

    Keepalive pings go out every 5.5 minutes and only while calls are active: gRPC servers by
    default refuse pings more often than every 5 minutes (``too_many_pings``).
    """
    options: dict[str, Any] = {
        "grpc.service_config": json.dumps(service_config(target, retries)),
        "grpc.enable_retries": 1,
        "grpc.max_receive_message_length": 64 * 1024 * 1024,
        "grpc.max_send_message_length": 32 * 1024 * 1024,
        "grpc.keepalive_time_ms": 330_000,
        "grpc.keepalive_timeout_ms": 20_000,
        "grpc.keepalive_permit_without_calls": 0,
        "grpc.primary_user_agent": USER_AGENT,
    }
    options.update(dict(extra))
    return list(options.items())


def channel_credentials(
    tls: bool,
    root_certificates: bytes | None = None,
    client_certificate: tuple[bytes, bytes] | None = None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials (``None`` for plaintext). ``client_certificate`` is ``(chain, key)``."""
    if not (tls or root_certificates or client_certificate):
        return None
    chain, key = client_certificate if client_certificate else (None, None)
    return grpc.ssl_channel_credentials(
        root_certificates=root_certificates, private_key=key, certificate_chain=chain
    )


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """``authorization: Bearer <token>`` metadata (empty without a token)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def trace_metadata() -> tuple[tuple[str, str], ...]:
    """The caller's current OpenTelemetry trace context as W3C ``traceparent``/``tracestate``
    metadata, so that the server's spans join the application's trace. Empty when the
    application does not use OpenTelemetry (the SDK does not depend on it)."""
    try:
        from opentelemetry import propagate
    except ImportError:
        return ()
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())
