"""The randomisation test served: Score's option and EvaluateDataset's aggregate, over a real
gRPC server on loopback (Adebayo et al. 2018)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from tests.support import ignored_branch_model, write_model_folder
from xaiserve.runtime.parameter_randomisation import weighted_layers
from xaiserve_client.v1 import explain_pb2 as pb
from xaiserve_client.v1 import explain_pb2_grpc as pb_grpc


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    write_model_folder(
        ignored_branch_model(32),
        root,
        height=32,
        width=32,
        name="branches",
        mean=(127.5, 127.5, 127.5),
        std=(60.0, 60.0, 60.0),
    )
    return root


@pytest.fixture
def image() -> bytes:
    rng = np.random.default_rng(2)
    img = rng.uniform(0, 255, size=(32, 32, 3))
    img[8:20, 10:24] = (230, 40, 60)
    return png(img)


def score_request(image: bytes, **randomisation: int) -> pb.ScoreRequest:
    return pb.ScoreRequest(
        model="branches",
        image=pb.Image(encoded=image),
        method=pb.MethodParams(saliency=pb.SaliencyParams()),
        morf=pb.MorfParams(steps=4, repeats=1, seed=1),
        randomisation=pb.RandomisationOptions(**randomisation),
    )


def test_score_adds_the_randomisation_test(start_server, channel_to, repo, image) -> None:  # type: ignore[no-untyped-def]
    _, port = start_server(repo)
    stub = pb_grpc.ExplainServiceStub(channel_to(port))
    response = stub.Score(score_request(image), timeout=120)
    r = response.randomisation
    layers = weighted_layers(ignored_branch_model(32))
    assert r.method == "saliency" and r.total_layers == len(layers) == 4
    assert [p.depth for p in r.points] == [1, 2, 3, 4] and r.full_randomisation
    assert [p.layer for p in r.points] == [layer.label for layer in layers]
    assert r.summary == r.points[-1].spearman_abs
    assert r.seed == 0 and "N(mean(W), std(W)^2)" in r.distribution and r.images == 1
    for p in r.points:
        assert -1.0 <= p.spearman_abs <= 1.0 and -1.0 <= p.ssim <= 1.0
        assert math.isfinite(p.hog)  # 32×32 holds one HOG block
    assert response.provenance.parameters["randomisation"]["seed"] == 0

    # every variant is a full method call: the forward passes say so
    plain = stub.Score(
        pb.ScoreRequest(
            model="branches",
            image=pb.Image(encoded=image),
            method=pb.MethodParams(saliency=pb.SaliencyParams()),
            morf=pb.MorfParams(steps=4, repeats=1, seed=1),
        ),
        timeout=60,
    )
    assert not plain.HasField("randomisation")
    two_stops = stub.Score(score_request(image, stops=2), timeout=60)
    per_variant = (two_stops.forward_passes - plain.forward_passes) / 2
    assert 1 <= per_variant <= 2  # saliency's cost estimate is 2 (forward + backward)
    assert response.forward_passes - plain.forward_passes == 4 * per_variant

    # same seed, same figures (the variants are cached and deterministic); stops choose depths
    again = stub.Score(score_request(image), timeout=60).randomisation
    assert again == r
    two = stub.Score(score_request(image, stops=2, seed=5), timeout=60).randomisation
    assert [p.depth for p in two.points] == [1, 4] and two.seed == 5


def test_randomisation_errors_have_clear_statuses(start_server, channel_to, repo, image) -> None:  # type: ignore[no-untyped-def]
    from xaiserve.evaluation.morf import MorfParams, morf_cost

    plain_cost = morf_cost(MorfParams(steps=4, repeats=1, seed=1), (32, 32)) + 1 + 2
    _, port = start_server(repo, max_forward_passes=plain_cost + 1)
    stub = pb_grpc.ExplainServiceStub(channel_to(port))

    def status(request: pb.ScoreRequest) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(request, timeout=30)
        return info.value.code(), info.value.details()

    supplied = pb.ScoreRequest(
        model="branches",
        image=pb.Image(encoded=image),
        heatmap=pb.Tensor(
            dtype="float32", shape=[32, 32], data=np.zeros((32, 32), np.float32).tobytes()
        ),
        morf=pb.MorfParams(steps=2, repeats=1),
        randomisation=pb.RandomisationOptions(),
    )
    code, details = status(supplied)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "randomisation needs method" in details
    code, details = status(score_request(image, stops=65))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "randomisation.stops" in details
    # the plain score fits the limit; its 4 variants (2 passes each) do not
    plain = score_request(image)
    plain.ClearField("randomisation")
    assert stub.Score(plain, timeout=30).aopc_morf is not None
    code, details = status(score_request(image))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "randomisation.stops" in details


def test_dataset_evaluation_aggregates_the_test(start_server, channel_to, repo, image) -> None:  # type: ignore[no-untyped-def]
    _, port = start_server(repo)
    stub = pb_grpc.ExplainServiceStub(channel_to(port))
    rng = np.random.default_rng(4)
    images = [image, png(rng.uniform(0, 255, size=(32, 32, 3)))]

    def stream():  # type: ignore[no-untyped-def]
        yield pb.EvaluateDatasetRequest(
            config=pb.EvaluateDatasetConfig(
                model="branches",
                methods=[
                    pb.MethodParams(saliency=pb.SaliencyParams()),
                    pb.MethodParams(guided_backprop=pb.GuidedBackpropParams()),
                ],
                morf=pb.MorfParams(steps=3, repeats=1, seed=0),
                randomisation=pb.RandomisationOptions(stops=2),
            )
        )
        for i, data in enumerate(images):
            yield pb.EvaluateDatasetRequest(
                item=pb.LabelledImage(image=pb.Image(encoded=data), name=f"img{i}")
            )

    op = stub.EvaluateDataset(stream(), timeout=30)
    final = list(stub.WatchOperation(pb.OperationRequest(id=op.id), timeout=300))[-1]
    assert final.state == pb.Operation.SUCCEEDED, final.error.message
    result = final.result["randomisation"]
    assert result["seed"] == 0
    for method in ("saliency", "guided_backprop"):
        curve = result["methods"][method]
        assert curve["images"] == 2 and curve["depths"] == [1, 4]
        assert curve["summary"] == curve["spearman_abs"][-1]
        assert len(curve["ssim"]) == len(curve["hog"]) == 2
    # the aggregate is the per-stop mean of each image's own Score
    singles = []
    for data in images:
        request = score_request(data, stops=2)
        singles.append(
            [p.spearman_abs for p in stub.Score(request, timeout=60).randomisation.points]
        )
    np.testing.assert_allclose(
        result["methods"]["saliency"]["spearman_abs"], np.mean(singles, axis=0), rtol=1e-6
    )
