"""ONNX -> PyTorch converter on tiny graphs, each checked against onnxruntime on the same file."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import captum.attr
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import zennit.canonizers
import zennit.composites
import zennit.layer
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from xaiserve.errors import Unimplemented
from xaiserve.methods.lrp import batchnorm_pairs
from xaiserve.runtime.onnx_to_torch import UnsupportedOperator, convert_onnx

torch.set_num_threads(1)
RNG = np.random.default_rng(0)
ATOL = 1e-5


def _array(*shape: int, scale: float = 0.5) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _init(name: str, value: Any) -> onnx.TensorProto:
    array = np.asarray(value)
    if array.dtype.kind in "iu":
        array = array.astype(np.int64)
    return numpy_helper.from_array(array, name)


def _constant_node(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=numpy_helper.from_array(value, name + "_v")
    )


def _model(
    nodes: list[onnx.NodeProto],
    input_shape: Sequence[int],
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = 17,
    batch: str | int = "batch",
) -> onnx.ModelProto:
    """Graph with input ``x`` (dim 0 = ``batch``) and output ``y``."""
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *input_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9 if opset <= 20 else 10
    return model


def _check(
    model: onnx.ModelProto,
    batches: Sequence[int] = (1, 3),
    atol: float = ATOL,
    static_batch: int | None = None,
    rtol: float = 0.0,
) -> torch.fx.GraphModule:
    """Convert ``model`` and compare it with onnxruntime on random inputs of each batch size."""
    converted = convert_onnx(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    dims = session.get_inputs()[0].shape[1:]
    for batch in batches:
        x = RNG.standard_normal([batch, *dims]).astype(np.float32)
        with torch.no_grad():
            actual = converted(torch.from_numpy(x)).numpy()
        if static_batch is None:
            expected = session.run(None, {"x": x})[0]
        else:  # onnxruntime only takes the exported batch size: run item by item
            expected = np.concatenate(
                [session.run(None, {"x": x[i : i + 1]})[0] for i in range(batch)]
            )
        assert actual.shape == expected.shape
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)
    return converted


def _module_types(module: nn.Module) -> set[type]:
    return {type(m) for m in module.modules()}


def _conv(inputs: Sequence[str], output: str = "y", **attrs: Any) -> onnx.NodeProto:
    return helper.make_node("Conv", list(inputs), [output], **attrs)


# ---------------------------------------------------------------------------------------------
# convolution, linear, batch norm
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attrs",
    [
        {"pads": [1, 1, 1, 1], "strides": [2, 2]},
        {"pads": [2, 2, 2, 2], "dilations": [2, 2], "group": 2},
        {"pads": [0, 1, 1, 0], "strides": [2, 1]},
        {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
        {"auto_pad": "SAME_LOWER", "strides": [2, 2]},
        {"auto_pad": "VALID"},
    ],
)
def test_conv_variants(attrs: dict[str, Any]) -> None:
    groups = int(attrs.get("group", 1))  # type: ignore[call-overload]
    weight = _array(6, 4 // groups, 3, 3)
    model = _model(
        [_conv(["x", "w", "b"], kernel_shape=[3, 3], **attrs)],
        [4, 9, 8],
        [_init("w", weight), _init("b", _array(6))],
    )
    converted = _check(model)
    convs = [m for m in converted.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].groups == groups


def test_conv_weights_from_constant_nodes_and_1d_conv() -> None:
    nodes = [
        _constant_node("w", _array(5, 3, 3)),
        _constant_node("b", _array(5)),
        _conv(["x", "w", "b"], pads=[1, 1]),
    ]
    converted = _check(_model(nodes, [3, 10]))
    assert nn.Conv1d in _module_types(converted)


def test_identity_on_initializer_and_runtime_tensor_at_opset_19() -> None:
    nodes = [
        helper.make_node("Identity", ["w0"], ["w"]),
        helper.make_node("Identity", ["b0"], ["b"]),
        helper.make_node("Identity", ["x"], ["x1"]),
        _conv(["x1", "w", "b"], "c"),
        helper.make_node("Identity", ["c"], ["y"]),
    ]
    inits = [_init("w0", _array(4, 3, 1, 1)), _init("b0", _array(4))]
    converted = _check(_model(nodes, [3, 5, 5], inits, opset=19))
    assert nn.Conv2d in _module_types(converted)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_to_linear(trans_b: int) -> None:
    weight = _array(6, 4) if trans_b else _array(4, 6)
    node = helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=trans_b, alpha=0.5, beta=2.0)
    converted = _check(_model([node], [4], [_init("w", weight), _init("c", _array(1, 6))]))
    linears = [m for m in converted.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].out_features == 6


@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_then_add_folds_into_one_linear(bias_first: bool) -> None:
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["b", "h"] if bias_first else ["h", "b"], ["y"]),
    ]
    converted = _check(_model(nodes, [5], [_init("w", _array(5, 7)), _init("b", _array(1, 7))]))
    linears = [m for m in converted.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].bias is not None
    assert [n.op for n in converted.graph.nodes] == ["placeholder", "call_module", "output"]


def test_conv_then_per_channel_add_folds_into_conv_bias() -> None:
    nodes = [_conv(["x", "w"], "c"), helper.make_node("Add", ["c", "b"], ["y"])]
    inits = [_init("w", _array(4, 3, 1, 1)), _init("b", _array(1, 4, 1, 1))]
    converted = _check(_model(nodes, [3, 5, 5], inits))
    convs = [m for m in converted.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].bias is not None


def test_bias_is_not_folded_when_the_product_has_other_consumers() -> None:
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["a"]),
        helper.make_node("Mul", ["a", "h"], ["y"]),
    ]
    converted = _check(_model(nodes, [5], [_init("w", _array(5, 7)), _init("b", _array(7))]))
    linears = [m for m in converted.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].bias is None


def test_batchnorm_after_conv_is_a_mergeable_pair() -> None:
    channels = 4
    stats = [
        _init("scale", _array(channels) + 1),
        _init("shift", _array(channels)),
        _init("mean", _array(channels)),
        _init("var", np.abs(_array(channels)) + 0.5),
    ]
    nodes = [
        _conv(["x", "w"], "c", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["bn"], epsilon=1e-5
        ),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1),
    ]
    inits = [_init("w", _array(channels, 3, 3, 3)), *stats]
    inits += [_init("fc_w", _array(2, channels)), _init("fc_b", _array(2))]
    converted = _check(_model(nodes, [3, 6, 6], inits))
    types = _module_types(converted)
    assert {nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.ReLU, nn.AdaptiveAvgPool2d} <= types
    pairs = batchnorm_pairs(converted)
    assert len(pairs) == 1
    modules = dict(converted.named_modules())
    assert isinstance(modules[pairs[0][0]], nn.Conv2d)
    assert isinstance(modules[pairs[0][1]], nn.BatchNorm2d)

    # zennit's canonizer merges the pair; the output only changes by the factor
    # 1/sqrt(1 + eps) that zennit's identity batch norm keeps
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        before = converted(x)
    canonizer = zennit.canonizers.NamedMergeBatchNorm([((c,), b) for c, b in pairs])
    handles = canonizer.apply(converted)
    with torch.no_grad():
        after = converted(x)
    for handle in handles:
        handle.remove()
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)


def test_batchnorm_pairs_skips_conv_with_other_consumers() -> None:
    stats = [_init(n, np.ones(3, np.float32)) for n in ("s", "t", "m", "v")]
    nodes = [
        _conv(["x", "w"], "c"),
        helper.make_node("BatchNormalization", ["c", "s", "t", "m", "v"], ["bn"]),
        helper.make_node("Add", ["bn", "c"], ["y"]),
    ]
    converted = _check(_model(nodes, [3, 4, 4], [_init("w", _array(3, 3, 1, 1)), *stats]))
    assert batchnorm_pairs(converted) == []


# ---------------------------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "attrs", "extra_inputs", "expected_type", "opset"),
    [
        ("Relu", {}, [], nn.ReLU, 17),
        ("Sigmoid", {}, [], nn.Sigmoid, 17),
        ("HardSwish", {}, [], nn.Hardswish, 17),
        ("HardSigmoid", {"alpha": 1 / 6}, [], nn.Hardsigmoid, 17),
        ("HardSigmoid", {}, [], None, 17),
        ("Clip", {}, [0.0, 6.0], nn.ReLU6, 17),
        ("Clip", {}, [-0.5, 0.7], nn.Hardtanh, 17),
        ("Clip", {}, [0.0], nn.ReLU, 17),
        ("LeakyRelu", {"alpha": 0.2}, [], nn.LeakyReLU, 17),
        ("Tanh", {}, [], nn.Tanh, 17),
        ("Erf", {}, [], None, 17),
        ("Gelu", {}, [], nn.GELU, 20),
        ("Gelu", {"approximate": "tanh"}, [], nn.GELU, 20),
        ("Softmax", {"axis": 1}, [], nn.Softmax, 17),
        ("LogSoftmax", {}, [], nn.LogSoftmax, 17),
    ],
)
def test_activations(
    op: str,
    attrs: dict[str, Any],
    extra_inputs: list[float],
    expected_type: type | None,
    opset: int,
) -> None:
    names = [f"c{i}" for i in range(len(extra_inputs))]
    inits = [_init(n, np.array(v, np.float32)) for n, v in zip(names, extra_inputs, strict=True)]
    model = _model([helper.make_node(op, ["x", *names], ["y"], **attrs)], [6], inits, opset)
    converted = _check(model)
    if expected_type is not None:
        assert expected_type in _module_types(converted)


# ---------------------------------------------------------------------------------------------
# pooling and reductions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "attrs"),
    [
        ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
        ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
        ("MaxPool", {"kernel_shape": [2, 2], "pads": [0, 0, 1, 1], "strides": [2, 2]}),
        ("MaxPool", {"kernel_shape": [2, 2], "dilations": [2, 2]}),
        ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
        ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
        ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 0}),
        ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
        ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
        ("GlobalAveragePool", {}),
        ("GlobalMaxPool", {}),
    ],
)
def test_pooling(op: str, attrs: dict[str, Any]) -> None:
    _check(_model([helper.make_node(op, ["x"], ["y"], **attrs)], [2, 9, 8]))


def test_reduce_mean_over_hw_with_axes_input_opset_18() -> None:
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=1)
    converted = _check(_model([node], [3, 5, 4], [_init("axes", [-1, -2])], opset=18))
    assert nn.AdaptiveAvgPool2d in _module_types(converted)


@pytest.mark.parametrize(
    ("op", "axes", "keepdims"), [("ReduceMean", [2, 3], 0), ("ReduceMax", [1], 1)]
)
def test_reductions_with_axes_attribute_opset_13(op: str, axes: list[int], keepdims: int) -> None:
    node = helper.make_node(op, ["x"], ["y"], axes=axes, keepdims=keepdims)
    _check(_model([node], [3, 5, 4], opset=13))


def test_reduce_sum_with_axes_input_opset_13() -> None:
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)
    _check(_model([node], [3, 5, 4], [_init("axes", [1, 3])], opset=13))


# ---------------------------------------------------------------------------------------------
# elementwise arithmetic
# ---------------------------------------------------------------------------------------------


def test_residual_add_is_a_zennit_sum_module() -> None:
    nodes = [
        _conv(["x", "w", "b"], "c", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "x"], ["y"]),
    ]
    inits = [_init("w", _array(3, 3, 3, 3)), _init("b", _array(3))]
    converted = _check(_model(nodes, [3, 5, 5], inits))
    sums = [m for m in converted.modules() if isinstance(m, zennit.layer.Sum)]
    assert len(sums) == 1


def test_squeeze_excitation_mul_with_broadcast() -> None:
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["g"]),
        _conv(["g", "w", "b"], "s"),
        helper.make_node("HardSigmoid", ["s"], ["gate"], alpha=1 / 6),
        helper.make_node("Mul", ["x", "gate"], ["m"]),
        helper.make_node("Add", ["m", "gate"], ["y"]),  # broadcast runtime + runtime
    ]
    inits = [_init("w", _array(4, 4, 1, 1)), _init("b", _array(4))]
    _check(_model(nodes, [4, 5, 5], inits))


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Pow"])
@pytest.mark.parametrize("constant_first", [False, True])
def test_binary_with_constant(op: str, constant_first: bool) -> None:
    constant = np.abs(_array(3, 1, 1)) + 0.5
    inputs = ["c", "x"] if constant_first else ["x", "c"]
    nodes = []
    if op == "Pow":  # keep the base positive
        nodes.append(helper.make_node("Sigmoid", ["x"], ["p"]))
        inputs = ["c", "p"] if constant_first else ["p", "c"]
    nodes.append(helper.make_node(op, inputs, ["y"]))
    _check(_model(nodes, [3, 2, 2], [_init("c", constant)]), atol=1e-4 if op == "Pow" else ATOL)


@pytest.mark.parametrize("op", ["Sub", "Div"])
def test_binary_runtime_operands(op: str) -> None:
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node(op, ["x", "s"], ["y"])]
    _check(_model(nodes, [3, 4]), rtol=1e-5)  # sigmoid rounding differs by ~1 ulp


def test_nary_sum() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Sum", ["x", "r", "x"], ["y"]),
    ]
    _check(_model(nodes, [2, 3]))


# ---------------------------------------------------------------------------------------------
# shape manipulation and dynamic batch
# ---------------------------------------------------------------------------------------------


def test_shape_gather_concat_reshape_keeps_batch_dynamic() -> None:
    """The classic TorchScript flatten: Shape -> Gather(0) -> Unsqueeze -> Concat([n, -1])."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    inits = [_init("zero", np.array(0)), _init("axes0", [0]), _init("minus_one", [-1])]
    _check(_model(nodes, [2, 3, 4], inits), batches=(1, 8))


