"""Real parts for tests: ONNX graphs built here, loaded through the real repository.

``load_onnx_model`` writes a model folder (``model.onnx`` + ``config.toml``) and loads it
through :class:`ModelRepository` — the same onnxruntime session, batcher and ``Model`` facade
the server uses. ``region_logit_model`` builds a graph whose answer is known by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from xaiserve.config import Settings
from xaiserve.models.model import Model
from xaiserve.models.repository import ModelRepository
from xaiserve.observability import Metrics
from xaiserve.runtime.batcher import ImageBudget


def write_model_folder(
    onnx_model: onnx.ModelProto,
    root: Path,
    *,
    height: int,
    width: int,
    labels: Sequence[str] | None = None,
    num_classes: int | None = None,
    output_kind: str = "logits",
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    value_range: Sequence[float] = (0.0, 255.0),
    max_batch_size: int = 32,
    max_queue_delay_ms: float = 1.0,
    name: str = "test",
    version: str = "1",
    layout: str = "NCHW",
    channel_order: str = "RGB",
) -> Path:
    """Write ``root/name/version/{model.onnx,config.toml}`` and return the version folder."""
    if labels is None:
        n = num_classes if num_classes is not None else _num_outputs(onnx_model)
        labels = [f"class_{i}" for i in range(n)]
    folder = root / name / version
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx_model, str(folder / "model.onnx"))
    label_list = ", ".join(f'"{label}"' for label in labels)
    (folder / "config.toml").write_text(
        "[input]\n"
        f'height = {height}\nwidth = {width}\nlayout = "{layout}"\n'
        f'channel_order = "{channel_order}"\n'
        f"value_range = [{value_range[0]}, {value_range[1]}]\n"
        f"mean = [{', '.join(str(float(m)) for m in mean)}]\n"
        f"std = [{', '.join(str(float(s)) for s in std)}]\n"
        f'[output]\nkind = "{output_kind}"\nlabels = [{label_list}]\n'
        f"[batching]\nmax_batch_size = {max_batch_size}\nmax_queue_delay_ms = {max_queue_delay_ms}\n",
        encoding="utf-8",
    )
    return folder


def load_onnx_model(
    onnx_model: onnx.ModelProto,
    tmp_path: Path,
    *,
    height: int,
    width: int,
    labels: Sequence[str] | None = None,
    output_kind: str = "logits",
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    value_range: Sequence[float] = (0.0, 255.0),
    max_batch_size: int = 32,
    name: str = "test",
    metrics: Metrics | None = None,
    warmup: bool = False,
    layout: str = "NCHW",
    channel_order: str = "RGB",
) -> Model:
    """Load an ONNX graph through the real repository; the caller may ``model.close()``."""
    root = tmp_path / "repo"
    write_model_folder(
        onnx_model,
        root,
        height=height,
        width=width,
        labels=labels,
        output_kind=output_kind,
        mean=mean,
        std=std,
        value_range=value_range,
        max_batch_size=max_batch_size,
        name=name,
        layout=layout,
        channel_order=channel_order,
    )
    metrics = metrics or Metrics()
    settings = Settings(models_dir=str(root), warmup=warmup)
    repo = ModelRepository(root, settings, metrics, ImageBudget(100_000))
    entry = repo.load_version(name, "1")
    if entry.model is None:
        raise RuntimeError(f"test model failed to load: {entry.error}")
    return entry.model


def region_logit_model(
    height: int, width: int, masks: Sequence[np.ndarray], gain: float = 1.0
) -> onnx.ModelProto:
    """Class j's logit = gain × mean over mask j of the pixel values averaged over channels.

    Input ``input`` float32 (N, 3, H, W), output ``logits`` (N, len(masks)); Flatten + Gemm
    whose weight is zero outside each mask, so class j depends on region j only.
    """
    k = len(masks)
    weight = np.zeros((3 * height * width, k), dtype=np.float32)
    for j, mask in enumerate(masks):
        m = np.asarray(mask, dtype=bool)
        if m.shape != (height, width) or not m.any():
            raise ValueError("each mask must be a non-empty (height, width) boolean array")
        w = np.broadcast_to(m, (3, height, width)).astype(np.float32) / (3.0 * m.sum())
        weight[:, j] = gain * w.reshape(-1)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
        ],
        "region_logits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, height, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k])],
        [
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(np.zeros(k, np.float32), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def ignored_branch_model(size: int = 16) -> onnx.ModelProto:
    """logits = fc_kept(GAP(relu(conv_kept(x)))) + fc_zero(GAP(relu(conv_ignored(x)))).

    ``fc_zero`` has zero weights and bias, so the output ignores the ``conv_ignored`` branch by
    construction: randomising that branch (conv_ignored, and fc_zero, whose zero tensors keep
    their value) must leave every faithful method's map unchanged.
    """
    rng = np.random.default_rng(0)

    def t(name: str, *shape: int, scale: float = 0.5) -> onnx.TensorProto:
        return numpy_helper.from_array((scale * rng.normal(size=shape)).astype(np.float32), name)

    inits = [
        t("wk", 6, 3, 3, 3),
        t("bk", 6, scale=0.1),
        t("fk", 6, 3),
        t("fkb", 3, scale=0.1),
        t("wi", 6, 3, 3, 3),
        t("bi", 6, scale=0.1),
        numpy_helper.from_array(np.zeros((6, 3), np.float32), "fz"),
        numpy_helper.from_array(np.zeros(3, np.float32), "fzb"),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["input", "wk", "bk"], ["ck"], name="conv_kept", pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["ck"], ["rk"]),
        helper.make_node("GlobalAveragePool", ["rk"], ["pk"]),
        helper.make_node("Flatten", ["pk"], ["flk"], axis=1),
        helper.make_node("Gemm", ["flk", "fk", "fkb"], ["lk"], name="fc_kept"),
        helper.make_node(
            "Conv", ["input", "wi", "bi"], ["ci"], name="conv_ignored", pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["ci"], ["ri"]),
        helper.make_node("GlobalAveragePool", ["ri"], ["pi"]),
        helper.make_node("Flatten", ["pi"], ["fli"], axis=1),
        helper.make_node("Gemm", ["fli", "fz", "fzb"], ["li"], name="fc_zero"),
        helper.make_node("Add", ["lk", "li"], ["logits"], name="sum"),
    ]
    graph = helper.make_graph(
        nodes,
        "ignored_branch",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _num_outputs(model: onnx.ModelProto) -> int:
    dims = model.graph.output[0].type.tensor_type.shape.dim
    return int(dims[-1].dim_value) if dims and dims[-1].dim_value else 2


def refines(fine: np.ndarray, coarse: np.ndarray) -> bool:
    """Whether every region of label map ``fine`` lies inside one region of ``coarse``."""
    pairs = np.unique(np.stack([np.ravel(fine), np.ravel(coarse)]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1]
