"""One onnxruntime session per model version, with providers chosen by availability."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from xaiserve.errors import InvalidInput
from xaiserve.runtime.cpus import default_intra_op_threads

log = logging.getLogger(__name__)

PREFERRED_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)


ACCELERATORS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def choose_providers(requested: tuple[str, ...] = ()) -> list[str]:
    """``requested`` filtered to what this onnxruntime build has, else the best available.
    Requested providers that are missing are logged as a warning (a GPU deployment that
    would silently serve on CPU)."""
    available = ort.get_available_providers()
    if requested:
        chosen = [p for p in requested if p in available]
        if not chosen:
            raise ValueError(f"none of the providers {requested} is available (have {available})")
        missing = [p for p in requested if p not in available]
        if missing:
            log.warning(
                "configured providers %s are not available in this onnxruntime build; "
                "serving on %s",
                ",".join(missing),
                ",".join(chosen),
                extra={"missing_providers": ",".join(missing)},
            )
        return chosen
    return [p for p in PREFERRED_PROVIDERS if p in available] or available


def provider_fallback(requested: list[str], used: list[str]) -> list[str]:
    """Accelerators asked for (configured, or present in the build) that the session did not
    get — e.g. CUDA listed by onnxruntime-gpu but failing to load its libraries."""
    return [p for p in requested if p in ACCELERATORS and p not in used]


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
        io_binding: bool | None = None,
    ) -> None:
        """Serve the ONNX file at ``path``, or the serialized graph ``model_bytes`` (all data
        inline, e.g. a randomised variant built in memory; ``path`` then only names it)."""
        if model_bytes is None:
            check_external_data(path)
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.intra_op_num_threads = threads or default_intra_op_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        requested = choose_providers(providers)
        self.session = ort.InferenceSession(
            str(path) if model_bytes is None else model_bytes,
            sess_options=options,
            providers=requested,
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
        # onnxruntime's intra-op threads per run; 0 = its own choice (one per physical core)
        self.intra_op_threads = options.intra_op_num_threads
        self.fallback = provider_fallback(list(providers) or requested, self.providers)
        if self.fallback:
            log.warning(
                "model %s: providers %s failed to initialise; serving on %s",
                path,
                ",".join(self.fallback),
                ",".join(self.providers),
                extra={"model_path": str(path), "missing_providers": ",".join(self.fallback)},
            )
        # I/O binding: under CUDA the output stays on the device until one copy back, and the
        # input is bound once instead of copied through onnxruntime's feed path on every pass.
        self.device = "cuda" if self.providers[0] in ACCELERATORS else "cpu"
        self.io_binding = self.device == "cuda" if io_binding is None else io_binding
        log.info(
            "onnxruntime session ready",
            extra={"model_path": str(path), "providers": self.providers},
        )

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self.io_binding:
            return self._run_bound(batch)
        (out,) = self.session.run([self.output_name], {self.input_name: batch})
        return np.asarray(out, dtype=np.float32)

    def _run_bound(self, batch: np.ndarray) -> np.ndarray:
        binding = self.session.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(batch), self.device, 0)
        binding.bind_ortvalue_input(self.input_name, value)
        binding.bind_output(self.output_name, self.device, 0)
        self.session.run_with_iobinding(binding)
        (out,) = binding.copy_outputs_to_cpu()
        return np.asarray(out, dtype=np.float32)
