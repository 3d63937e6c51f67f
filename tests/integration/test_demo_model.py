"""The committed demo model ``models/shapes/1``: files, config, accuracy, and what it looks at."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from xaiserve.demo import shapes, train

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "shapes" / "1"
HELDOUT_N = 500


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The parsed ``config.toml``."""
    with open(MODEL_DIR / "config.toml", "rb") as fh:
        return tomllib.load(fh)


@pytest.fixture(scope="module")
def record() -> dict[str, Any]:
    """The parsed ``training.json``."""
    result: dict[str, Any] = json.loads((MODEL_DIR / "training.json").read_text("utf-8"))
    return result


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    """An onnxruntime session on the committed model."""
    return ort.InferenceSession(str(MODEL_DIR / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def data() -> shapes.ShapesDataset:
    """The first images of the held-out split."""
    return shapes.heldout(HELDOUT_N)


def preprocess(images: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """Apply the input transform exactly as ``config.toml`` describes it (RGB, NCHW)."""
    spec = config["input"]
    lo, hi = spec["value_range"]
    x = images.astype(np.float32) / 255.0 * (hi - lo) + lo
    x = (x - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def predict(
    session: ort.InferenceSession, images: np.ndarray, config: dict[str, Any]
) -> np.ndarray:
    """Predicted class indices for ``uint8 (N, H, W, 3)`` images."""
    logits = session.run(["logits"], {"input": preprocess(images, config)})[0]
    return np.argmax(logits, axis=1)


def test_model_file_is_small_and_valid() -> None:
    path = MODEL_DIR / "model.onnx"
    assert path.stat().st_size < 1_000_000
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert any(o.domain in ("", "ai.onnx") and o.version == 17 for o in model.opset_import)


def test_graph_uses_plain_layers_with_one_residual_add() -> None:
    model = onnx.load(str(MODEL_DIR / "model.onnx"))
    ops = [node.op_type for node in model.graph.node]
    allowed = {"Conv", "Relu", "MaxPool", "Add", "GlobalAveragePool", "Flatten", "Gemm"}
    assert set(ops) <= allowed
    assert ops.count("Add") == 1 and ops[-1] == "Gemm"


def test_config_matches_the_data_set(config: dict[str, Any], record: dict[str, Any]) -> None:
    assert config["output"]["labels"] == list(shapes.CLASS_NAMES)
    assert config["output"]["kind"] == "logits"
    spec = config["input"]
    assert spec["name"] == "input" and spec["layout"] == "NCHW" and spec["channel_order"] == "RGB"
    assert spec["height"] == spec["width"] == shapes.IMAGE_SIZE
    assert spec["value_range"] == [0.0, 1.0] and spec["resize"] == "stretch"
    assert spec["mean"] == record["mean"] and spec["std"] == record["std"]
    assert len(spec["mean"]) == len(spec["std"]) == 3 and min(spec["std"]) > 0
    assert config["batching"]["max_batch_size"] >= 1
    assert isinstance(config["description"], str) and config["description"]


def test_server_config_parser_accepts_it() -> None:
    from xaiserve.models.config import load_config

    parsed = load_config(MODEL_DIR / "config.toml")
    assert parsed.output.labels == shapes.CLASS_NAMES
    assert (parsed.input.height, parsed.input.width) == (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)
    assert parsed.input.name == "input" and parsed.torch is None


def test_training_record(record: dict[str, Any]) -> None:
    digest = hashlib.sha256((MODEL_DIR / "model.onnx").read_bytes()).hexdigest()
    assert record["onnx_sha256"] == digest
    assert record["class_names"] == list(shapes.CLASS_NAMES)
    assert record["train_seed"] == shapes.TRAIN_SEED
    assert record["heldout_seed"] == shapes.HELDOUT_SEED
    assert record["heldout_n"] >= 500 and record["heldout_accuracy"] >= 0.95
    assert record["parameters"] <= 150_000
    assert record["parameters"] == train.count_parameters(train.ShapesNet())


def test_heldout_accuracy(
    session: ort.InferenceSession, config: dict[str, Any], data: shapes.ShapesDataset
) -> None:
    accuracy = float((predict(session, data.images, config) == data.labels).mean())
    assert accuracy >= 0.95
    # and the training script's own preprocessing is the one config.toml describes
    spec = config["input"]
    np.testing.assert_allclose(
        train.normalise(data.images[:4], spec["mean"], spec["std"]),
        preprocess(data.images[:4], config),
        atol=1e-6,
    )


def test_dynamic_batch_gives_the_same_logits(
    session: ort.InferenceSession, config: dict[str, Any], data: shapes.ShapesDataset
) -> None:
    x = preprocess(data.images[:8], config)
    batch = session.run(["logits"], {"input": x})[0]
    assert batch.shape == (8, len(shapes.CLASS_NAMES)) and batch.dtype == np.float32
    single = np.concatenate([session.run(["logits"], {"input": x[i : i + 1]})[0] for i in range(8)])
    np.testing.assert_allclose(batch, single, rtol=1e-4, atol=1e-4)


def test_model_looks_at_the_object(
    session: ort.InferenceSession, config: dict[str, Any], data: shapes.ShapesDataset
) -> None:
    """Remove the object: chance level. Move the object onto another background: still right."""
    n = 200
    backgrounds = shapes.backgrounds(n + 1, shapes.HELDOUT_SEED)
    removed = predict(session, backgrounds[:n], config)
    assert float((removed == data.labels[:n]).mean()) < 0.4  # chance is 0.2
    swapped = backgrounds[1 : n + 1].copy()  # each object on its neighbour's background
    masks = data.masks[:n]
    swapped[masks] = data.images[:n][masks]
    assert float((predict(session, swapped, config) == data.labels[:n]).mean()) >= 0.9


def test_training_steps_are_deterministic() -> None:
    """Two runs of a few training steps from the same seeds give identical weights."""
    settings = train.TrainSettings()
    batch = shapes.generate(48, shapes.TRAIN_SEED)
    mean, std = train.channel_stats(batch.images)
    x = torch.from_numpy(train.normalise(batch.images, mean, std))
    y = torch.from_numpy(batch.labels)
    was_deterministic, threads = (
        torch.are_deterministic_algorithms_enabled(),
        torch.get_num_threads(),
    )

    def run() -> dict[str, torch.Tensor]:
        train.set_determinism(settings.threads)
        torch.manual_seed(settings.torch_seed)
        model = train.ShapesNet()
        optimizer = train.make_optimizer(model, settings)
        generator = torch.Generator().manual_seed(settings.torch_seed)
        for step in range(3):
            rows = slice(16 * step, 16 * (step + 1))
            train.train_step(model, optimizer, train.augment(x[rows], generator), y[rows])
        return {k: v.clone() for k, v in model.state_dict().items()}

    try:
        first, second = run(), run()
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)
    torch.manual_seed(settings.torch_seed)
    initial = train.ShapesNet().state_dict()
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert not torch.equal(first["classifier.weight"], initial["classifier.weight"])
