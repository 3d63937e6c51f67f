"""The server's segmentation cache over real gRPC: reuse across targets and methods, metrics,
``segmentation.nested`` in the request and in provenance, and bad nested parameters."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from PIL import Image

from tests.support import refines, region_logit_model, write_model_folder
from xaiserve_client.v1 import explain_pb2 as pb
from xaiserve_client.v1 import explain_pb2_grpc as pb_grpc

SIZE = 48


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def masks() -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((SIZE, SIZE), bool)
    a[8:20, 6:22] = True
    b = np.zeros((SIZE, SIZE), bool)
    b[28:42, 26:44] = True
    return a, b


def scene() -> np.ndarray:
    rng = np.random.default_rng(3)
    image = np.empty((SIZE, SIZE, 3))
    image[:] = (70.0, 110.0, 90.0)
    image += rng.normal(0, 6, image.shape)
    a, b = masks()
    image[a] = (230.0, 200.0, 40.0)
    image[b] = (40.0, 60.0, 220.0)
    return np.clip(image, 0, 255)


@pytest.fixture
def served(start_server, channel_to, tmp_path: Path):  # type: ignore[no-untyped-def]
    root = tmp_path / "repo"
    write_model_folder(
        region_logit_model(SIZE, SIZE, list(masks()), gain=0.05),
        root,
        height=SIZE,
        width=SIZE,
        labels=["a", "b"],
        name="regions",
    )
    server, port = start_server(root, segmentation_workers=1)
    return server, pb_grpc.ExplainServiceStub(channel_to(port))


def regional(target: int, **params: object) -> pb.MethodParams:
    return pb.MethodParams(
        regional_prediction_difference=json_format.ParseDict(
            {"return_scale_maps": True, **params}, pb.RegionalPredictionDifferenceParams()
        )
    )


def sample(server, name: str, kind: str | None = None) -> float:  # type: ignore[no-untyped-def]
    labels = {"kind": kind} if kind is not None else {}
    value = server.metrics.registry.get_sample_value(f"xaiserve_{name}", labels)
    return 0.0 if value is None else float(value)


def heat(response: pb.ExplainResponse, key: str | None = None) -> np.ndarray:
    t = response.heatmap if key is None else response.maps[key]
    return np.frombuffer(t.data, dtype=t.dtype).reshape(tuple(t.shape))


def test_the_same_image_is_segmented_once_across_targets_and_methods(served) -> None:  # type: ignore[no-untyped-def]
    server, stub = served
    image = pb.Image(encoded=png(scene()))
    first = stub.Explain(
        pb.ExplainRequest(
            model="regions", image=image, target=pb.ClassRef(index=0), method=regional(0)
        ),
        timeout=120,
    )
    misses = sample(server, "segmentation_cache_misses_total", "exact")
    assert misses == 6  # 2, 4, …, 32 regions and the prior's 256
    assert sample(server, "segmentation_wait_seconds_count") >= 1
    second = stub.Explain(
        pb.ExplainRequest(
            model="regions", image=image, target=pb.ClassRef(index=1), method=regional(1)
        ),
        timeout=120,
    )
    assert sample(server, "segmentation_cache_misses_total", "exact") == misses
    assert sample(server, "segmentation_cache_hits_total", "exact") == 5
    assert sample(server, "segmentation_cache_hits_total", "prior") == 1
    assert sample(server, "segmentation_cache_entries") > 0
    for n in (2, 4, 8, 16, 32):
        np.testing.assert_array_equal(heat(first, f"labels_{n}"), heat(second, f"labels_{n}"))
    # each class lights up its own object (the known answer), from the shared labels
    a, b = masks()
    assert heat(first)[a].mean() > 3 * heat(first)[b].mean()
    assert heat(second)[b].mean() > 3 * heat(second)[a].mean()
    # contextual importance at 64 segments reuses the SLIC call behind the 32-region scale
    hits = sample(server, "segmentation_cache_hits_total", "superpixels")
    stub.Explain(
        pb.ExplainRequest(
            model="regions",
            image=image,
            target=pb.ClassRef(index=0),
            method=pb.MethodParams(
                contextual_importance=pb.ContextualImportanceParams(
                    segmentation=pb.SegmentationParams(n_segments=64)
                )
            ),
        ),
        timeout=120,
    )
    assert sample(server, "segmentation_cache_hits_total", "superpixels") == hits + 1


def test_nested_scales_over_grpc_and_in_provenance(served) -> None:  # type: ignore[no-untyped-def]
    server, stub = served
    image = pb.Image(encoded=png(scene()))
    response = stub.Explain(
        pb.ExplainRequest(
            model="regions",
            image=image,
            target=pb.ClassRef(index=0),
            method=regional(0, segmentation={"nested": True}),
        ),
        timeout=120,
    )
    params = json_format.MessageToDict(response.provenance.parameters)
    assert params["segmentation"]["nested"] is True
    assert sample(server, "segmentation_cache_misses_total", "nested") == 1
    labels = [heat(response, f"labels_{n}").astype(int) for n in (32, 16, 8, 4, 2)]
    assert all(refines(fine, coarse) for fine, coarse in itertools.pairwise(labels))
    a, b = masks()
    assert heat(response)[a].mean() > 3 * heat(response)[b].mean()
    default = stub.Explain(
        pb.ExplainRequest(
            model="regions", image=image, target=pb.ClassRef(index=0), method=regional(0)
        ),
        timeout=120,
    )
    assert (
        json_format.MessageToDict(default.provenance.parameters)["segmentation"]["nested"] is False
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.Explain(
            pb.ExplainRequest(
                model="regions",
                image=image,
                method=regional(0, segmentation={"nested": True}, prior_segments=16),
            ),
            timeout=60,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prior_segments" in (err.value.details() or "")
