"""A real Open Inference Protocol server for tests: KServe's model server in its own venv.

KServe pins ``protobuf<7`` (we run 7.x), so it cannot share our venv: ``ensure_server_venv``
builds ``.venv-oip`` from ``tests/oip_server/requirements.txt`` once (``make test`` does it
first through ``make oip-server``; a test run on a fresh checkout does it on first use).
``OipServer`` starts ``tests/oip_server/host.py`` as a subprocess on an ephemeral loopback port,
with TLS (a certificate made here) and a bearer token, and can be stopped and restarted on the
same port. ``write_remote_model`` writes a model folder whose ``[backend]`` points at it.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SERVER_DIR = REPO / "tests" / "oip_server"
REQUIREMENTS = SERVER_DIR / "requirements.txt"
VENV = Path(os.environ.get("XAISERVE_OIP_VENV", REPO / ".venv-oip"))
DEMO_VERSION = REPO / "models" / "shapes" / "1"
TOKEN = "test-token-0123456789"


def _stamp_text() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def ensure_server_venv() -> Path:
    """The OIP server's python, building its venv when missing or stale (under a file lock)."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".installed-stamp"
    if python.exists() and stamp.exists() and stamp.read_text() == _stamp_text():
        return python
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(str(VENV) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and stamp.exists() and stamp.read_text() == _stamp_text():
            return python
        if not python.exists():
            base = getattr(sys, "_base_executable", sys.executable)
            subprocess.run([base, "-m", "venv", str(VENV)], check=True)
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"could not install the OIP test server into {VENV}:\n{result.stderr[-3000:]}"
            )
        stamp.write_text(_stamp_text())
    return python


def make_tls_files(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class OipServer:
    """KServe's OIP gRPC server hosting ONNX files, as a subprocess."""

    def __init__(
        self, workdir: Path, models: dict[str, Path], tls: bool = True, threads: int = 1
    ) -> None:
        self.workdir = workdir
        self.control = workdir / "control"
        self.control.mkdir(parents=True, exist_ok=True)
        self.models = models
        self.tls = tls
        self.threads = threads
        self.cert, self.key = make_tls_files(workdir) if tls else (None, None)
        self.token_file = workdir / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self.log = workdir / "server.log"

    @property
    def url(self) -> str:
        return f"{'grpcs' if self.tls else 'grpc'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> OipServer:
        python = ensure_server_venv()
        cmd = [str(python), str(SERVER_DIR / "host.py"), "--control", str(self.control)]
        cmd += ["--port", str(self.port), "--token", TOKEN, "--threads", str(self.threads)]
        if self.tls:
            cmd += ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]
        cmd += [f"{name}={path}" for name, path in self.models.items()]
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True
            )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("PORT "):
                self.port = int(line.split()[1])
                return self
            if not line and self.process.poll() is not None:
                break
        self.stop()
        raise RuntimeError(
            f"the OIP server did not start; its log:\n{self.log.read_text()[-3000:]}"
        )

    def stop(self) -> None:
        """Kill the server at once (what a crashed or preempted remote looks like)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def set_mode(self, model: str, mode: str) -> None:
        (self.control / f"{model}.mode").write_text(mode)

    def calls(self) -> list[dict[str, Any]]:
        path = self.control / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def clear_calls(self) -> None:
        (self.control / "calls.jsonl").unlink(missing_ok=True)


def write_remote_model(
    root: Path,
    server: OipServer,
    *,
    name: str = "remote",
    version: str = "1",
    remote_model: str = "shapes",
    local_onnx: bool = False,
    pin: bool = True,
    token: bool = True,
    max_batch_size: int = 64,
    **backend: Any,
) -> Path:
    """A version folder for the demo model served by ``server`` (the demo config's [input]
    and [output]; [backend] kind = "oip")."""
    folder = root / name / version
    folder.mkdir(parents=True, exist_ok=True)
    demo = (DEMO_VERSION / "config.toml").read_text()
    demo = demo.replace("max_batch_size = 64", f"max_batch_size = {max_batch_size}")
    lines = [
        "[backend]",
        'kind = "oip"',
        f'url = "{server.url}"',
        f'model_name = "{remote_model}"',
    ]
    if server.tls:
        lines.append(f'tls_ca_file = "{server.cert}"')
    if token:
        lines.append(f'token_file = "{server.token_file}"')
    for key, value in backend.items():
        lines.append(f"{key} = {json.dumps(value)}")
    pin_line = ""
    if local_onnx:
        shutil.copy(DEMO_VERSION / "model.onnx", folder / "model.onnx")
        if pin:
            sha = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
            pin_line = f'sha256 = "{sha}"\n'
    (folder / "config.toml").write_text(pin_line + demo + "\n" + "\n".join(lines) + "\n")
    return folder
