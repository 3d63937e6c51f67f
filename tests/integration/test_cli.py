"""The ``xaiserve`` command against the real server on a loopback port (run in-process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from xaiserve_client import ExplainClient
from xaiserve_client.cli import main

ROOT = Path(__file__).resolve().parents[2]
MODEL = "shapes"
CHEAP_FIRST = (
    "saliency", "gradient_times_input", "guided_backprop", "deconvolution", "lrp",
    "integrated_gradients", "contextual_importance", "regional_prediction_difference",
)  # fmt: skip


@pytest.fixture(scope="session")
def cli_server(demo_server: tuple[object, int]) -> str:
    """The session's real server on the bundled models (tests/conftest.py); its ``host:port``."""
    return f"127.0.0.1:{demo_server[1]}"


@pytest.fixture(scope="session")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from xaiserve.demo.shapes import heldout

    path = tmp_path_factory.mktemp("cli") / "shape.png"
    PILImage.fromarray(heldout(1).images[0]).resize((128, 128)).save(path)
    return path


@pytest.fixture(scope="session")
def cheap_method(cli_server: str) -> str:
    with ExplainClient(cli_server) as client:
        listed = client.get_model(MODEL).versions[0].methods
    for name in CHEAP_FIRST:
        if name in listed:
            return name
    assert listed, "the server lists no explanation methods"
    return listed[0]


def test_models_table_and_json(cli_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--server", cli_server]) == 0
    table = capsys.readouterr().out
    assert "MODEL" in table and MODEL in table and "64x64" in table and "READY" in table
    assert main(["models", "--server", cli_server, "--json"]) == 0
    models = json.loads(capsys.readouterr().out)
    assert models[0]["name"] == MODEL and models[0]["versions"][0]["input"]["height"] == 64


def test_predict(cli_server: str, image_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(image_file), "--server", cli_server, "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "PROBABILITY" in out and len(out.strip().splitlines()) == 6  # title, header, rule, 3
    assert main(["predict", str(image_file), str(image_file), "--server", cli_server,
                 "--json"]) == 0  # fmt: skip
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 2 and results[0]["classes"][0] == results[1]["classes"][0]


def test_explain_writes_an_overlay(
    cli_server: str, cheap_method: str, image_file: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    out = tmp_path / "heat.png"
    argv = ["explain", str(image_file), "--method", cheap_method, "--server", cli_server,
            "--out", str(out), "--save-npy", "--target", "square", "--json"]  # fmt: skip
    if cheap_method == "integrated_gradients":
        argv += ["--param", "steps=4"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["target"]["label"] == "square" and summary["heatmap_shape"] == [64, 64]
    with PILImage.open(out) as img:
        assert img.format == "PNG" and img.size == (64, 64)  # the model's resolution
    assert np.load(out.with_suffix(".npy")).shape == (64, 64)


def test_score_a_saved_heatmap(
    cli_server: str, image_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    heat = tmp_path / "heat.npy"
    np.save(heat, np.random.default_rng(0).random((64, 64), dtype=np.float32))
    argv = ["score", str(image_file), "--heatmap", str(heat), "--steps", "4", "--repeats", "1",
            "--server", cli_server]  # fmt: skip
    status = main(argv)
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "AOPC MoRF" in captured.out


def test_errors_go_to_stderr(
    cli_server: str, image_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", str(image_file), "--server", cli_server, "--model", "nope"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["predict", "missing.png", "--server", cli_server]) == 1
    assert "missing.png" in capsys.readouterr().err
    # --param typos are caught before any call
    assert main(["explain", str(image_file), "--method", "saliency", "--server", cli_server,
                 "--param", "nope=1"]) == 1  # fmt: skip
    assert "unknown parameter 'nope'" in capsys.readouterr().err


def test_evaluate_a_local_folder(
    cli_server: str, cheap_method: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from xaiserve.demo.shapes import heldout, save_folder

    folder = save_folder(heldout(3), tmp_path / "data")
    argv = ["evaluate", str(folder), "--method", cheap_method, "--steps", "3", "--repeats", "1",
            "--server", cli_server, "--json", "--out", str(tmp_path / "report")]  # fmt: skip
    assert main(argv) == 0
    operation = json.loads(capsys.readouterr().out)
    assert operation["state"] == "SUCCEEDED" and operation["done"] == 3
    report = tmp_path / "report"
    table = (report / "aggregate.csv").read_text().splitlines()
    assert table[0].startswith("method,images") and any(r.startswith(f"{cheap_method},") for r in table)
    assert (report / "aggregate.md").read_text().startswith("| method |")
    with PILImage.open(report / "aopc_curves.png") as plot:
        assert plot.size[0] > 300
    assert main(["operations", "--server", cli_server]) == 0
    assert operation["id"] in capsys.readouterr().out


def test_serve_rejects_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--tls-cert", "cert.pem", "--port", "0"]) == 2
    assert "tls_key" in capsys.readouterr().err


def test_module_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "xaiserve_client", "--help"], capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0
    for command in ("serve", "models", "predict", "explain", "score"):
        assert command in done.stdout
