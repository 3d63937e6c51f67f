"""GAD building blocks (Mazini Rodrigues et al.): the modified targets of Section 4.1 by hand,
the intersection of important features of Section 4.3, support-set storage (record round trip,
atomic writes: a failed or cancelled fit leaves no folder), and parameter validation.

Real parts only: real ONNX graphs loaded through the repository, real torch modules, a real
:class:`OperationStore` running the fitting job in its thread.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tests.support import load_onnx_model, region_logit_model
from xaiserve.errors import FailedPrecondition, InvalidInput, NotFound
from xaiserve.jobs.gad_fitting import GadFitConfig, fit_support_set, modified_targets, select_pair
from xaiserve.jobs.operations import OperationHandle, OperationStore
from xaiserve.methods.base import Target
from xaiserve.methods.gad import GadParams, gad, gad_filter
from xaiserve.methods.params import params_from_mapping
from xaiserve.models.model import Model
from xaiserve.models.support_sets import (
    SUPPORT_SETS_DIR,
    SupportSetRecord,
    SupportSetStore,
    alpha_filename,
    dataset_sha256,
    logit_module,
)
from xaiserve.observability import Metrics
from xaiserve.runtime.onnx_to_torch import convert_onnx

torch.set_num_threads(1)


# -- Section 4.1: targets ---------------------------------------------------------------------


def test_modified_targets_by_hand() -> None:
    logits = np.array(
        [[1.0, -1.0, 0.5], [0.5, -0.6, 0.0], [-0.9, 0.8, 2.0], [0.2, 0.3, 0.4]], np.float32
    )
    labels = np.array([0, 0, 1, 2])
    out = modified_targets(logits, labels, class_a=0, class_b=1, alpha=2.0)
    expected = np.array(
        [
            [1.0, -3.0, 0.5],  # class a: N_b − α
            [0.5, -2.6, 0.0],
            [-2.9, 0.8, 2.0],  # class b: N_a − α
            [0.2, 0.3, 0.4],  # other classes untouched
        ],
        np.float32,
    )
    np.testing.assert_allclose(out, expected)
    np.testing.assert_allclose(logits[0], [1.0, -1.0, 0.5])  # the input is not modified
    # the paper's Section 3 example: order within each class is preserved (a translation)
    assert np.argsort(out[labels == 0, 1]).tolist() == np.argsort(logits[:2, 1]).tolist()


def test_select_pair_keeps_only_the_two_classes_in_order() -> None:
    images = np.arange(6, dtype=np.float32).reshape(6, 1, 1, 1) * np.ones((1, 2, 2, 3), np.float32)
    labels = np.array([0, 2, 1, 3, 1, 0])
    imgs, lab = select_pair(images, labels, 1, 0)
    assert lab.tolist() == [0, 1, 1, 0]
    assert imgs[:, 0, 0, 0].tolist() == [0.0, 2.0, 4.0, 5.0]
    with pytest.raises(InvalidInput, match="both classes"):
        select_pair(images, labels, 0, 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"class_a": 1, "class_b": 1}, "choose two classes"),
        ({"class_a": 0, "class_b": 1, "alphas": (2.0, 2.0)}, "twice"),
        ({"class_a": 0, "class_b": 1, "alphas": (-1.0,)}, "≥ 0"),
        ({"class_a": 0, "class_b": 1, "epochs": 0}, "epochs"),
        ({"class_a": 0, "class_b": 1, "learning_rate": 0.0}, "learning_rate"),
    ],
)
def test_fit_config_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        GadFitConfig(**kwargs)  # type: ignore[arg-type]


def test_fit_config_defaults_are_the_papers() -> None:
    cfg = GadFitConfig(0, 1)
    assert cfg.alphas == (2.0, 4.0, 6.0, 8.0)
    assert (cfg.epochs, cfg.learning_rate) == (10, 4e-5)


# -- Section 4.3: intersection ----------------------------------------------------------------


def test_gad_filter_keeps_features_important_in_every_map() -> None:
    original = np.array([[4.0, 3.0], [-2.0, 1.0]], np.float32)  # top half: |4|, |3|
    support1 = np.array([[5.0, 0.0], [6.0, 0.0]], np.float32)  # top half: (0,0), (1,0)
    support2 = np.array([[1.0, 0.5], [2.0, 0.1]], np.float32)  # top half: (0,0), (1,0)
    heat, kept = gad_filter([original, support1, support2], keep_fraction=0.5)
    assert kept.tolist() == [[True, False], [False, False]]
    np.testing.assert_allclose(heat, [[4.0, 0.0], [0.0, 0.0]])
    # magnitudes decide importance: a strongly negative attribution is important
    heat, kept = gad_filter([original, -support1], keep_fraction=0.5)
    assert kept.tolist() == [[True, False], [False, False]]
    # the original map alone: its own top half, magnitudes kept
    heat, kept = gad_filter([original], keep_fraction=0.75)
    assert kept.tolist() == [[True, True], [True, False]]
    np.testing.assert_allclose(heat, [[4.0, 3.0], [2.0, 0.0]])


def test_gad_filter_never_adds_features_of_the_support_maps() -> None:
    rng = np.random.default_rng(0)
    maps = [rng.normal(size=(16, 16)).astype(np.float32) for _ in range(5)]
    heat, kept = gad_filter(maps, 0.5)
    top = np.abs(maps[0]) >= np.sort(np.abs(maps[0]).ravel())[-128]
    assert kept.sum() < top.sum() and not (kept & ~top).any()  # "must not introduce new" (Sec. 4)
    assert (heat[~kept] == 0).all() and (heat >= 0).all()


def test_gad_params_use_the_proto_names_and_validate() -> None:
    p = params_from_mapping(GadParams, {"support_set": "gad-0-1-1"}, "gad.")
    assert (p.base_method, p.keep_fraction, p.steps) == ("saliency", 0.5, 50)
    with pytest.raises(InvalidInput, match="support_set is required"):
        params_from_mapping(GadParams, {}, "gad.")
    with pytest.raises(InvalidInput, match="not a valid name"):
        GadParams(support_set="../x")
    with pytest.raises(InvalidInput, match="keep_fraction"):
        GadParams(support_set="s", keep_fraction=0.0)
    with pytest.raises(InvalidInput, match="choose one of"):
        params_from_mapping(GadParams, {"support_set": "s", "base_method": "lrp"}, "gad.")


# -- storage ----------------------------------------------------------------------------------


def _record(**changes: object) -> SupportSetRecord:
    fields: dict[str, object] = dict(
        id="",
        model="m",
        version="1",
        model_sha256="ab" * 32,
        class_a=0,
        class_b=1,
        class_a_label="circle",
        class_b_label="square",
        alphas=[2.0, 4.5],
        epochs=3,
        learning_rate=4e-5,
        batch_size=8,
        seed=7,
        images=10,
        images_a=5,
        images_b=5,
        dataset_sha256="cd" * 32,
        final_loss=[0.1, 0.2],
    )
    fields.update(changes)
    return SupportSetRecord(**fields)  # type: ignore[arg-type]


def _state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2).state_dict()


def test_record_round_trip_and_listing_after_restart(tmp_path: Path) -> None:
    store = SupportSetStore(tmp_path)
    with store.writer(0, 1) as w:
        w.add(2.0, _state(1))
        w.add(4.5, _state(2))
        first = w.commit(_record())
    assert first.id == "gad-0-1-1"
    assert sorted(p.name for p in (tmp_path / SUPPORT_SETS_DIR / first.id).iterdir()) == [
        "alpha_2.pt",
        "alpha_4.5.pt",
        "record.json",
    ]
    with store.writer(0, 1) as w:
        w.add(2.0, _state(3))
        w.add(4.5, _state(4))
        second = w.commit(_record(seed=8))
    assert second.id == "gad-0-1-2"
    fresh = SupportSetStore(tmp_path)  # "after a restart": a new object reads the folder
    assert [r.id for r in fresh.list_sets()] == ["gad-0-1-1", "gad-0-1-2"]
    back = fresh.get("gad-0-1-1")
    assert back == first and back.created == first.created and back.xaiserve_version
    loaded = fresh.load_state(back, 4.5)
    for key, value in _state(2).items():
        torch.testing.assert_close(loaded[key], value)
    with pytest.raises(NotFound, match="gad-0-1-9"):
        fresh.get("gad-0-1-9")
    with pytest.raises(InvalidInput):
        fresh.get("../gad-0-1-1")


def test_failed_write_leaves_no_folder(tmp_path: Path) -> None:
    store = SupportSetStore(tmp_path)
    with pytest.raises(RuntimeError, match="boom"), store.writer(2, 3) as w:
        w.add(2.0, _state(1))
        raise RuntimeError("boom")
    assert list((tmp_path / SUPPORT_SETS_DIR).iterdir()) == []
    assert store.list_sets() == []


def test_unwritable_folder_is_failed_precondition_naming_it(tmp_path: Path) -> None:
    (tmp_path / SUPPORT_SETS_DIR).write_text("not a folder")  # works even when running as root
    with pytest.raises(FailedPrecondition, match=str(tmp_path / SUPPORT_SETS_DIR)):
        SupportSetStore(tmp_path).check_writable()


def test_alpha_file_names_and_dataset_hash() -> None:
    assert [alpha_filename(a) for a in (2, 2.5, 0.0)] == [
        "alpha_2.pt",
        "alpha_2.5.pt",
        "alpha_0.pt",
    ]
    imgs = np.random.default_rng(0).uniform(0, 255, (3, 4, 4, 3)).astype(np.float32)
    h = dataset_sha256(imgs, [0, 1, 0])
    assert h == dataset_sha256(imgs.copy(), np.array([0, 1, 0]))
    assert h != dataset_sha256(imgs[[1, 0, 2]], [1, 0, 0])  # order matters
    assert h != dataset_sha256(imgs, [0, 1, 1])  # labels matter


def test_logit_module_removes_a_final_softmax() -> None:
    w = np.random.default_rng(1).normal(size=(12, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        ],
        "probs",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 2, 2])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w, "W")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    x = torch.randn(2, 3, 2, 2)
    module = logit_module(convert_onnx(proto), "probabilities")
    torch.testing.assert_close(module(x), x.reshape(2, -1) @ torch.from_numpy(w))
    with pytest.raises(FailedPrecondition, match="Softmax"):
        logit_module(torch.nn.Linear(2, 2), "probabilities")


# -- the fitting job on a tiny real model -----------------------------------------------------


def _tiny_model(tmp_path: Path) -> Model:
    a = np.zeros((8, 8), bool)
    a[:4] = True
    b = ~a
    return load_onnx_model(
        region_logit_model(8, 8, [a, b, a & b | np.eye(8, dtype=bool)]), tmp_path, height=8, width=8
    )


def _tiny_data(n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (n, 8, 8, 3)).astype(np.float32), np.arange(n) % 3


def test_cancelled_fit_leaves_no_half_written_set(tmp_path: Path) -> None:
    model = _tiny_model(tmp_path)
    images, labels = _tiny_data()
    cfg = GadFitConfig(0, 1, alphas=(1.0, 2.0), epochs=200, batch_size=4, learning_rate=1e-3)
    ops = OperationStore(None, Metrics())
    try:
        op = ops.start_local(
            "fit_gad", lambda h: fit_support_set(model, images, labels, cfg, h).summary()
        )
        deadline = time.monotonic() + 30
        while ops.get(op.id).done <= cfg.epochs + 2:  # into the second α: α = 1 is on disk
            assert time.monotonic() < deadline and ops.get(op.id).state == "RUNNING"
            time.sleep(0.01)
        assert any((model.artifact_folder / SUPPORT_SETS_DIR).iterdir())  # the temporary folder
        ops.cancel(op.id)
        assert ops.wait(op.id, 30).state == "CANCELLED"
    finally:
        ops.shutdown()
        model.close()
    assert list((model.artifact_folder / SUPPORT_SETS_DIR).iterdir()) == []
    assert SupportSetStore(model.artifact_folder).list_sets() == []


def test_fit_reduces_the_mse_to_the_modified_targets_and_gad_runs(tmp_path: Path) -> None:
    model = _tiny_model(tmp_path)
    images, labels = _tiny_data()
    cfg = GadFitConfig(0, 1, alphas=(2.0, 4.0), epochs=40, batch_size=4, learning_rate=1e-2)
    ops = OperationStore(None, Metrics())
    try:
        op = ops.start_local(
            "fit_gad", lambda h: fit_support_set(model, images, labels, cfg, h).summary()
        )
        done = ops.wait(op.id, 60)
        assert done.state == "SUCCEEDED", done.error_message
        assert done.result is not None and done.progress["alpha"] == 4.0
        record = SupportSetStore(model.artifact_folder).get(done.result["id"])
        assert record.images == 16 and (record.images_a, record.images_b) == (8, 8)
        assert record.dataset_sha256 == dataset_sha256(*select_pair(images, labels, 0, 1))
        for final, initial in zip(record.final_loss, record.initial_loss, strict=True):
            assert final < 0.2 * initial
        e = gad(model, images[0], Target(0), GadParams(support_set=record.id))
        assert e.heatmap.shape == (8, 8) and not e.signed and 0 < e.values["rc"] <= 1
        assert e.maps["original"].shape == (8, 8) and e.values["support_models"] == 2
        with pytest.raises(NotFound, match="gad-0-1-5"):
            gad(model, images[0], Target(0), GadParams(support_set="gad-0-1-5"))
    finally:
        ops.shutdown()
        model.close()


def _fit_job(
    model: Model, images: np.ndarray, labels: np.ndarray, cfg: GadFitConfig, handle: OperationHandle
) -> dict[str, Any]:
    return fit_support_set(model, images, labels, cfg, handle).summary()


def test_fit_is_deterministic_with_the_seed(tmp_path: Path) -> None:
    model = _tiny_model(tmp_path)
    images, labels = _tiny_data()
    ops = OperationStore(None, Metrics())
    ids = []
    try:
        for seed in (5, 5, 6):
            cfg = GadFitConfig(0, 1, alphas=(2.0,), epochs=3, batch_size=4, seed=seed)
            op = ops.start_local("fit_gad", partial(_fit_job, model, images, labels, cfg))
            done = ops.wait(op.id, 60)
            assert done.state == "SUCCEEDED" and done.result is not None
            ids.append(done.result["id"])
    finally:
        ops.shutdown()
        model.close()
    store = SupportSetStore(model.artifact_folder)
    first, again, other = (store.load_state(store.get(i), 2.0) for i in ids)
    for key in first:
        torch.testing.assert_close(first[key], again[key], rtol=0, atol=0)
    assert any(not torch.equal(first[k], other[k]) for k in first)  # another shuffle order
