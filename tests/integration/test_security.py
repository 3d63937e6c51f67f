"""TLS, mutual TLS and bearer tokens: the matrix of who gets in (reliability check A1)."""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import region_logit_model, write_model_folder
from xaiserve_client.v1 import explain_pb2 as pb
from xaiserve_client.v1 import explain_pb2_grpc as pb_grpc


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], cn: str, server: bool
) -> tuple[bytes, bytes]:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, object]:
    server_ca, client_ca, rogue_ca = make_ca("server-ca"), make_ca("client-ca"), make_ca("rogue-ca")
    skey, scert = issue(server_ca, "localhost", server=True)
    files = {}
    for name, data in {
        "server.key": skey,
        "server.pem": scert,
        "client-ca.pem": pem(client_ca[1]),
    }.items():
        (tmp_path / name).write_bytes(data)
        files[name] = str(tmp_path / name)
    return {
        "files": files,
        "server_ca": pem(server_ca[1]),
        "client": issue(client_ca, "good-client", False),
        "rogue": issue(rogue_ca, "rogue-client", False),
    }


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    mask = np.zeros((8, 8), bool)
    mask[:4] = True
    write_model_folder(
        region_logit_model(8, 8, [mask, ~mask]), tmp_path / "repo", height=8, width=8, name="m"
    )
    return tmp_path / "repo"


def list_models(
    channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()
) -> grpc.StatusCode:
    try:
        pb_grpc.ExplainServiceStub(channel).ListModels(
            pb.ListModelsRequest(), timeout=5, metadata=metadata
        )
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]


def secure(port: int, root: bytes, client: tuple[bytes, bytes] | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(root, *(client or (None, None)))
    return grpc.secure_channel(f"localhost:{port}", creds)


def test_tls_server(start_server, repo: Path, pki) -> None:  # type: ignore[no-untyped-def]
    files = pki["files"]
    _, port = start_server(
        repo, host="localhost", tls_cert=files["server.pem"], tls_key=files["server.key"]
    )
    assert list_models(secure(port, pki["server_ca"])) == grpc.StatusCode.OK
    assert list_models(grpc.insecure_channel(f"localhost:{port}")) == grpc.StatusCode.UNAVAILABLE
    _, wrong_ca = make_ca("other")
    assert list_models(secure(port, pem(wrong_ca))) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(start_server, repo: Path, pki) -> None:  # type: ignore[no-untyped-def]
    files = pki["files"]
    _, port = start_server(
        repo,
        host="localhost",
        tls_cert=files["server.pem"],
        tls_key=files["server.key"],
        tls_client_ca=files["client-ca.pem"],
    )
    assert list_models(secure(port, pki["server_ca"], pki["client"])) == grpc.StatusCode.OK
    assert list_models(secure(port, pki["server_ca"], pki["rogue"])) == grpc.StatusCode.UNAVAILABLE
    assert list_models(secure(port, pki["server_ca"])) == grpc.StatusCode.UNAVAILABLE
    assert list_models(grpc.insecure_channel(f"localhost:{port}")) == grpc.StatusCode.UNAVAILABLE


def test_bearer_tokens(start_server, repo: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tokens = tmp_path / "tokens"
    tokens.write_text("# operators\nsecret-one\nsecret-two\n")
    server, port = start_server(repo, auth_tokens_file=str(tokens))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    assert list_models(channel) == grpc.StatusCode.UNAUTHENTICATED
    assert (
        list_models(channel, (("authorization", "Bearer wrong"),))
        == grpc.StatusCode.UNAUTHENTICATED
    )
    assert (
        list_models(channel, (("authorization", "secret-one"),)) == grpc.StatusCode.UNAUTHENTICATED
    )
    assert list_models(channel, (("authorization", "Bearer secret-two"),)) == grpc.StatusCode.OK
    # the refusal says nothing that helps an attacker
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.ExplainServiceStub(channel).ListModels(
            pb.ListModelsRequest(), timeout=5, metadata=(("authorization", "Bearer secret-onf"),)
        )
    assert info.value.details() == "authentication required"
    # Kubernetes probes cannot authenticate: health stays open
    health = health_pb2_grpc.HealthStub(channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    # a big unauthenticated request is refused before its body is parsed or decoded
    big = pb.PredictRequest(model="m", image=pb.Image(encoded=b"\x89PNG" + b"\0" * (3 << 20)))
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.ExplainServiceStub(channel).Predict(big, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (
        server.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
            "xaiserve_requests_total",
            {"rpc": "Predict", "method": "none", "code": "INVALID_ARGUMENT"},
        )
        is None
    )
    assert (
        server.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
            "xaiserve_rejected_requests_total", {"reason": "unauthenticated"}
        )
        == 5
    )
    channel.close()
