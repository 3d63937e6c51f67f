"""The client wheel alone, in a fresh virtual environment, against a live server.

Builds both wheels, installs only ``xaiserve-client`` (at the locked versions) into a new venv,
checks that none of the server's heavy stack is importable there, then runs the ``xaiserve``
command from that venv against the session's real server (started from the dev environment on
a loopback port 0) and compares its answers with the dev environment's SDK on the same server.
The venv is built once per test session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from xaiserve_client import ExplainClient

pytestmark = pytest.mark.slow  # builds two wheels and a venv (~30 s); CI runs it

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "clients" / "python"
HEAVY = ("torch", "onnxruntime", "onnx", "zennit", "captum", "scipy", "skimage", "sklearn")
MODEL = "shapes"
METHODS = ("saliency", "gradient_times_input")  # deterministic, cheap


@dataclass(frozen=True)
class ClientEnv:
    python: Path
    command: Path
    client_wheel: Path
    server_wheel: Path

    def run(self, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        done = subprocess.run(
            [str(self.command), *args], cwd=cwd, env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        if check:
            assert done.returncode == 0, f"xaiserve {' '.join(args)}: {done.stderr[-2000:]}"
        return done


def build_wheels(out: Path) -> dict[str, Path]:
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from build_wheels import build  # tools/build_wheels.py, what `make wheels` runs
    finally:
        sys.path.remove(str(REPO / "tools"))
    wheels = build(out)
    return {"client": wheels["xaiserve-client"], "server": wheels["xaiserve"]}


def install_client(wheel: Path, venv: Path) -> Path:
    """A fresh venv with the client wheel and its dependencies, pinned by the CPU lock."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "-c", str(REPO / "requirements" / "cpu.txt"), str(wheel)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return python


@pytest.fixture(scope="session")
def client_env(tmp_path_factory: pytest.TempPathFactory) -> ClientEnv:
    root = tmp_path_factory.mktemp("client-wheel")
    wheels = build_wheels(root / "dist")
    python = install_client(wheels["client"], root / "venv")
    return ClientEnv(python, python.parent / "xaiserve", wheels["client"], wheels["server"])


@pytest.fixture(scope="session")
def server(demo_server: tuple[object, int]) -> str:
    return f"127.0.0.1:{demo_server[1]}"


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from xaiserve.demo.shapes import heldout

    path = tmp_path_factory.mktemp("client-wheel-image") / "shape.png"
    PILImage.fromarray(heldout(1).images[0]).save(path)
    return path


def test_wheels_carry_what_they_promise(client_env: ClientEnv) -> None:
    client = zipfile.ZipFile(client_env.client_wheel)
    names = set(client.namelist())
    assert "xaiserve_client/protos/xaiserve/v1/explain.proto" in names
    assert {"xaiserve_client/py.typed", "xaiserve_client/v1/explain_pb2.pyi"} <= names
    assert not any(n.startswith("xaiserve/") for n in names)
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    text = client.read(metadata).decode()
    assert "License-Expression: Apache-2.0" in text
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert client_env.client_wheel.stat().st_size < 1_000_000
    server = set(zipfile.ZipFile(client_env.server_wheel).namelist())
    assert "xaiserve/py.typed" in server and not any(n.startswith("xaiserve_client") for n in server)


def test_no_server_stack_in_the_client_env(client_env: ClientEnv, tmp_path: Path) -> None:
    probe = (
        "import importlib.util, json, sys\n"
        f"names = {[*HEAVY, 'xaiserve', 'matplotlib']!r}\n"
        "import xaiserve_client, xaiserve_client.cli\n"
        "print(json.dumps({n: importlib.util.find_spec(n) is not None for n in names}))\n"
    )
    done = subprocess.run(
        [str(client_env.python), "-c", probe], cwd=tmp_path, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    found = json.loads(done.stdout)
    assert not any(found.values()), {k for k, v in found.items() if v}


def test_serve_says_what_to_install(client_env: ClientEnv, tmp_path: Path) -> None:
    done = client_env.run("serve", "--port", "0", cwd=tmp_path, check=False)
    assert done.returncode == 1
    assert "pip install 'xaiserve[cpu]'" in done.stderr and "Traceback" not in done.stderr


def test_predict_explain_score_compare_from_the_client_env(
    client_env: ClientEnv, server: str, image: Path, tmp_path: Path
) -> None:
    common = ("--server", server, "--model", MODEL)
    with ExplainClient(server) as sdk:  # the dev environment's SDK, same server
        expected = sdk.predict(image, MODEL, top_k=3)
        heatmap = sdk.explain(image, METHODS[0], MODEL).heatmap
        score = sdk.score(
            image, MODEL, method=METHODS[0], morf={"steps": 4, "repeats": 1, "seed": 0}
        )

    predicted = json.loads(client_env.run("predict", str(image), "--top-k", "3", "--json",
                                          *common, cwd=tmp_path).stdout)  # fmt: skip
    assert [c["index"] for c in predicted[0]["classes"]] == [c.index for c in expected.classes]
    assert np.allclose(
        [c["probability"] for c in predicted[0]["classes"]],
        [c.probability for c in expected.classes],
    )

    done = client_env.run("explain", str(image), "--method", METHODS[0], "--save-npy", "--json",
                          *common, cwd=tmp_path)  # fmt: skip
    summary = json.loads(done.stdout)
    assert summary["overlay"] is None and "xaiserve-client[plot]" in done.stderr
    assert summary["heatmap_shape"] == list(heatmap.shape)
    np.testing.assert_allclose(np.load(tmp_path / summary["heatmap_npy"]), heatmap, rtol=1e-5, atol=1e-7)

    scored = json.loads(client_env.run("score", str(image), "--method", METHODS[0], "--steps", "4",
                                       "--repeats", "1", "--seed", "0", "--json", *common,
                                       cwd=tmp_path).stdout)  # fmt: skip
    assert scored["aopc_morf"] == pytest.approx(score.aopc_morf)

    done = client_env.run("compare", str(image), "--methods", *METHODS, "--steps", "4",
                          "--repeats", "1", "--json", "--out", str(tmp_path / "cmp"),
                          *common, cwd=tmp_path)  # fmt: skip
    compared = json.loads(done.stdout)
    by_method = {r["method"]: r for r in compared["methods"]}
    assert set(by_method) == set(METHODS) and not any("error" in r for r in by_method.values())
    assert by_method[METHODS[0]]["target_index"] == expected.top.index
    assert (tmp_path / "cmp" / "compare.json").is_file()
    assert not (tmp_path / "cmp" / "compare.png").exists()  # figures need the plot extra


def test_mistyped_method_suggests_the_name(client_env: ClientEnv, tmp_path: Path) -> None:
    done = client_env.run("explain", "x.png", "--method", "salency", cwd=tmp_path, check=False)
    assert done.returncode == 2 and "did you mean 'saliency'" in done.stderr
