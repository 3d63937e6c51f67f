#!/usr/bin/env python3
"""Container health check: one ``grpc.health.v1.Health/Check`` call; exit 0 only on SERVING.

Used by the image's HEALTHCHECK (Kubernetes uses its native gRPC probes instead). It needs no
auth: the server exempts the health service from bearer-token checks. Exit codes: 0 SERVING,
1 any other status (NOT_SERVING, SERVICE_UNKNOWN, ...), 2 the server could not be asked
(unreachable, deadline, NOT_FOUND for an unknown service name, TLS failure).

Where to connect comes from the same environment the server reads (``XAISERVE_HOST``,
``XAISERVE_PORT``, ``XAISERVE_TLS_CERT``); flags override it. With TLS on, the server's
certificate is verified against ``HEALTHCHECK_CA_FILE`` (default: ``XAISERVE_TLS_CERT`` itself,
right for a self-signed certificate); with mutual TLS, ``HEALTHCHECK_CLIENT_CERT`` and
``HEALTHCHECK_CLIENT_KEY`` name a client certificate. ``HEALTHCHECK_SERVER_NAME`` overrides the
name checked against the certificate.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

DEFAULT_SERVICE = "xaiserve.v1.ExplainService"
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]", "*"}


def default_address(environ: Mapping[str, str]) -> str:
    host = environ.get("XAISERVE_HOST", "").strip()
    port = environ.get("XAISERVE_PORT", "").strip() or "50051"
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1"  # a wildcard bind also listens on loopback
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # a bare IPv6 address
    return f"{host}:{port}"


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=None, help="host:port (default from XAISERVE_HOST/PORT)")
    parser.add_argument(
        "--service",
        default=env.get("HEALTHCHECK_SERVICE", DEFAULT_SERVICE),
        help=f"health service name; '' for the whole server (default {DEFAULT_SERVICE})",
    )
    parser.add_argument(
        "--timeout", type=float, default=float(env.get("HEALTHCHECK_TIMEOUT", "3")),
        help="seconds for the whole check",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)
    address = args.address or default_address(env)

    import grpc  # imported late: --help stays fast and works without grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    tls_cert = env.get("XAISERVE_TLS_CERT", "").strip()
    try:
        if tls_cert:
            ca_file = env.get("HEALTHCHECK_CA_FILE", "").strip() or tls_cert
            client_cert = env.get("HEALTHCHECK_CLIENT_CERT", "").strip()
            client_key = env.get("HEALTHCHECK_CLIENT_KEY", "").strip()
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(ca_file),
                private_key=_read(client_key) if client_key else None,
                certificate_chain=_read(client_cert) if client_cert else None,
            )
            options = []
            server_name = env.get("HEALTHCHECK_SERVER_NAME", "").strip()
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            channel = grpc.secure_channel(address, credentials, options=options)
        else:
            channel = grpc.insecure_channel(address)
    except OSError as exc:
        print(f"healthcheck: cannot read TLS files: {exc}", file=sys.stderr)
        return 2

    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            name = code.name if code is not None else "ERROR"
            details = exc.details() if hasattr(exc, "details") else str(exc)
            print(f"healthcheck: {address} service={args.service!r}: {name}: {details}",
                  file=sys.stderr)
            return 2
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status == health_pb2.HealthCheckResponse.SERVING:
        if not args.quiet:
            print(f"healthcheck: {address} service={args.service!r}: {status}")
        return 0
    print(f"healthcheck: {address} service={args.service!r}: {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