def test_batch_dependent_shape_arithmetic() -> None:
    """Target (n * 2, -1) needs the general batch-dependent reshape."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], start=0, end=1),
        helper.make_node("Mul", ["shape", "two"], ["n2"]),
        helper.make_node("Concat", ["n2", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Reshape", ["r", "back"], ["y"]),
    ]
    inits = [_init("two", [2]), _init("minus_one", [-1]), _init("back", [0, -1])]
    _check(_model(nodes, [4, 3], inits), batches=(1, 8))


def test_static_batch_export_still_runs_other_batch_sizes() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Reshape", ["r", "target"], ["y"]),
    ]
    model = _model(nodes, [2, 3], [_init("target", [1, 6])], batch=1)
    _check(model, batches=(1, 8), static_batch=1)


@pytest.mark.parametrize(
    ("nodes", "inits", "opset"),
    [
        ([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1])], [], 17),
        ([helper.make_node("Flatten", ["x"], ["y"], axis=2)], [], 17),
        ([helper.make_node("Reshape", ["x", "s"], ["y"])], [_init("s", [0, 3, -1])], 17),
        ([helper.make_node("Unsqueeze", ["x", "a"], ["y"])], [_init("a", [1, -1])], 17),
        ([helper.make_node("Squeeze", ["x"], ["y"], axes=[1])], [], 11),
        ([helper.make_node("Squeeze", ["x"], ["y"])], [], 17),
        (
            [helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])],
            [
                _init("st", [1, 0]),
                _init("en", [9999, -1]),
                _init("ax", [2, -1]),
                _init("sp", [2, 1]),
            ],
            17,
        ),
        (
            [helper.make_node("Gather", ["x", "i"], ["y"], axis=2)],
            [_init("i", [[0, -1], [2, 1]])],
            17,
        ),
        ([helper.make_node("Gather", ["x", "i"], ["y"], axis=3)], [_init("i", np.array(1))], 17),
        ([helper.make_node("Split", ["x", "sp"], ["y", "z"], axis=2)], [_init("sp", [1, 3])], 17),
        ([helper.make_node("Split", ["x"], ["y", "z"], axis=3, num_outputs=2)], [], 18),
        (
            [helper.make_node("Pad", ["x", "p", "v"], ["y"])],
            [_init("p", [0, 0, 1, 2, 0, 0, 2, 1]), _init("v", np.array(0.5, np.float32))],
            17,
        ),
        (
            [helper.make_node("Pad", ["x", "p"], ["y"], mode="reflect")],
            [_init("p", [0, 0, 1, 1, 0, 0, 1, 1])],
            17,
        ),
        (
            [helper.make_node("Pad", ["x", "p", "", "a"], ["y"], mode="edge")],
            [_init("p", [1, 2]), _init("a", [-1])],
            18,
        ),
        ([helper.make_node("Expand", ["x", "s"], ["y"])], [_init("s", [1, 3, 1, 1])], 17),
        ([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], [], 17),
        ([helper.make_node("Dropout", ["x"], ["y"])], [], 17),
    ],
)
def test_shape_ops(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], opset: int) -> None:
    squeezable = nodes[0].op_type == "Squeeze"
    shape = [1, 4, 5] if squeezable else [3, 4, 5]
    if nodes[0].op_type == "Expand":
        shape = [1, 4, 5]
    if nodes[0].op_type == "Split" and len(nodes[0].output) == 2:
        nodes = [*nodes, helper.make_node("Identity", ["z"], ["unused"])]
    _check(_model(nodes, shape, inits, opset), batches=(1, 4) if not squeezable else (3,))


def test_concat_of_runtime_and_constant_tensors() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Concat", ["x", "r", "c"], ["y"], axis=-1),
    ]
    model = _model(nodes, [2, 3], [_init("c", np.zeros((1, 2, 1), np.float32))], batch=1)
    _check(model, batches=(1,))


def test_concat_of_branches() -> None:
    nodes = [
        _conv(["x", "w1"], "a"),
        _conv(["x", "w2"], "b", pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["a", "b", "p"], ["y"], axis=1),
    ]
    inits = [_init("w1", _array(2, 3, 1, 1)), _init("w2", _array(4, 3, 3, 3))]
    _check(_model(nodes, [3, 6, 6], inits))


def test_named_modules_are_real_layers_named_after_nodes() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="/features/conv1/Conv"),
        helper.make_node("Relu", ["c"], ["r"], name="/features/relu/Relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="/Flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1, name="/fc/Gemm"),
    ]
    inits = [_init("w", _array(2, 3, 3, 3)), _init("fc", _array(5, 2 * 4 * 4))]
    converted = _check(_model(nodes, [3, 6, 6], inits))
    modules = dict(converted.named_modules())
    assert isinstance(modules["features_conv1_Conv"], nn.Conv2d)
    assert isinstance(modules["features_relu_Relu"], nn.ReLU)
    assert isinstance(modules["fc_Gemm"], nn.Linear)
    assert not converted.training


def _hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def test_zennit_and_captum_attach_to_converted_layers() -> None:
    """LRP hooks land on the converted Conv2d/Linear/Sum layers; the module deep-copies."""
    nodes = [
        _conv(["x", "w1", "b1"], "c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Add", ["r1", "x"], ["s"]),
        helper.make_node("GlobalAveragePool", ["s"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    inits = [_init("w1", _array(3, 3, 3, 3)), _init("b1", _array(3)), _init("fc", _array(4, 3))]
    converted = copy.deepcopy(_check(_model(nodes, [3, 6, 6], inits)))
    x = torch.randn(2, 3, 6, 6)
    composite = zennit.composites.EpsilonPlusFlat()
    hooked: list[type] = []
    with composite.context(converted) as modified:
        hooked = [type(m) for m in modified.modules() if _hooks(m)]
        x_grad = x.clone().requires_grad_(True)
        out = modified(x_grad)
        (relevance,) = torch.autograd.grad(out, x_grad, torch.eye(4)[[1, 1]])
    for kind in (nn.Conv2d, nn.Linear, zennit.layer.Sum):
        assert any(issubclass(t, kind) for t in hooked), kind
    assert relevance.shape == x.shape and torch.isfinite(relevance).all()
    assert not any(_hooks(m) for m in converted.modules())  # hooks removed again

    attributions = captum.attr.IntegratedGradients(converted).attribute(x, target=1, n_steps=8)
    assert attributions.shape == x.shape and torch.isfinite(attributions).all()


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


def test_unsupported_operator_names_op_and_node() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("NonMaxSuppression", ["r", "r"], ["y"], name="/roi/NMS"),
    ]
    with pytest.raises(UnsupportedOperator) as raised:
        convert_onnx(_model(nodes, [4, 4]))
    message = str(raised.value)
    assert "unsupported ONNX operator 'NonMaxSuppression' at node '/roi/NMS'" in message
    assert "supported: " in message and "Conv" in message and "Gemm" in message
    assert isinstance(raised.value, Unimplemented)
    assert raised.value.op_type == "NonMaxSuppression" and raised.value.node_name == "/roi/NMS"


def test_unsupported_use_of_a_supported_operator() -> None:
    node = helper.make_node("Conv", ["x", "x"], ["y"], name="dyn_conv")
    with pytest.raises(UnsupportedOperator, match="'Conv' at node 'dyn_conv': weight must be"):
        convert_onnx(_model([node], [1, 1, 1, 1]))


def test_graph_with_two_inputs_is_rejected() -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    with pytest.raises(Unimplemented, match="exactly one input"):
        convert_onnx(helper.make_model(graph))


# ---------------------------------------------------------------------------------------------
# a tiny torch model through the TorchScript exporter
# ---------------------------------------------------------------------------------------------


class _TinyNet(nn.Module):
    """Conv/BN/ReLU, a residual block, squeeze-excitation, pooling and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU6())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 8, 1), nn.Hardsigmoid())
        self.pool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(8 * 5 * 5, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify ``x``."""
        h = self.stem(x)
        h = h + self.block(h)
        h = h * self.se(h)
        return torch.softmax(self.head(self.pool(h)), dim=1)


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
def test_torchscript_export_of_tiny_net_keeping_batch_norm(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _TinyNet().eval()
    for bn in (net.stem[1], net.block[1]):
        bn.running_mean.uniform_(-0.5, 0.5)  # type: ignore[operator]
        bn.running_var.uniform_(0.5, 2.0)  # type: ignore[operator]
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(
        net,
        (torch.randn(1, 3, 16, 16),),
        str(path),
        dynamo=False,
        opset_version=17,
        training=torch.onnx.TrainingMode.PRESERVE,  # keep BatchNormalization nodes
        do_constant_folding=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
    )
    model = onnx.load(path)
    converted = _check(model, batches=(1, 8))
    assert convert_onnx(str(path)).code == converted.code  # also takes a path
    assert {nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.Softmax} <= _module_types(converted)
    assert len(batchnorm_pairs(converted)) == 2
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), net(x), atol=1e-5, rtol=0)
