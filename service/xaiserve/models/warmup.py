"""Warm a model version up before it is marked ready.

The first request on a fresh version used to pay the whole cold start: onnxruntime's first run
at a batch size (memory arena growth, kernel selection — much more under CUDA/TensorRT) and,
for white-box methods, building the PyTorch module and its first backward pass (measured on a
224² model: first IG request 14 s vs 3.6–4.3 s later, first LRP 1.1 s vs 0.35 s). Warm-up runs
each backend once at the configured batch sizes (1 and ``max_batch_size``) and, when white-box
methods are available, builds one torch copy and runs a forward+backward pass through it.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from xaiserve.imaging.preprocess import to_network_input
from xaiserve.models.model import Model

log = logging.getLogger(__name__)


def warm_up(model: Model) -> float:
    """Warm ``model`` up; returns the seconds it took."""
    start = time.perf_counter()
    h, w = model.input_size
    for n in sorted({1, model.max_batch_size}):
        grey = np.full((n, h, w, 3), 127.0, np.float32)
        model.batcher.runner(to_network_input(grey, model.config.input))
    if "torch" in model.backends:
        try:
            _warm_torch(model, h, w)
        except Exception as exc:  # white-box requests will report it; black-box ones still work
            log.warning(
                "model %s/%s: torch warm-up failed (%s); white-box methods will say why",
                model.name,
                model.version,
                exc,
            )
    seconds = time.perf_counter() - start
    log.info(
        "model %s/%s warmed up in %.2f s",
        model.name,
        model.version,
        seconds,
        extra={"model": model.name, "version": model.version, "warmup_seconds": seconds},
    )
    return seconds


def _warm_torch(model: Model, h: int, w: int) -> None:
    import torch

    with model.torch_backend() as backend:
        x = backend.to_input(np.full((1, h, w, 3), 127.0, np.float32)).requires_grad_(True)
        out = backend.module(x)
        torch.autograd.grad(out[:, 0].sum(), x)
