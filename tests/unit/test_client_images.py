"""SDK pieces that need no server: image inputs, heatmap pictures, request building, errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image as PILImage

from xaiserve_client import errors
from xaiserve_client.builders import class_ref, method_params, score_request
from xaiserve_client.channel import service_config
from xaiserve_client.cli import parse_class, parse_params
from xaiserve_client.images import (
    SIGNED_COLORMAP,
    UNSIGNED_COLORMAP,
    array_to_tensor,
    colorize,
    colormap_name,
    detect_format,
    load_rgb,
    overlay,
    tensor_to_array,
    to_image_proto,
)
from xaiserve_client.types import ClassScore, Explanation, Timings
from xaiserve_client.v1 import explain_pb2 as pb


def _rgb(height: int = 12, width: int = 10) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _decode(message: pb.Image) -> np.ndarray:
    with PILImage.open(io.BytesIO(message.encoded)) as img:
        return np.asarray(img)


# -- image inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, signature", [("PNG", "PNG"), ("JPEG", "JPEG")])
def test_path_is_sent_as_its_file_bytes(tmp_path: Path, fmt: str, signature: str) -> None:
    path = tmp_path / f"img.{fmt.lower()}"
    PILImage.fromarray(_rgb()).save(path, format=fmt)
    message = to_image_proto(path)
    assert message.WhichOneof("data") == "encoded"
    assert message.encoded == path.read_bytes()
    assert detect_format(message.encoded) == signature
    assert to_image_proto(str(path)) == message


def test_other_formats_are_converted_to_png(tmp_path: Path) -> None:
    path = tmp_path / "img.bmp"
    image = _rgb()
    PILImage.fromarray(image).save(path, format="BMP")
    message = to_image_proto(path)
    assert detect_format(message.encoded) == "PNG"
    np.testing.assert_array_equal(_decode(message), image)


def test_pil_image_is_sent_as_rgb_png() -> None:
    image = _rgb()
    rgba = PILImage.fromarray(np.dstack([image, np.full(image.shape[:2], 255, np.uint8)]))
    message = to_image_proto(rgba)
    assert detect_format(message.encoded) == "PNG"
    np.testing.assert_array_equal(_decode(message), image)


def test_bytes_pass_through() -> None:
    buf = io.BytesIO()
    PILImage.fromarray(_rgb()).save(buf, format="JPEG")
    assert to_image_proto(buf.getvalue()).encoded == buf.getvalue()


def test_uint8_array_is_sent_as_tensor() -> None:
    image = _rgb(7, 5)
    message = to_image_proto(image)
    assert message.WhichOneof("data") == "tensor"
    assert message.tensor.dtype == "uint8"
    assert list(message.tensor.shape) == [7, 5, 3]
    np.testing.assert_array_equal(tensor_to_array(message.tensor), image)


def test_float_and_gray_arrays() -> None:
    gray = np.linspace(0, 255, 20, dtype=np.float64).reshape(4, 5)
    message = to_image_proto(gray)
    assert message.tensor.dtype == "float32"
    assert list(message.tensor.shape) == [4, 5]
    np.testing.assert_allclose(tensor_to_array(message.tensor), gray, rtol=1e-6)
    assert load_rgb(gray).shape == (4, 5, 3)


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4, 4), np.uint8), np.zeros((4,), np.uint8), np.zeros((4, 4), np.int16)]
)
def test_bad_arrays_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        to_image_proto(bad)


def test_unsupported_inputs(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        to_image_proto(3.5)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        to_image_proto(tmp_path / "missing.png")


def test_tensor_round_trip_and_size_check() -> None:
    heat = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
    tensor = array_to_tensor(heat)
    assert tensor.dtype == "float32"
    np.testing.assert_array_equal(tensor_to_array(tensor), heat)
    tensor.data = tensor.data[:-4]
    with pytest.raises(ValueError, match="bytes"):
        tensor_to_array(tensor)


# -- heatmap pictures --------------------------------------------------------------------------


def test_colormap_choice() -> None:
    assert colormap_name(True) == SIGNED_COLORMAP
    assert colormap_name(False) == UNSIGNED_COLORMAP
    assert SIGNED_COLORMAP != UNSIGNED_COLORMAP


def test_signed_maps_are_centred_at_zero() -> None:
    heat = np.array([[-2.0, 0.0, 2.0]])
    colours = colorize(heat, signed=True).astype(int)
    negative, zero, positive = colours[0]
    assert positive[0] > positive[2]  # red: evidence for
    assert negative[2] > negative[0]  # blue: evidence against
    assert zero.min() > 230  # near white: no evidence
    # an unsigned rendering of the same values is a sequential ramp: dark → bright
    ramp = colorize(np.array([[0.0, 1.0, 2.0]]), signed=False).astype(int).sum(axis=2)[0]
    assert ramp[0] < ramp[1] < ramp[2]


def test_overlay_is_drawn_at_the_heatmap_grid() -> None:
    heat = np.zeros((16, 20), np.float32)
    heat[4:8, 5:10] = 1.0
    image = _rgb(64, 80)
    picture = overlay(heat, image, signed=False)
    assert picture.size == (20, 16) and picture.mode == "RGB"
    assert overlay(heat, image, signed=False, scale=3).size == (60, 48)
    # zero relevance leaves the (resized) input untouched
    flat = overlay(np.zeros((16, 20)), image, signed=True, grayscale=False)
    resized = np.asarray(PILImage.fromarray(image).resize((20, 16), PILImage.Resampling.BILINEAR))
    np.testing.assert_array_equal(np.asarray(flat), resized)


def test_explanation_save_png(tmp_path: Path) -> None:
    heat = np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)
    explanation = Explanation(
        heatmap=heat, signed=True, target=ClassScore(1, "b", 0.9), contrast=None,
        forward_passes=1, timings=Timings(), maps={}, values={}, provenance={}, method="m",
    )  # fmt: skip
    path = explanation.save_png(tmp_path / "out" / "heat.png", image=_rgb(32, 32))
    with PILImage.open(path) as img:
        assert img.format == "PNG" and img.size == (8, 8)


def test_explanation_from_proto() -> None:
    heat = np.ones((3, 2), np.float32)
    message = pb.ExplainResponse(
        heatmap=array_to_tensor(heat), signed=False, method="saliency", forward_passes=4,
        target=pb.ClassScore(index=2, label="c", probability=0.5),
        maps={"scale_1": array_to_tensor(heat * 2)}, values={"p": 0.25},
        provenance=pb.Provenance(model="m", version="1", seed=7),
    )  # fmt: skip
    explanation = Explanation.from_proto(message)
    assert explanation.heatmap.dtype == np.float32 and explanation.heatmap.shape == (3, 2)
    assert explanation.target == ClassScore(2, "c", 0.5) and explanation.contrast is None
    assert explanation.maps["scale_1"].max() == 2 and explanation.values == {"p": 0.25}
    assert explanation.provenance["seed"] == 7 and explanation.provenance["model"] == "m"


# -- request building --------------------------------------------------------------------------


def test_class_refs() -> None:
    assert class_ref(None) is None
    assert class_ref("predicted") == pb.ClassRef(predicted=True)
    assert class_ref(3) == pb.ClassRef(index=3)
    assert class_ref(np.int64(0)) == pb.ClassRef(index=0)
    assert class_ref("star") == pb.ClassRef(label="star")
    assert class_ref(ClassScore(4, "x", 0.1)) == pb.ClassRef(index=4)
    for bad in (-1, True, 2.5):
        with pytest.raises(errors.InvalidArgument):
            class_ref(bad)  # type: ignore[arg-type]


def test_cli_target_parsing() -> None:
    assert parse_class("3") == 3
    assert parse_class("star") == "star"
    assert parse_class(None) is None
    assert parse_class("predicted") == "predicted"


def test_method_params_by_field_name() -> None:
    message = method_params(
        "regional_prediction_difference",
        {"scales": np.int64(3), "segmentation": {"algorithm": "slic"}},
    )
    assert message.WhichOneof("method") == "regional_prediction_difference"
    params = message.regional_prediction_difference
    assert params.scales == 3 and params.segmentation.algorithm == "slic"
    assert not params.HasField("sigma_squared")  # unset → the server's default
    assert method_params("saliency").WhichOneof("method") == "saliency"


def test_method_params_errors_name_the_problem() -> None:
    with pytest.raises(errors.InvalidArgument, match="unknown method 'nope'"):
        method_params("nope")
    with pytest.raises(errors.InvalidArgument, match="'sclaes'"):
        method_params("regional_prediction_difference", {"sclaes": 3})
    with pytest.raises(errors.InvalidArgument, match="segmentation"):
        method_params("contextual_importance", {"segmentation": {"n_segmnts": 3}})
    with pytest.raises(errors.InvalidArgument):
        method_params("integrated_gradients", {"steps": "many"})


def test_score_request_needs_one_heatmap_source() -> None:
    image = _rgb()
    with pytest.raises(errors.InvalidArgument):
        score_request(image, "m", "")
    request = score_request(image, "m", "", heatmap=np.zeros((2, 2)), morf={"steps": 5})
    assert request.WhichOneof("heatmap_source") == "heatmap" and request.morf.steps == 5


def test_cli_params() -> None:
    assert parse_params(
        ["scales=3", "segmentation.algorithm=slic", 'fills=["a","b"]', "x=1.5"]
    ) == {
        "scales": 3,
        "segmentation": {"algorithm": "slic"},
        "fills": ["a", "b"],
        "x": 1.5,
    }


def test_service_config_retries_unavailable_only() -> None:
    config = service_config("localhost:50051", retries=3)
    policy = config["methodConfig"][0]["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert policy["maxAttempts"] == 4
    assert "retryThrottling" in config and "loadBalancingConfig" not in config
    balanced = service_config("dns:///xaiserve.ns.svc:50051", retries=0)
    assert balanced["loadBalancingConfig"] == [{"round_robin": {}}]
    assert "methodConfig" not in balanced
    json.dumps(config)


# -- errors ------------------------------------------------------------------------------------


class _RpcError(grpc.RpcError):
    """A stand-in for a failed call as grpc raises it (code() and details())."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    "code, cls",
    [
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhausted),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
        (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
        (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
        (grpc.StatusCode.UNIMPLEMENTED, errors.Unimplemented),
        (grpc.StatusCode.DATA_LOSS, errors.XaiserveError),
    ],
)
def test_error_mapping(code: grpc.StatusCode, cls: type[errors.XaiserveError]) -> None:
    err = errors.from_rpc_error(_RpcError(code, "model 'x' not found"))
    assert type(err) is cls
    assert err.code == code and err.details == "model 'x' not found"
    assert code.name in str(err)


def test_errors_are_also_builtin_exceptions() -> None:
    assert isinstance(errors.NotFound("x"), LookupError)
    assert isinstance(errors.InvalidArgument("x"), ValueError)
    assert isinstance(errors.DeadlineExceeded("x"), TimeoutError)
    assert errors.NotFound("x").code == grpc.StatusCode.NOT_FOUND
