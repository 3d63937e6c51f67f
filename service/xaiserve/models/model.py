"""The ``Model`` facade: what methods see of a loaded model version.

``predict`` takes image-space images (one array or an iterable of chunks), applies the model's
preprocessing, feeds the dynamic batcher in pieces of at most ``max_batch_size`` while keeping at
most two batches of this request in flight (so a lazily generated stream of thousands of
perturbations is never materialised), and returns probabilities or raw outputs.
``predict_network_input`` does the same for chunks already preprocessed (``NetworkInputModel``:
methods that perturb many copies of one image convert it once).
``torch_backend`` leases a PyTorch module rebuilt from the same ONNX file (or the operator's
registered module) for white-box methods.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from xaiserve.contracts.images import ImageBatch, NetworkBatch, OutputSpace
from xaiserve.contracts.input import InputConfig
from xaiserve.contracts.models import TorchBackend
from xaiserve.errors import FailedPrecondition, Unimplemented, XaiserveError
from xaiserve.imaging.preprocess import to_network_input
from xaiserve.models.config import ModelConfig
from xaiserve.runtime import context
from xaiserve.runtime.batcher import DynamicBatcher

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class Model:
    """A loaded model version (implements ``BlackBoxModel`` and ``WhiteBoxModel``)."""

    def __init__(
        self,
        *,
        name: str,
        version: str,
        folder: Path,
        config: ModelConfig,
        sha256: str,
        batcher: DynamicBatcher,
        providers: list[str],
        input_name: str = "",
        intra_op_threads: int = 0,
        torch_copies: int = 2,
        torch_batch_bytes: int = 256 * 2**20,
        remote: Any = None,
        whitebox_error: str = "",
        artifact_folder: Path | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.folder = folder
        # Where this version's artifacts (GAD support sets) are written: the artifact location,
        # never the read-only model folder (models.artifacts).
        self.artifact_folder = artifact_folder if artifact_folder is not None else folder
        self.config = config
        self.sha256 = sha256
        self.batcher = batcher
        self.providers = providers
        self.input_name = input_name
        self.intra_op_threads = intra_op_threads  # onnxruntime's per batch; 0 = its own choice
        self._torch_copies = torch_copies
        self.torch_batch_bytes = torch_batch_bytes
        # A remote backend (``runtime.oip_backend.OipBackend``) serves the forward passes; white-box
        # methods then need a local copy, and ``whitebox_error`` says why there is none.
        self.remote = remote
        self.whitebox_error = whitebox_error
        # Accelerator providers configured but not in use (shown by the provider_fallback metric).
        self.provider_fallback: tuple[str, ...] = ()
        self._torch_pool: Any = None
        self._torch_lock = threading.Lock()

    # -- BlackBoxModel -------------------------------------------------------------------------
    @property
    def input_size(self) -> tuple[int, int]:
        return (self.config.input.height, self.config.input.width)

    @property
    def num_classes(self) -> int:
        return len(self.config.output.labels)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.output.labels

    @property
    def output_kind(self) -> Literal["logits", "probabilities"]:
        return self.config.output.kind

    @property
    def max_batch_size(self) -> int:
        return self.batcher.max_batch_size

    @property
    def workers(self) -> int:
        """Batches this version runs at once."""
        return self.batcher.workers

    def predict(
        self, images: ImageBatch | Iterable[ImageBatch], output: OutputSpace = "probabilities"
    ) -> np.ndarray:
        chunks: Iterable[np.ndarray] = (images,) if isinstance(images, np.ndarray) else images
        return self._forward(
            (to_network_input(self._check_chunk(c), self.config.input) for c in chunks), output
        )

    def predict_network_input(
        self, inputs: NetworkBatch | Iterable[NetworkBatch], output: OutputSpace = "probabilities"
    ) -> np.ndarray:
        """``predict`` for chunks already in the network's input format (``NetworkInputModel``):
        the model's :attr:`preprocessing` applied, float32 in its layout."""
        chunks: Iterable[np.ndarray] = (inputs,) if isinstance(inputs, np.ndarray) else inputs
        return self._forward((self._check_network_chunk(c) for c in chunks), output)

    def _forward(self, chunks: Iterable[NetworkBatch], output: OutputSpace) -> np.ndarray:
        ctx = context.current()
        mb = self.max_batch_size
        results: list[np.ndarray] = []
        outstanding: deque[tuple[Future[np.ndarray], int]] = deque()
        in_flight = 0
        self.batcher.enter(ctx.interactive)
        try:
            for x in chunks:
                ctx.check()
                for start in range(0, len(x), mb):
                    piece = x[start : start + mb]
                    while outstanding and in_flight + len(piece) > 2 * mb:
                        fut, n = outstanding.popleft()
                        results.append(_wait(fut, ctx))
                        in_flight -= n
                    outstanding.append((self.batcher.submit(piece, ctx), len(piece)))
                    in_flight += len(piece)
            while outstanding:
                fut, _ = outstanding.popleft()
                results.append(_wait(fut, ctx))
        finally:
            self.batcher.leave(ctx.interactive)
            for fut, _ in outstanding:
                fut.cancel()
        raw = np.concatenate(results) if results else np.empty((0, self.num_classes), np.float32)
        if raw.ndim != 2 or raw.shape[1] != self.num_classes:
            raise RuntimeError(
                f"model {self.name}/{self.version} output shape {raw.shape} does not match "
                f"{self.num_classes} labels"
            )
        if not np.isfinite(raw).all():
            raise FailedPrecondition(
                f"model {self.name!r} version {self.version!r} produced non-finite outputs "
                "(NaN or infinity) for this input; its results cannot be trusted"
            )
        if output == "probabilities" and self.output_kind == "logits":
            return softmax(raw)
        return raw

    def _check_chunk(self, chunk: np.ndarray) -> np.ndarray:
        h, w = self.input_size
        if chunk.ndim != 4 or chunk.shape[1:] != (h, w, 3):
            raise ValueError(
                f"predict expects (N, {h}, {w}, 3) image-space chunks, got {chunk.shape}"
            )
        return chunk

    def _check_network_chunk(self, chunk: np.ndarray) -> np.ndarray:
        h, w = self.input_size
        shape = (3, h, w) if self.config.input.layout == "NCHW" else (h, w, 3)
        if chunk.ndim != 4 or chunk.shape[1:] != shape or chunk.dtype != np.float32:
            raise ValueError(
                f"predict_network_input expects (N, {', '.join(map(str, shape))}) float32 "
                f"chunks in the network's layout, got {chunk.shape} {chunk.dtype}"
            )
        return chunk

    # -- WhiteBoxModel -------------------------------------------------------------------------
    @property
    def backends(self) -> list[str]:
        names = ["oip" if self.remote is not None else "onnx"]
        if self._torch_available():
            names.append("torch")
        return names

    def supports(self, backend: str) -> bool:
        """Whether this version can run on ``backend`` (``"onnx"`` or ``"torch"``; a method's
        :attr:`~xaiserve.methods.base.MethodSpec.model_backend`). ``"onnx"`` means forward
        passes, which a remote (``"oip"``) version serves too."""
        if backend == "onnx" and self.remote is not None:
            return True
        return backend in self.backends

    @property
    def preprocessing(self) -> InputConfig:
        """The model's input grid and preprocessing, validated when its config was loaded."""
        return self.config.input

    @property
    def torch_copies(self) -> int:
        """How many module copies a torch pool of this version may hold (≥ 1)."""
        return max(1, self._torch_copies)

    def unsupported(self, method: str) -> XaiserveError:
        """The error for a request of ``method`` (white-box) that this version cannot serve:
        FAILED_PRECONDITION naming the missing local copy of a remote model, else UNIMPLEMENTED."""
        if self.whitebox_error:
            return FailedPrecondition(f"method {method!r} is white-box: {self.whitebox_error}")
        return Unimplemented(
            f"method {method!r} needs the torch backend, which model {self.name!r} does not have"
        )

    def state_error(self) -> str:
        """Why this loaded version cannot serve now ("" when it can): a remote that is down."""
        return self.remote.state_error() if self.remote is not None else ""  # type: ignore[no-any-return]

    def _torch_available(self) -> bool:
        if self.whitebox_error:
            return False
        try:
            importlib.import_module("xaiserve.runtime.torch_backend")
            if self.config.torch is None:
                importlib.import_module("xaiserve.runtime.onnx_to_torch")
        except ImportError:
            return False
        return True

    def support_set(self, set_id: str) -> Any:
        """A fitted GAD support set of this version, loaded once (``LoadedSupportSet``)."""
        from xaiserve.models.support_models import load_support_set

        return load_support_set(self, set_id)

    def torch_backend(self) -> contextlib.AbstractContextManager[TorchBackend]:
        return self._pool().lease()  # type: ignore[no-any-return]

    def _pool(self) -> Any:
        with self._torch_lock:
            if self._torch_pool is None:
                from xaiserve.runtime.torch_backend import TorchModelPool

                self._torch_pool = TorchModelPool(
                    self.torch_module_factory(),
                    self.preprocessing,
                    copies=self.torch_copies,
                    batch_bytes=self.torch_batch_bytes,
                )
            return self._torch_pool

    def torch_module_factory(self) -> Callable[[], torch.nn.Module]:
        """A function building a fresh eval-mode PyTorch module of this version (the ONNX graph
        rebuilt in PyTorch, or the operator's registered module with its weights) on the CPU.

        For callers that need their own copy (GAD fitting trains one; support sets load other
        weights into one). A module that cannot be built raises :class:`FailedPrecondition`.
        """
        if self.whitebox_error:
            raise FailedPrecondition(self.whitebox_error)
        if not self._torch_available():
            raise Unimplemented("white-box methods need the torch backend, not installed")
        return self._guarded(self._module_factory())

    def _guarded(self, factory: Callable[[], torch.nn.Module]) -> Callable[[], torch.nn.Module]:
        """Building the module can fail (unsupported operator, weights refused by
        ``weights_only``): say so as a status, keep the details in the log."""

        def build() -> torch.nn.Module:
            try:
                return factory()
            except Unimplemented:
                raise
            except Exception as exc:
                log.exception("torch module of %s/%s could not be built", self.name, self.version)
                raise FailedPrecondition(
                    f"the PyTorch module of model {self.name!r} version {self.version!r} could "
                    f"not be built ({type(exc).__name__}); white-box methods are unavailable"
                ) from exc

        return build

    def _module_factory(self) -> Callable[[], torch.nn.Module]:
        torch_cfg = self.config.torch
        if torch_cfg is None:
            from xaiserve.runtime.onnx_to_torch import convert_onnx

            path = self.folder / "model.onnx"
            return lambda: convert_onnx(path)
        weights = self.folder / torch_cfg.weights
        entry = torch_cfg.entry_point

        def build() -> torch.nn.Module:
            import torch

            module_name, _, factory_name = entry.partition(":")
            factory = getattr(importlib.import_module(module_name), factory_name)
            module = factory()
            state = torch.load(weights, map_location="cpu", weights_only=True)
            module.load_state_dict(state)
            return module.eval()  # type: ignore[no-any-return]

        return build

    def close(self) -> None:
        self.batcher.close(timeout=5.0)
        if self.remote is not None:
            self.remote.close()


def _wait(fut: Future[np.ndarray], ctx: context.RequestContext) -> np.ndarray:
    """Wait for a batch result, waking regularly to honour cancellation and the deadline."""
    while True:
        remaining = ctx.remaining()
        timeout = 0.1 if remaining is None else max(0.0, min(0.1, remaining))
        try:
            return fut.result(timeout=timeout)
        except FutureTimeout:
            ctx.check()


__all__ = ["Model", "softmax"]
