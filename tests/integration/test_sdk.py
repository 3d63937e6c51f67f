"""The Python SDK against the real server on a loopback port (bundled ``models/shapes/1``).

The last test runs the ``make demo`` driver end to end (it starts its own server process).
"""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage

from xaiserve_client import (
    AsyncExplainClient,
    DeadlineExceeded,
    ExplainClient,
    Explanation,
    InvalidArgument,
    NotFound,
    Operation,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from xaiserve_client.builders import method_names
from xaiserve_client.demo import free_port

ROOT = Path(__file__).resolve().parents[2]
MODEL = "shapes"

# Cheap settings per method, cheapest methods first (tests need an explanation, not a good one).
LIGHT_PARAMS: dict[str, dict[str, Any]] = {
    "saliency": {},
    "gradient_times_input": {},
    "guided_backprop": {},
    "deconvolution": {},
    "lrp": {},
    "integrated_gradients": {"steps": 4},
    "smoothgrad": {"samples": 2, "seed": 0},
    "contextual_importance": {"seed": 0},
    "regional_prediction_difference": {"scales": 2, "seed": 0},
    "pixelwise_prediction_difference": {"stride": 8, "samples": 2, "seed": 0},
}


@pytest.fixture(scope="session")
def sdk_server(demo_server: tuple[object, int]) -> str:
    """The session's real server on the bundled models (tests/conftest.py); its ``host:port``."""
    return f"127.0.0.1:{demo_server[1]}"


@pytest.fixture(scope="session")
def client(sdk_server: str) -> Iterator[ExplainClient]:
    with ExplainClient(sdk_server, timeout=60.0) as c:
        c.wait_for_server(timeout=60.0)
        yield c


@pytest.fixture(scope="session")
def images() -> np.ndarray:
    """Four held-out demo images ``(4, 64, 64, 3)`` uint8."""
    from xaiserve.demo.shapes import heldout

    return heldout(4).images


@pytest.fixture(scope="session")
def method(client: ExplainClient, images: np.ndarray) -> str:
    """A method this server explains with (the cheapest the model lists)."""
    listed = client.get_model(MODEL).versions[0].methods
    candidates = [m for m in LIGHT_PARAMS if m in listed] + [
        m for m in listed if m not in LIGHT_PARAMS
    ]
    for name in candidates or method_names():
        try:
            client.explain(images[0], name, MODEL, params=LIGHT_PARAMS.get(name))
        except Unimplemented:
            continue
        return name
    pytest.fail(f"the server explains with none of its methods (listed: {listed})")


def _explain(client: ExplainClient, image: Any, method: str, **kwargs: Any) -> Explanation:
    return client.explain(image, method, MODEL, params=LIGHT_PARAMS.get(method), **kwargs)


def test_health_is_serving(client: ExplainClient) -> None:
    assert client.health() == "SERVING"
    assert client.health("xaiserve.v1.ExplainService") == "SERVING"


def test_list_and_get_models(client: ExplainClient) -> None:
    models = {m.name: m for m in client.list_models()}
    assert MODEL in models
    version = models[MODEL].versions[0]
    assert version.ready and version.input.size == (64, 64)
    assert version.labels == ["circle", "square", "triangle", "star", "cross"]
    assert client.get_model(MODEL, "1").versions[0].version == "1"
    with pytest.raises(NotFound):
        client.get_model("no_such_model")
    with pytest.raises(NotFound):
        client.get_model(MODEL, "999")


def test_predict_accepts_every_image_kind(
    client: ExplainClient, images: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "img.png"
    PILImage.fromarray(images[0]).save(path)
    buf = io.BytesIO()
    PILImage.fromarray(images[0]).save(buf, format="PNG")
    inputs = [images[0], images[0].astype(np.float32), path, str(path), buf.getvalue()]
    inputs.append(PILImage.fromarray(images[0]))
    predictions = [client.predict(image, MODEL) for image in inputs]
    first = predictions[0]
    assert len(first.classes) == 5 and first.model == MODEL and first.version == "1"
    probabilities = [c.probability for c in first.classes]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-3)
    for p in predictions[1:]:
        assert p.top.index == first.top.index
        assert p.top.probability == pytest.approx(first.top.probability, abs=1e-4)
    assert len(client.predict(images[0], top_k=2).classes) == 2  # model=None: the first model


def test_explain_heatmap_is_on_the_model_grid(
    client: ExplainClient, images: np.ndarray, method: str
) -> None:
    big = np.asarray(PILImage.fromarray(images[1]).resize((96, 80)))  # (80, 96, 3)
    explanation = _explain(client, big, method)
    assert explanation.heatmap.shape == (64, 64) and explanation.heatmap.dtype == np.float32
    assert np.isfinite(explanation.heatmap).all()
    assert explanation.method == method
    assert explanation.provenance["model"] == MODEL and explanation.provenance["method"] == method
    assert explanation.target.index == client.predict(big, MODEL).top.index
    assert explanation.forward_passes >= 1


def test_explain_a_named_target(client: ExplainClient, images: np.ndarray, method: str) -> None:
    explanation = _explain(client, images[0], method, target="square")
    assert (explanation.target.index, explanation.target.label) == (1, "square")
    assert _explain(client, images[0], method, target=3).target.label == "star"


def test_bad_requests_raise_the_right_errors(client: ExplainClient, images: np.ndarray) -> None:
    with pytest.raises(NotFound):
        client.predict(images[0], "no_such_model")
    with pytest.raises(NotFound):
        client.predict(images[0], MODEL, version="999")
    with pytest.raises(InvalidArgument) as err:
        client.predict(b"this is not an image", MODEL)
    assert err.value.details  # the server says what to fix
    with pytest.raises(InvalidArgument, match="unknown parameter"):
        client.explain(images[0], "saliency", MODEL, no_such_param=1)


def test_deadline_exceeded(client: ExplainClient, images: np.ndarray) -> None:
    # ~60k forward passes: seconds of work, so a 50 ms deadline always expires first
    with pytest.raises(DeadlineExceeded):
        client.explain(images[0], "pixelwise_prediction_difference", MODEL, timeout=0.05,
                       stride=1, samples=20)  # fmt: skip


def test_unreachable_server_is_unavailable() -> None:
    start = time.monotonic()
    target = f"127.0.0.1:{free_port()}"  # nothing listens there
    with ExplainClient(target, timeout=10.0, retries=1) as c, pytest.raises(Unavailable):
        c.list_models()
    assert time.monotonic() - start < 10.0


def test_explain_many_keeps_order(client: ExplainClient, images: np.ndarray, method: str) -> None:
    stream = client.explain_many(
        list(images), method, MODEL, params=LIGHT_PARAMS.get(method), max_in_flight=2
    )
    results = list(stream)
    assert [r.request_id for r in results] == ["0", "1", "2", "3"]
    expected = [p.top.index for p in client.predict_many(images, MODEL)]
    assert [r.target.index for r in results] == expected
    assert all(r.heatmap.shape == (64, 64) for r in results)


def test_predict_many_matches_predict(client: ExplainClient, images: np.ndarray) -> None:
    streamed = list(client.predict_many(iter(images), MODEL, top_k=1, max_in_flight=3))
    assert [p.request_id for p in streamed] == ["0", "1", "2", "3"]
    assert [p.top.index for p in streamed] == [client.predict(i, MODEL).top.index for i in images]


def test_score_a_heatmap(client: ExplainClient, images: np.ndarray, method: str) -> None:
    from xaiserve.demo.shapes import heldout

    data = heldout(1)
    heat = _explain(client, data.images[0], method).heatmap
    result = client.score(
        data.images[0], MODEL, heatmap=heat, morf={"steps": 5, "repeats": 1, "seed": 0},
        mask=data.masks[0],
    )  # fmt: skip
    assert len(result.morf_curve) == 6
    assert np.isfinite(result.aopc_morf)
    assert result.localisation is not None and 0.0 <= result.localisation.mu <= 1.0


def test_evaluate_dataset_operation(client: ExplainClient, method: str) -> None:
    from xaiserve.demo.shapes import heldout

    data = heldout(3)
    items = [(data.images[i], int(data.labels[i]), data.masks[i], f"s{i}") for i in range(3)]
    started = client.evaluate_dataset(
        items, MODEL, methods={method: LIGHT_PARAMS.get(method, {})},
        morf={"steps": 3, "repeats": 1, "seed": 0},
    )  # fmt: skip
    assert started.kind == "evaluate_dataset" and started.total == 3
    updates: list[Operation] = []
    final = client.wait_operation(started.id, timeout=60.0, on_update=updates.append)
    assert final.state == "SUCCEEDED", final.error
    assert final.finished and final.done == 3 and final.fraction == 1.0
    assert final.result and all(u.id == started.id for u in updates)
    assert client.get_operation(started.id).state == "SUCCEEDED"
    assert started.id in [op.id for op in client.list_operations()]
    with pytest.raises(NotFound):
        client.get_operation("0" * 32)  # well-formed, unknown
    with pytest.raises(InvalidArgument):
        client.get_operation("not-an-id")


def test_async_client(sdk_server: str, images: np.ndarray, method: str) -> None:
    async def run() -> tuple[list[str], int, list[str]]:
        async with AsyncExplainClient(sdk_server) as c:
            models = [m.name for m in await c.list_models()]
            prediction = await c.predict(images[0])
            with pytest.raises(NotFound):
                await c.predict(images[0], "no_such_model")
            stream = c.explain_many(images[:3], method, MODEL, params=LIGHT_PARAMS.get(method))
            ids = [e.request_id async for e in stream]
            return models, prediction.top.index, ids

    models, top, ids = asyncio.run(run())
    assert MODEL in models and 0 <= top < 5
    assert ids == ["0", "1", "2"]


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, bytes, str]]:
    """A TLS server that wants a bearer token; yields (host:port, CA certificate, token)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    from xaiserve.api.server import create_server
    from xaiserve.config import Settings

    folder = tmp_path_factory.mktemp("tls")
    cert, key, tokens = folder / "cert.pem", folder / "key.pem", folder / "tokens.txt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    tokens.write_text("# test tokens\ns3cret-token\n")
    settings = Settings.from_env(
        {}, host="127.0.0.1", port=0, metrics_port=0, models_dir=str(ROOT / "models"),
        log_format="text", log_level="WARNING", drain_seconds=1.0, tls_cert=str(cert),
        tls_key=str(key), auth_tokens_file=str(tokens),
    )  # fmt: skip
    server, port = create_server(settings)
    yield f"127.0.0.1:{port}", cert.read_bytes(), "s3cret-token"
    server.stop(grace=1.0)


def test_tls_and_bearer_token(secure_server: tuple[str, bytes, str], images: np.ndarray) -> None:
    target, ca, token = secure_server
    with ExplainClient(target, root_certificates=ca, token=token) as c:
        assert c.health() == "SERVING"
        assert c.predict(images[0], MODEL).model == MODEL
    with ExplainClient(target, root_certificates=ca) as c:
        assert c.health() == "SERVING"  # probes need no token
        with pytest.raises(Unauthenticated):
            c.list_models()
    with (
        ExplainClient(target, root_certificates=ca, token="wrong") as c,
        pytest.raises(Unauthenticated),
    ):
        c.predict(images[0], MODEL)
    with (
        ExplainClient(target, token=token, retries=0, timeout=10.0) as c,
        pytest.raises(Unavailable),
    ):
        c.list_models()  # plaintext to a TLS port


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_demo_end_to_end(tmp_path: Path) -> None:
    """``make demo`` (kept last: it starts its own server process)."""
    out = tmp_path / "demo-output"
    done = subprocess.run(
        [sys.executable, "-m", "xaiserve_client.demo", "--out", str(out), "--images", "2"],
        capture_output=True,
        text=True,
        timeout=140,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = (out / "scores.md").read_text()
    assert table.startswith("| image | true label | predicted | method |")
    assert (out / "scores.csv").is_file()
    overlays = sorted(out.glob("image*_*.png"))
    assert overlays, f"no overlays in {sorted(p.name for p in out.iterdir())}"
    rows = table.strip().splitlines()[2:]
    assert len(rows) == len(overlays)
    assert "written to" in done.stdout
