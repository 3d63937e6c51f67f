"""The GPU path as far as a CPU machine can check it: fallback made visible, the I/O-binding
path, warm-up before readiness, and the ``bench/gpu.py --cpu`` dry run."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.support import load_onnx_model, region_logit_model
from xaiserve.observability import Metrics
from xaiserve.runtime.onnx_session import OnnxSession, choose_providers

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "shapes" / "1" / "model.onnx"
CPU_ONLY = "CUDAExecutionProvider" not in ort.get_available_providers()


def test_io_binding_gives_the_plain_results() -> None:
    x = np.random.default_rng(0).standard_normal((5, 3, 64, 64)).astype(np.float32)
    plain = OnnxSession(DEMO, io_binding=False).run(x)
    bound = OnnxSession(DEMO, io_binding=True)
    assert bound.io_binding
    np.testing.assert_array_equal(bound.run(x), plain)


@pytest.mark.skipif(not CPU_ONLY, reason="checks the fallback of a build without CUDA")
def test_missing_accelerator_is_a_warning_not_silence(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="xaiserve.runtime.onnx_session"):
        chosen = choose_providers(("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert chosen == ["CPUExecutionProvider"]
    assert (
        "CUDAExecutionProvider" in caplog.text and "serving on CPUExecutionProvider" in caplog.text
    )
    session = OnnxSession(DEMO, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert session.fallback == ["CUDAExecutionProvider"] and session.device == "cpu"


@pytest.mark.skipif(not CPU_ONLY, reason="checks the fallback of a build without CUDA")
def test_fallback_shows_in_the_metrics(tmp_path: Path, region_masks) -> None:  # type: ignore[no-untyped-def]
    from tests.support import write_model_folder
    from xaiserve.config import Settings
    from xaiserve.models.repository import ModelRepository
    from xaiserve.runtime.batcher import ImageBudget

    root = tmp_path / "repo"
    write_model_folder(region_logit_model(16, 16, list(region_masks)), root, height=16, width=16)
    metrics = Metrics()
    settings = Settings(
        models_dir=str(root), providers=("CUDAExecutionProvider", "CPUExecutionProvider")
    )
    repo = ModelRepository(root, settings, metrics, ImageBudget(1000))
    model = repo.load_version("test", "1").model
    assert model is not None and model.providers == ["CPUExecutionProvider"]
    r = metrics.registry
    assert (
        r.get_sample_value(
            "xaiserve_provider_fallback",
            {"model": "test", "version": "1", "missing": "CUDAExecutionProvider"},
        )
        == 1
    )
    assert (
        r.get_sample_value(
            "xaiserve_model_info",
            {
                "model": "test",
                "version": "1",
                "sha256": model.sha256,
                "providers": "CPUExecutionProvider",
            },
        )
        == 1
    )
    model.close()


def test_warm_up_builds_the_torch_module_before_ready(tmp_path: Path, region_masks) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    model = load_onnx_model(
        region_logit_model(16, 16, list(region_masks)),
        tmp_path,
        height=16,
        width=16,
        metrics=metrics,
        warmup=True,
    )
    try:
        assert model._pool().built_copies, "the torch module was built during the load"
        seconds = metrics.registry.get_sample_value(
            "xaiserve_model_warmup_seconds", {"model": "test", "version": "1"}
        )
        assert seconds is not None and seconds > 0
        # The copies of the pool (torch_copies, 2 by default) were all built, not one per
        # concurrent request later.
        assert len(model._pool().built_copies) == model.torch_copies == 2
    finally:
        model.close()


def test_bench_gpu_cpu_dry_run() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), "--cpu", "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "CPUExecutionProvider + I/O binding" in out and "| True |" in out
    # the GPU SLIC agreement check (and the segmenter's start-up self-check) runs in the dry run
    assert "gpu_slic on cpu, 64²" in out
    assert "segmentation agreement on cpu: ok; start-up self-check: passed" in out
    for row in ("Predict, batch", "regional PD, r = 5", "MoRF", "LRP ε+flat", "IG-10"):
        assert row in out, f"{row!r} missing from the table:\n{out}"
    # the model was loaded as served: warm-up ran, and none of its paths failed
    assert "paths ok, failed none" in out and "first ÷ best" in out
