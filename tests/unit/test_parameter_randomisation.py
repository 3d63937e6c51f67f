"""Cascading model-parameter randomisation of ONNX graphs (Adebayo et al. 2018, Sec. 3.1):
layer order from the topology, stops, the stated distribution, validity and determinism."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import DEMO_MODEL_DIR
from xaiserve.runtime.parameter_randomisation import (
    RandomisationPlan,
    layer_stops,
    plan_randomisation,
    randomised_model,
    randomised_tensors,
    weighted_layers,
)


def chain_model(seed: int = 0) -> onnx.ModelProto:
    """input → conv1 → bn1 → relu → conv2 → relu → GAP → flatten → fc (Gemm) → logits, with
    an input normalisation (Sub/Div by constants) that is not a parameter. Nodes are written out
    of order on purpose: the layer order must come from the topology, not from the file."""
    rng = np.random.default_rng(seed)

    def t(name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array((scale * rng.normal(size=shape)).astype(np.float32), name)

    inits = [
        numpy_helper.from_array(np.full((1, 3, 1, 1), 0.5, np.float32), "mean"),
        numpy_helper.from_array(np.array([0.2, 0.3, 0.4], np.float32).reshape(1, 3, 1, 1), "std"),
        t("w1", 4, 3, 3, 3),
        t("b1", 4),
        numpy_helper.from_array(np.linspace(0.5, 1.5, 4).astype(np.float32), "bn_scale"),
        t("bn_bias", 4),
        t("bn_mean", 4),
        numpy_helper.from_array(np.linspace(0.5, 2.0, 4).astype(np.float32), "bn_var"),
        t("w2", 6, 4, 3, 3),
        t("b2", 6),
        t("fc_w", 6, 3),
        t("fc_b", 3),
    ]
    nodes = [
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc"),
        helper.make_node("Sub", ["input", "mean"], ["centred"], name="sub"),
        helper.make_node("Div", ["centred", "std"], ["x"], name="div"),
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization",
            ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"],
            ["n1"],
            name="bn1",
        ),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    # ONNX requires topologically sorted nodes in a file; keep the shuffled copy for the order
    # test and return a sorted one for the runtime.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def sorted_model(model: onnx.ModelProto) -> onnx.ModelProto:
    from xaiserve.runtime.parameter_randomisation import topological_order

    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = [out.graph.node[i] for i in topological_order(model.graph)]
    copies = [onnx.NodeProto() for _ in nodes]
    for c, n in zip(copies, nodes, strict=True):
        c.CopyFrom(n)
    del out.graph.node[:]
    out.graph.node.extend(copies)
    onnx.checker.check_model(out)
    return out


def test_layers_come_from_the_topology_output_first() -> None:
    layers = weighted_layers(chain_model())
    assert [layer.name for layer in layers] == ["fc", "conv2", "conv1"]
    assert layers[0].initializers == ("fc_w", "fc_b")
    # the batch norm's scale and bias join conv1; its running statistics stay
    assert layers[2].initializers == ("w1", "b1", "bn_scale", "bn_bias")
    every = {n for layer in layers for n in layer.initializers}
    assert not every & {"mean", "std", "bn_mean", "bn_var"}


def test_default_stops_every_layer_up_to_twenty_else_ten() -> None:
    assert layer_stops(3) == (1, 2, 3)
    assert layer_stops(20) == tuple(range(1, 21))
    spread = layer_stops(53)
    assert len(spread) == 10 and spread[0] == 1 and spread[-1] == 53
    assert list(spread) == sorted(spread)
    assert layer_stops(53, 4) == (1, 18, 36, 53)
    assert layer_stops(5, 9) == (1, 2, 3, 4, 5)
    assert layer_stops(5, 1) == (5,)
    with pytest.raises(ValueError):
        layer_stops(5, -1)
    with pytest.raises(ValueError):
        layer_stops(0)


def test_variants_cascade_from_the_output_and_keep_the_rest() -> None:
    model = sorted_model(chain_model())
    plan = plan_randomisation(model, seed=7)
    tensors = randomised_tensors(model, plan)
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for stop in plan.stops:
        variant = randomised_model(model, plan, stop, tensors)
        values = {t.name: numpy_helper.to_array(t) for t in variant.graph.initializer}
        changed = {n for n in values if not np.array_equal(values[n], original[n])}
        expected = {n for layer in plan.layers[:stop] for n in layer.initializers}
        assert changed == expected
        for name, value in values.items():  # names, shapes and dtypes kept
            assert value.shape == original[name].shape and value.dtype == original[name].dtype


def test_distribution_keeps_each_tensors_mean_and_std() -> None:
    rng = np.random.default_rng(0)
    w = (0.7 + 0.05 * rng.standard_normal((64, 32, 3, 3))).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["y"], name="conv")],
        "one",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 32, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64, 3, 3])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    plan = plan_randomisation(model, seed=1)
    drawn = randomised_tensors(model, plan)["w"]
    assert drawn.mean() == pytest.approx(w.mean(), abs=2e-3)
    assert drawn.std() == pytest.approx(w.std(), rel=0.02)
    assert abs(np.corrcoef(drawn.ravel(), w.ravel())[0, 1]) < 0.03  # fresh values, not a shuffle


def test_constant_tensors_keep_their_value() -> None:
    model = sorted_model(chain_model())
    plan = plan_randomisation(model, seed=3)
    tensors = randomised_tensors(model, plan)
    ones = np.ones(4, np.float32)
    w1 = next(t for t in model.graph.initializer if t.name == "w1")
    assert not np.array_equal(tensors["w1"], numpy_helper.to_array(w1))
    # a tensor of equal values has std 0: N(mean, 0) keeps it
    const = onnx.ModelProto()
    const.CopyFrom(model)
    for t in const.graph.initializer:
        if t.name == "bn_scale":
            t.CopyFrom(numpy_helper.from_array(ones, "bn_scale"))
    assert np.array_equal(randomised_tensors(const, plan)["bn_scale"], ones)


def test_randomisation_is_deterministic_per_seed() -> None:
    model = sorted_model(chain_model())
    a = randomised_tensors(model, plan_randomisation(model, seed=11))
    b = randomised_tensors(model, plan_randomisation(model, seed=11))
    c = randomised_tensors(model, plan_randomisation(model, seed=12))
    assert a.keys() == b.keys() == c.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert all(not np.array_equal(a[k], c[k]) for k in a if a[k].std() > 0)
    plan = plan_randomisation(model, seed=11)
    first = randomised_model(model, plan, 2, a).SerializeToString()
    assert randomised_model(model, plan, 2).SerializeToString() == first


@pytest.mark.parametrize("source", ["chain", "demo"])
def test_variants_pass_the_checker_and_keep_the_output_shape(source: str) -> None:
    if source == "demo":
        model = onnx.load(str(DEMO_MODEL_DIR / "shapes" / "1" / "model.onnx"))
        x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    else:
        model = sorted_model(chain_model())
        x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    plan = plan_randomisation(model, seed=5)
    tensors = randomised_tensors(model, plan)
    in_name = model.graph.input[0].name

    def run(m: onnx.ModelProto) -> np.ndarray:
        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {in_name: x})[0])

    reference = run(model)
    for stop in plan.stops:
        variant = randomised_model(model, plan, stop, tensors)
        onnx.checker.check_model(variant, full_check=True)
        out = run(variant)
        assert out.shape == reference.shape and out.dtype == reference.dtype
        assert not np.allclose(out, reference)


def test_plan_refuses_a_graph_without_parameters() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["y"])],
        "none",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    with pytest.raises(ValueError, match="no parameter initializers"):
        plan_randomisation(helper.make_model(graph))


def test_a_custom_plan_randomises_only_its_layers() -> None:
    model = sorted_model(chain_model())
    layers = {layer.name: layer for layer in weighted_layers(model)}
    plan = RandomisationPlan((layers["conv2"],), (1,), seed=0)
    variant = randomised_model(model, plan, 1)
    changed = [
        t.name
        for t, u in zip(model.graph.initializer, variant.graph.initializer, strict=True)
        if t.SerializeToString() != u.SerializeToString()
    ]
    assert changed == ["w2", "b2"]


@pytest.mark.parametrize("source", ["chain", "demo"])
def test_variant_modules_from_two_conversions_equal_direct_conversions(source: str) -> None:
    import torch

    from xaiserve.runtime.onnx_to_torch import convert_onnx
    from xaiserve.runtime.randomised_modules import CascadeModules

    if source == "demo":
        model = onnx.load(str(DEMO_MODEL_DIR / "shapes" / "1" / "model.onnx"))
    else:
        model = sorted_model(chain_model())
    plan = plan_randomisation(model, seed=2)
    tensors = randomised_tensors(model, plan)
    cascade = CascadeModules(
        lambda stop: randomised_model(model, plan, stop, tensors),
        plan.total_layers,
        [{n: tensors[n] for n in layer.initializers} for layer in plan.layers],
    )
    for stop in plan.stops:
        built = cascade.module(stop).state_dict()
        direct = convert_onnx(randomised_model(model, plan, stop, tensors)).state_dict()
        assert built.keys() == direct.keys()
        for key in direct:
            assert torch.equal(built[key], direct[key]), (stop, key)
    assert cascade.shortcut  # these graphs take the two-conversion path
