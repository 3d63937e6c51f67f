"""Per-model ``[execution]``: a version's onnxruntime threads and concurrent batches override
the server's ``intra_op_threads`` and ``inference_workers`` (real repository, real sessions), and
GetModel reports the shape each version runs (real server, the SDK)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx

from tests.support import region_logit_model, write_model_folder
from xaiserve.config import Settings
from xaiserve.models.repository import ModelRepository
from xaiserve.observability import Metrics
from xaiserve.runtime.batcher import ImageBudget
from xaiserve_client import ExplainClient


def _model() -> onnx.ModelProto:
    mask = np.zeros((8, 8), bool)
    mask[:, :3] = True
    return region_logit_model(8, 8, [mask, ~mask])


def _lanes(name: str) -> int:
    """Bulk batch threads of ``name`` version 1 now alive (not the interactive lane)."""
    prefix = f"batcher-{name}-1-"
    return sum(
        t.name.startswith(prefix) and not t.name.endswith("interactive")
        for t in threading.enumerate()
    )


def _intra_op_threads(model: object) -> int:
    session = model.batcher.runner.__self__.session  # type: ignore[attr-defined]
    return int(session.get_session_options().intra_op_num_threads)


def _two_models(root: Path) -> None:
    """``plain`` (the server's settings) and ``tuned`` (``[execution]`` 1 thread × 3 workers)."""
    write_model_folder(_model(), root, height=8, width=8, name="plain", max_batch_size=2)
    tuned = write_model_folder(_model(), root, height=8, width=8, name="tuned", max_batch_size=2)
    config = tuned / "config.toml"
    config.write_text(config.read_text() + "[execution]\nintra_op_threads = 1\nworkers = 3\n")


def test_execution_section_overrides_the_server_settings(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    _two_models(root)
    settings = Settings(models_dir=str(root), intra_op_threads=2, inference_workers=2)
    repo = ModelRepository(root, settings, Metrics(), ImageBudget(1000))
    try:
        plain = repo.load_version("plain", "1").model
        tuned_model = repo.load_version("tuned", "1").model
        assert plain is not None and tuned_model is not None
        assert (_lanes("plain"), _intra_op_threads(plain)) == (2, 2)  # the server's settings
        assert (_lanes("tuned"), _intra_op_threads(tuned_model)) == (3, 1)  # the model's own
        assert (plain.workers, plain.intra_op_threads) == (2, 2)
        assert (tuned_model.workers, tuned_model.intra_op_threads) == (3, 1)
        images = np.random.default_rng(0).uniform(0, 255, (12, 8, 8, 3)).astype(np.float32)
        expected = plain.predict(images)
        # 12 images in batches of 2 over three concurrent runs of one session: same answers
        with ThreadPoolExecutor(6) as pool:
            parts = list(
                pool.map(lambda i: tuned_model.predict(images[i : i + 2]), range(0, 12, 2))
            )
        np.testing.assert_allclose(np.concatenate(parts), expected, rtol=1e-6, atol=1e-6)
    finally:
        repo.close()
    assert _lanes("tuned") == 0


def test_get_model_reports_each_versions_execution(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "repo"
    _two_models(root)
    _, port = start_server(root, intra_op_threads=2, inference_workers=2)
    with ExplainClient(f"127.0.0.1:{port}") as client:
        plain = client.get_model("plain").versions[0]
        tuned = client.get_model("tuned").versions[0]
    assert (plain.inference_workers, plain.intra_op_threads) == (2, 2)
    assert (tuned.inference_workers, tuned.intra_op_threads) == (3, 1)
    assert plain.max_batch_size == tuned.max_batch_size == 2
