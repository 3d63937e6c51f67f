"""One onnxruntime session per model version, with providers chosen by availability."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from xaiserve.errors import InvalidInput

log = logging.getLogger(__name__)

PREFERRED_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)


def choose_providers(requested: tuple[str, ...] = ()) -> list[str]:
    """``requested`` filtered to what this onnxruntime build has, else the best available."""
    available = ort.get_available_providers()
    if requested:
        chosen = [p for p in requested if p in available]
        if not chosen:
            raise ValueError(f"none of the providers {requested} is available (have {available})")
        return chosen
    return [p for p in PREFERRED_PROVIDERS if p in available] or available


def check_external_data(path: Path) -> None:
    """Refuse ONNX files whose external-data locations leave the model's folder (CVE-2022-25882)."""
    model = onnx.load(str(path), load_external_data=False)
    folder = path.parent.resolve()
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                tensors.append(attr.t)
    for tensor in tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if os.path.isabs(location) or folder not in target.parents:
            raise InvalidInput(
                f"{path}: tensor {tensor.name!r} has external data at {location!r} outside the model folder"
            )


class OnnxSession:
    """Runs batches through onnxruntime. Thread spinning is off: on small machines the spinning
    workers steal the CPU from preprocessing, segmentation and torch (PERFORMANCE-NOTES)."""

    runtime = "onnxruntime"

    def __init__(
        self,
        path: Path,
        input_name: str = "",
        providers: tuple[str, ...] = (),
        threads: int = 0,
        model_bytes: bytes | None = None,
    ) -> None:
        """Serve the ONNX file at ``path``, or the serialized graph ``model_bytes`` (all data
        inline, e.g. a randomised variant built in memory; ``path`` then only names it)."""
        if model_bytes is None:
            check_external_data(path)
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(path) if model_bytes is None else model_bytes,
            sess_options=options,
            providers=choose_providers(providers),
        )
        inputs = self.session.get_inputs()
        names = [i.name for i in inputs]
        if input_name and input_name not in names:
            raise ValueError(
                f"input.name {input_name!r} is not an input of the graph (inputs: {names})"
            )
        if not input_name and len(inputs) != 1:
            raise ValueError(f"the graph has inputs {names}: set input.name in config.toml")
        self.input_name = input_name or names[0]
        self.output_name = self.session.get_outputs()[0].name
        self.providers = self.session.get_providers()
        log.info(
            "onnxruntime session ready",
            extra={"model_path": str(path), "providers": self.providers},
        )

    def run(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.output_name], {self.input_name: batch})
        return np.asarray(out, dtype=np.float32)
