"""Perturbing in the network's input space (``NetworkInputModel``) against image space.

The regional and pixel-wise prediction differences, MoRF and contextual importance build their
perturbed images in the network's input format when the model takes it (a served ``Model``): the
original and the replacement values converted once, then copied where the layout keeps each
pixel. The independent path is the one every other model gets: the image-space exclusions,
converted by ``to_network_input`` as the model's ``predict`` does. Both run through a real ONNX
model loaded by the real repository; the network inputs, the probabilities, every map and every
curve must be equal bit for bit, for both layouts, both channel orders and a preprocessing whose
value range, mean and std are all non-trivial.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.support import load_onnx_model
from xaiserve.contracts.input import Preprocessing
from xaiserve.contracts.models import NetworkInputModel
from xaiserve.evaluation.morf import MorfParams, region_perturbation
from xaiserve.imaging.preprocess import to_network_input
from xaiserve.imaging.segmentation import SegmentationParams
from xaiserve.methods.base import Target
from xaiserve.methods.contextual_importance import (
    ContextualImportanceParams,
    contextual_importance,
)
from xaiserve.methods.pixelwise_prediction_difference import (
    PixelwisePredictionDifferenceParams,
)
from xaiserve.methods.pixelwise_prediction_difference import explain as pixelwise
from xaiserve.methods.regional_prediction_difference import (
    RegionalPredictionDifferenceParams,
    scatter_plan,
)
from xaiserve.methods.regional_prediction_difference import explain as regional
from xaiserve.models.model import Model

from .test_prediction_difference import scene

H, W, K = 40, 48, 5

CASES = [
    # layout, channel order, value range, mean, std (in the model's channel order)
    ("NCHW", "RGB", (0.0, 1.0), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ("NCHW", "BGR", (-1.0, 3.0), (0.3, -0.7, 1.1), (0.5, 2.0, 0.37)),
    ("NHWC", "RGB", (0.0, 255.0), (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    ("NHWC", "BGR", (-2.5, 0.75), (-0.1, 0.2, 0.05), (1.3, 0.21, 0.8)),
]


def random_graph(layout: Literal["NCHW", "NHWC"], seed: int = 0) -> onnx.ModelProto:
    """Logits = tanh(x·W1)·W2 on the flattened input, random weights: every input value
    reaches every class, so any change of the inputs shows in the outputs."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0.0, 0.02, (3 * H * W, 16)).astype(np.float32)
    w2 = rng.normal(0.0, 1.0, (16, K)).astype(np.float32)
    shape = ["N", 3, H, W] if layout == "NCHW" else ["N", H, W, 3]
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W1"], ["hidden"]),
            helper.make_node("Tanh", ["hidden"], ["act"]),
            helper.make_node("MatMul", ["act", "W2"], ["logits"]),
        ],
        "random_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", K])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class NetworkRecorder:
    """The served model as a ``NetworkInputModel``, keeping every network input it is sent."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.inputs: list[np.ndarray] = []
        self.image_calls: list[np.ndarray] = []
        self.input_size = model.input_size
        self.num_classes = model.num_classes
        self.output_kind = model.output_kind
        self.preprocessing = model.preprocessing

    def predict(
        self, images: np.ndarray, output: Literal["probabilities", "raw"] = "probabilities"
    ) -> np.ndarray:
        """Single image-space calls (contextual importance's explanation score): kept apart."""
        self.image_calls.append(to_network_input(images, self.preprocessing))
        return self.model.predict(images, output)

    def predict_network_input(
        self,
        inputs: Iterable[np.ndarray],
        output: Literal["probabilities", "raw"] = "probabilities",
    ) -> np.ndarray:
        def kept() -> Iterable[np.ndarray]:
            for chunk in inputs:
                self.inputs.append(chunk.copy())
                yield chunk

        return self.model.predict_network_input(kept(), output)


class ImageSpaceModel:
    """The same served model behind ``predict`` only (image space, the fallback path); keeps
    ``to_network_input`` of every image-space chunk: what ``Model.predict`` feeds the network."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.inputs: list[np.ndarray] = []
        self.input_size = model.input_size
        self.num_classes = model.num_classes
        self.output_kind = model.output_kind

    def predict(
        self,
        images: np.ndarray | Iterable[np.ndarray],
        output: Literal["probabilities", "raw"] = "probabilities",
    ) -> np.ndarray:
        chunks = [images] if isinstance(images, np.ndarray) else images

        def kept() -> Iterable[np.ndarray]:
            for chunk in chunks:
                self.inputs.append(to_network_input(chunk, self.model.preprocessing))
                yield chunk

        return self.model.predict(kept(), output)


def served(tmp_path: Path, case: tuple[Any, ...]) -> Model:
    layout, order, value_range, mean, std = case
    return load_onnx_model(
        random_graph(layout),
        tmp_path,
        height=H,
        width=W,
        mean=mean,
        std=std,
        value_range=value_range,
        layout=layout,
        channel_order=order,
        max_batch_size=8,
    )


@pytest.mark.parametrize(("layout", "order", "value_range", "mean", "std"), CASES)
@pytest.mark.parametrize("nested", [False, True])
def test_network_space_exclusions_are_the_converted_image_space_ones(
    tmp_path: Path,
    layout: Literal["NCHW", "NHWC"],
    order: str,
    value_range: tuple[float, float],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    nested: bool,
) -> None:
    model = served(tmp_path, (layout, order, value_range, mean, std))
    try:
        assert isinstance(model, NetworkInputModel)
        image, _ = scene(H, W, seed=3)
        params = RegionalPredictionDifferenceParams(
            scales=4,
            prior_segments=64,
            seed=11,
            sigma_squared=400.0,  # wide draws: many clipped at 0 and 255 too
            return_scale_maps=True,
            segmentation=SegmentationParams(nested=nested),
        )
        net, img = NetworkRecorder(model), ImageSpaceModel(model)
        assert isinstance(net, NetworkInputModel) and not isinstance(img, NetworkInputModel)
        target = Target(2, contrast=4)
        a = regional(net, image, target, params)
        b = regional(img, image, target, params)
        sent, want = np.concatenate(net.inputs), np.concatenate(img.inputs)
        assert sent.shape == want.shape == (1 + 2 + 4 + 8 + 16, *want.shape[1:])
        assert sent.dtype == np.float32
        np.testing.assert_array_equal(sent, want)
        # the exclusions differ from the original (the comparison is not vacuous)
        assert all((sent[i] != sent[0]).any() for i in range(1, len(sent)))
        assert a.target_probability == b.target_probability
        np.testing.assert_array_equal(a.heatmap, b.heatmap)
        assert a.maps.keys() == b.maps.keys() and "contrast" in a.maps
        for key in a.maps:
            np.testing.assert_array_equal(a.maps[key], b.maps[key])
        assert a.values == b.values
        assert np.ptp(a.heatmap) > 0
        assert not net.image_calls
    finally:
        model.close()


@pytest.mark.parametrize("case", CASES)
def test_pixelwise_pd_in_network_space_is_the_converted_image_space_run(
    tmp_path: Path, case: tuple[Any, ...]
) -> None:
    """Algorithm 2's conditional samples written into the converted original (each patch
    converted alone, chunks built in place): the same network inputs, bit for bit, as the
    perturbed images converted whole, and so the same maps."""
    model = served(tmp_path, case)
    try:
        image, _ = scene(H, W, seed=5)
        params = PixelwisePredictionDifferenceParams(
            inner_size=5, outer_size=9, samples=3, stride=7, seed=2, clip_negative=False
        )
        net, img = NetworkRecorder(model), ImageSpaceModel(model)
        target = Target(1, contrast=3)
        a = pixelwise(net, image, target, params)
        b = pixelwise(img, image, target, params)
        sent, want = np.concatenate(net.inputs), np.concatenate(img.inputs)
        patches = a.values["patches"]
        assert sent.shape == want.shape == (1 + 3 * patches, *want.shape[1:])
        assert sent.dtype == np.float32
        np.testing.assert_array_equal(sent, want)
        # every sample differs from the original (the comparison is not vacuous)
        changed = (sent[1:] != sent[:1]).reshape(len(sent) - 1, -1).any(axis=1)
        assert changed.all()
        assert a.target_probability == b.target_probability
        np.testing.assert_array_equal(a.heatmap, b.heatmap)
        np.testing.assert_array_equal(a.maps["contrast"], b.maps["contrast"])
        assert a.values == b.values and np.ptp(a.heatmap) > 0
        assert not net.image_calls
    finally:
        model.close()


@pytest.mark.parametrize("case", CASES)
def test_morf_in_network_space_is_the_converted_image_space_run(
    tmp_path: Path, case: tuple[Any, ...]
) -> None:
    """MoRF, LeRF and random curves with per-pixel noise (a fresh draw per repeat): the same
    network inputs and curves whether the windows are copied in image or network space."""
    model = served(tmp_path, case)
    try:
        image, _ = scene(H, W, seed=4)
        heatmap = np.random.default_rng(5).random((H, W))
        params = MorfParams(
            window=7, steps=12, fill="uniform", repeats=2, seed=3, lerf=True, random_baseline=True
        )
        net, img = NetworkRecorder(model), ImageSpaceModel(model)
        a = region_perturbation(net, image, heatmap, 1, params)
        b = region_perturbation(img, image, heatmap, 1, params)
        sent, want = np.concatenate(net.inputs), np.concatenate(img.inputs)
        assert len(sent) == a.forward_passes == 1 + 3 * 2 * 12 and not net.image_calls
        np.testing.assert_array_equal(sent, want)
        for field in ("morf_curve", "lerf_curve", "random_curve"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        assert (a.aopc_morf, a.aopc_lerf, a.aopc_random) == (
            b.aopc_morf,
            b.aopc_lerf,
            b.aopc_random,
        )
        assert np.ptp(a.morf_curve) > 0
    finally:
        model.close()


@pytest.mark.parametrize("case", CASES)
def test_contextual_importance_in_network_space_is_the_converted_image_space_run(
    tmp_path: Path, case: tuple[Any, ...]
) -> None:
    """Removal by blur, utilities over noise and white: the same network inputs, maps and
    values in either space."""
    model = served(tmp_path, case)
    try:
        image, _ = scene(H, W, seed=6)
        params = ContextualImportanceParams(
            segmentation=SegmentationParams(n_segments=12),
            fill="blur",
            utility_fills=("noise", "white"),
            seed=9,
        )
        net, img = NetworkRecorder(model), ImageSpaceModel(model)
        target = Target(3, contrast=0)
        a = contextual_importance(net, image, target, params)
        b = contextual_importance(img, image, target, params)
        sent = np.concatenate(net.inputs + net.image_calls)  # the stream, then the kept image
        want = np.concatenate(img.inputs)
        assert sent.shape == want.shape and len(sent) == a.values["forward_passes"]
        np.testing.assert_array_equal(sent, want)
        np.testing.assert_array_equal(a.heatmap, b.heatmap)
        assert a.maps.keys() == b.maps.keys()
        for key in a.maps:
            np.testing.assert_array_equal(a.maps[key], b.maps[key])
        assert a.values == b.values and a.target_probability == b.target_probability
        assert np.ptp(a.heatmap) > 0
    finally:
        model.close()


@pytest.mark.parametrize(("layout", "order", "value_range", "mean", "std"), CASES)
def test_scatter_plan_puts_each_pixel_channel_where_the_layout_keeps_it(
    layout: Literal["NCHW", "NHWC"],
    order: Literal["RGB", "BGR"],
    value_range: tuple[float, float],
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> None:
    """Hand-computed placement: region pixels written one by one with the documented formula
    ``x = (lo + p/255·(hi − lo) − mean) / std`` against one scatter of the plan."""
    space = Preprocessing(
        layout=layout, channel_order=order, value_range=value_range, mean=mean, std=std
    )
    h, w = 3, 4
    rng = np.random.default_rng(0)
    pixel_order = rng.permutation(h * w)
    bounds = np.array([0, 5, h * w])
    fills = rng.uniform(0, 255, (h * w, 3)).astype(np.float32)
    plan = scatter_plan(pixel_order, bounds, fills, space)
    out = np.zeros((3, h, w) if layout == "NCHW" else (h, w, 3), np.float64).reshape(-1)
    out[plan.index[3 * 5 :]] = plan.values[3 * 5 :]  # region 1
    out = out.reshape((3, h, w) if layout == "NCHW" else (h, w, 3))
    lo, hi = value_range
    src = (2, 1, 0) if order == "BGR" else (0, 1, 2)
    for k in range(h * w):
        y, x = divmod(int(pixel_order[k]), w)
        for c in range(3):
            got = out[c, y, x] if layout == "NCHW" else out[y, x, c]
            if k < 5:
                assert got == 0.0  # region 0 untouched
            else:
                v = (lo + float(fills[k, src[c]]) / 255.0 * (hi - lo) - mean[c]) / std[c]
                assert got == pytest.approx(v, rel=1e-5, abs=1e-5)


def test_predict_network_input_is_predict_after_conversion(tmp_path: Path) -> None:
    model = load_onnx_model(
        random_graph("NHWC"),
        tmp_path,
        height=H,
        width=W,
        value_range=(-1.0, 1.0),
        layout="NHWC",
        channel_order="BGR",
    )
    try:
        images = np.random.default_rng(1).uniform(0, 255, (5, H, W, 3)).astype(np.float32)
        x = to_network_input(images, model.preprocessing)
        np.testing.assert_array_equal(
            model.predict_network_input([x[:2], x[2:]], "raw"), model.predict(images, "raw")
        )
        with pytest.raises(ValueError, match=r"\(N, 40, 48, 3\) float32"):
            model.predict_network_input(x.transpose(0, 3, 1, 2).copy())
        with pytest.raises(ValueError, match="float32"):
            model.predict_network_input(x.astype(np.float64))
    finally:
        model.close()
