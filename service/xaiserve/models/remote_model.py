"""Load a model version whose forward passes run on a remote OIP server (``[backend] kind="oip"``).

Black-box methods only need predictions, so they run entirely through the remote. White-box
methods need gradients, hence a local copy: the version folder's ``model.onnx`` (rebuilt as a
PyTorch module) or a ``[torch]`` module. A local ``model.onnx`` is used only when ``sha256`` in
``config.toml`` pins it, and at load its logits on a probe image must match the remote's: then
white-box maps explain the very model the remote serves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xaiserve.imaging.preprocess import to_network_input
from xaiserve.models.config import MODEL_FILE, ModelConfig
from xaiserve.models.model import Model
from xaiserve.observability import Metrics
from xaiserve.runtime.batcher import DynamicBatcher, ImageBudget
from xaiserve.runtime.oip_backend import OipBackend

# Local and remote logits on the probe image must agree this closely (float32 round-off of two
# runtimes on the same graph is ~1e-6; a different model differs by far more).
MATCH_TOLERANCE = 1e-3


def build_remote_model(
    *,
    name: str,
    version: str,
    folder: Path,
    config: ModelConfig,
    local_sha256: str,
    metrics: Metrics,
    budget: ImageBudget,
    torch_copies: int,
    torch_batch_bytes: int,
    providers: tuple[str, ...] = (),
) -> Model:
    cfg = config.backend.oip
    if cfg is None:
        raise ValueError('build_remote_model needs [backend] kind = "oip"')
    backend = OipBackend(
        cfg,
        folder=folder,
        model=name,
        version=version,
        num_classes=len(config.output.labels),
        metrics=metrics,
    )
    try:
        h, w = config.input.height, config.input.width
        shape = (3, h, w) if config.input.layout == "NCHW" else (h, w, 3)
        backend.connect(shape)
        whitebox_error = _local_copy_problem(name, folder, config, local_sha256, backend, providers)
        max_batch = config.batching.max_batch_size
        if cfg.max_batch_size:
            max_batch = min(max_batch, cfg.max_batch_size)
        batcher = DynamicBatcher(
            backend.run,
            model=name,
            version=version,
            runtime=backend.runtime,
            max_batch_size=max_batch,
            max_queue_delay_s=config.batching.max_queue_delay_ms / 1000.0,
            budget=budget,
            metrics=metrics,
            workers=cfg.max_concurrency,
        )
    except BaseException:
        backend.close()
        raise
    backend.start_monitor()
    return Model(
        name=name,
        version=version,
        folder=folder,
        config=config,
        sha256=local_sha256,
        batcher=batcher,
        providers=backend.providers,
        input_name=backend.names.input_name,
        torch_copies=torch_copies,
        torch_batch_bytes=torch_batch_bytes,
        remote=backend,
        whitebox_error=whitebox_error,
    )


def _local_copy_problem(
    name: str,
    folder: Path,
    config: ModelConfig,
    local_sha256: str,
    backend: OipBackend,
    providers: tuple[str, ...],
) -> str:
    """Why white-box methods cannot run on this version ("" when they can)."""
    where = backend.where
    if not local_sha256:
        if config.torch is not None:
            return ""
        return (
            f"model {name!r} is served by {where} and has no local copy: put its {MODEL_FILE} "
            "(pinned by sha256 in config.toml) or a [torch] module in the version folder"
        )
    if not config.sha256:
        return (
            f'the {MODEL_FILE} beside {where} is not pinned: set sha256 = "{local_sha256}" in '
            "config.toml once you have checked it is the model the remote serves"
        )
    from xaiserve.runtime.onnx_session import OnnxSession

    session = OnnxSession(folder / MODEL_FILE, input_name=config.input.name, providers=providers)
    h, w = config.input.height, config.input.width
    probe = to_network_input(
        np.random.default_rng(0).uniform(0, 255, (2, h, w, 3)).astype(np.float32), config.input
    )
    local = session.run(probe)
    remote = backend.run(probe)
    gap = float(np.max(np.abs(local - remote))) if local.shape == remote.shape else float("inf")
    if not gap <= MATCH_TOLERANCE * max(1.0, float(np.max(np.abs(local)))):
        return (
            f"the pinned {MODEL_FILE} does not compute what {where} serves (largest logit "
            f"difference {gap:.3g} on a probe image): white-box maps would explain another model"
        )
    return ""
