"""Fitting a GAD support set (Mazini Rodrigues et al., Sections 4.1–4.3): pure PyTorch, no gRPC.

For one pair of classes ``(a, b)`` and each distance ``α`` of the schedule (default 2, 4, 6, 8;
Section 6 uses 0, 2, 4, 6, 8, where α = 0 reproduces the original model, which GAD always uses):

1. **Section 4.1, artificial distancing.** The targets are the original network's pre-softmax
   outputs ``N(I)`` on the fitting images, with the class-``b`` output of every class-``a``
   image lowered by ``α`` and the class-``a`` output of every class-``b`` image lowered by
   ``α`` (Fig. 1a: "α_cat will reduce the probability of cat images being dogs"). Every other
   output is left as it is, which keeps the relations between samples of one class.
2. **Section 4.2, regression.** A copy of the network with a linear output (no softmax),
   initialised from the original weights, is trained on these targets with the mean squared
   error and Adam (lr 4·10⁻⁵ and 10 epochs in Section 6). The goal is "the most accurate
   approximations to these new outputs", not generalisation, so the copy is trained in eval
   mode (batch-norm statistics frozen, no dropout): the regressed function is exactly the one
   explained later, and the fit is deterministic for a given seed.
3. The trained state dicts become a support set (:mod:`xaiserve.models.support_sets`), written
   atomically: a cancelled or failed fit leaves nothing behind.

Only images of classes ``a`` and ``b`` are used. Progress is reported per epoch as
``progress = {"alpha": α, "epoch": e, "loss": mean training MSE of the epoch}``; cancellation is
checked between batches. Runs on CUDA when available.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from xaiserve.errors import InvalidInput
from xaiserve.imaging.decode import ImageLimits
from xaiserve.imaging.preprocess import fit_to_input
from xaiserve.jobs.datasets import DatasetItem, dataset_folder, folder_items
from xaiserve.jobs.operations import OperationStore
from xaiserve.jobs.store import ChunkSpec, OperationRecord, StagedItem, StateStore
from xaiserve.methods.gad import DEFAULT_ALPHAS
from xaiserve.models.model import Model
from xaiserve.models.support_sets import (
    SupportSetRecord,
    SupportSetStore,
    dataset_sha256,
    logit_module,
)
from xaiserve.runtime.torch_backend import TorchLease, default_device

DEFAULT_EPOCHS = 10
DEFAULT_LEARNING_RATE = 4e-5
DEFAULT_BATCH_SIZE = 32
MAX_ALPHAS = 16
MAX_EPOCHS = 1000
MAX_BATCH_SIZE = 4096
_EVAL_BATCH = 256


class ProgressHandle(Protocol):
    """What the job needs of :class:`xaiserve.jobs.operations.OperationHandle`."""

    def update(
        self,
        *,
        done: int | None = None,
        total: int | None = None,
        message: str | None = None,
        progress: dict[str, float] | None = None,
        item_result: dict[str, Any] | None = None,
    ) -> None: ...

    def check_cancelled(self) -> None: ...


@dataclass
class GadFitConfig:
    """The fitting hyper-parameters (proto ``FitGadConfig``; defaults of Section 6).

    ``alphas`` are the distances of Section 4.3, applied to both classes (α_a = α_b = α, as in
    Section 6); ``batch_size`` is not given in the paper (32 here).
    """

    class_a: int
    class_b: int
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    epochs: int = DEFAULT_EPOCHS
    learning_rate: float = DEFAULT_LEARNING_RATE
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0

    def __post_init__(self) -> None:
        self.alphas = tuple(float(a) for a in self.alphas) or DEFAULT_ALPHAS
        if self.class_a == self.class_b:
            raise InvalidInput(f"class_a and class_b are both {self.class_a}: choose two classes")
        if min(self.class_a, self.class_b) < 0:
            raise InvalidInput("class_a and class_b must be class indices ≥ 0")
        if len(self.alphas) > MAX_ALPHAS:
            raise InvalidInput(f"alphas has {len(self.alphas)} values; the limit is {MAX_ALPHAS}")
        for alpha in self.alphas:
            if not math.isfinite(alpha) or alpha < 0:
                raise InvalidInput(f"alphas: {alpha!r} must be a finite number ≥ 0")
        if len(set(self.alphas)) != len(self.alphas):
            raise InvalidInput("alphas lists a value twice")
        if not 1 <= self.epochs <= MAX_EPOCHS:
            raise InvalidInput(f"epochs is {self.epochs}; it must be in 1..{MAX_EPOCHS}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise InvalidInput(f"learning_rate is {self.learning_rate!r}; it must be > 0")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise InvalidInput(
                f"batch_size is {self.batch_size}; it must be in 1..{MAX_BATCH_SIZE}"
            )
        if self.seed < 0:
            raise InvalidInput("seed must be ≥ 0")


def modified_targets(
    logits: np.ndarray, labels: np.ndarray, class_a: int, class_b: int, alpha: float
) -> np.ndarray:
    """Section 4.1 (Fig. 1a): ``N(I)`` with ``N_b(I) − α`` for class-``a`` images and
    ``N_a(I) − α`` for class-``b`` images; every other entry unchanged. Returns a new array."""
    out = np.array(logits, dtype=np.float32, copy=True)
    lab = np.asarray(labels).reshape(-1)
    if out.ndim != 2 or len(out) != len(lab):
        raise InvalidInput(f"logits {out.shape} and labels {lab.shape} do not match")
    out[lab == class_a, class_b] -= alpha
    out[lab == class_b, class_a] -= alpha
    return out


def select_pair(
    images: np.ndarray, labels: np.ndarray, class_a: int, class_b: int
) -> tuple[np.ndarray, np.ndarray]:
    """Only the images of classes ``a`` and ``b`` (Section 4.1), in their original order."""
    lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    keep = (lab == class_a) | (lab == class_b)
    if not (lab == class_a).any() or not (lab == class_b).any():
        raise InvalidInput(
            f"the data set needs images of both classes {class_a} and {class_b}: it has "
            f"{int((lab == class_a).sum())} and {int((lab == class_b).sum())}"
        )
    return np.asarray(images)[keep], lab[keep]


def _inputs(lease: TorchLease, images: np.ndarray) -> torch.Tensor:
    chunks = [
        lease.to_input(images[i : i + _EVAL_BATCH]) for i in range(0, len(images), _EVAL_BATCH)
    ]
    return torch.cat(chunks).detach()


@torch.no_grad()
def _outputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([module(x[i : i + _EVAL_BATCH]) for i in range(0, len(x), _EVAL_BATCH)])


def _mse(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(((_outputs(module, x) - y) ** 2).mean())


def fit_support_set(
    model: Model,
    images: np.ndarray,
    labels: np.ndarray | Sequence[int],
    config: GadFitConfig,
    handle: ProgressHandle,
    *,
    device: torch.device | str | None = None,
) -> SupportSetRecord:
    """Fit one support model per α (Sections 4.1–4.2) and store them as a support set.

    ``images`` are ``(N, H, W, 3)`` image-space images on the model's input grid, ``labels``
    their class indices; images of other classes are ignored. Returns the committed record.
    """
    n_classes = model.num_classes
    for k in (config.class_a, config.class_b):
        if not 0 <= k < n_classes:
            raise InvalidInput(f"class {k} is out of range (model has {n_classes} classes)")
    store = SupportSetStore(model.artifact_folder)
    store.check_writable()
    imgs, lab = select_pair(
        np.asarray(images, np.float32), np.asarray(labels), config.class_a, config.class_b
    )
    dev = torch.device(device) if device is not None else default_device()
    start = time.perf_counter()
    handle.update(message="computing the original model's pre-softmax outputs (Section 4.1)")
    original = logit_module(model.torch_module_factory()(), model.output_kind).eval().to(dev)
    for p in original.parameters():
        p.requires_grad_(False)
    lease = TorchLease(original, dev, model.preprocessing)
    x = _inputs(lease, imgs)
    logits = _outputs(original, x).cpu().numpy()
    n = len(x)
    total = len(config.alphas) * config.epochs
    generator = torch.Generator().manual_seed(config.seed)
    final, initial, epoch_losses = [], [], []
    handle.update(done=0, total=total)
    with store.writer(config.class_a, config.class_b) as writer:
        for k, alpha in enumerate(config.alphas):
            target = modified_targets(logits, lab, config.class_a, config.class_b, alpha)
            y = torch.from_numpy(target).to(dev)
            initial.append(float(((logits - target) ** 2).mean()))
            support = copy.deepcopy(original).eval()  # eval mode: see module docs
            for p in support.parameters():
                p.requires_grad_(True)
            optimiser = torch.optim.Adam(support.parameters(), lr=config.learning_rate)
            losses: list[float] = []
            for epoch in range(1, config.epochs + 1):
                order = torch.randperm(n, generator=generator).to(dev)
                running = 0.0
                for i in range(0, n, config.batch_size):
                    handle.check_cancelled()
                    idx = order[i : i + config.batch_size]
                    optimiser.zero_grad(set_to_none=True)
                    loss = nn.functional.mse_loss(support(x[idx]), y[idx])
                    loss.backward()  # type: ignore[no-untyped-call]
                    optimiser.step()
                    running += float(loss.detach()) * len(idx)
                losses.append(running / n)
                handle.update(
                    done=k * config.epochs + epoch,
                    message=f"α = {alpha:g}: epoch {epoch}/{config.epochs}",
                    progress={"alpha": alpha, "epoch": float(epoch), "loss": losses[-1]},
                )
            handle.check_cancelled()
            final.append(_mse(support, x, y))
            epoch_losses.append(losses)
            writer.add(alpha, support.state_dict())
            del support, optimiser
        handle.check_cancelled()
        record = SupportSetRecord(
            id="",
            model=model.name,
            version=model.version,
            model_sha256=model.sha256,
            class_a=config.class_a,
            class_b=config.class_b,
            class_a_label=model.labels[config.class_a],
            class_b_label=model.labels[config.class_b],
            alphas=list(config.alphas),
            epochs=config.epochs,
            learning_rate=config.learning_rate,
            batch_size=config.batch_size,
            seed=config.seed,
            images=n,
            images_a=int((lab == config.class_a).sum()),
            images_b=int((lab == config.class_b).sum()),
            dataset_sha256=dataset_sha256(imgs, lab),
            final_loss=final,
            initial_loss=initial,
            epoch_losses=epoch_losses,
            device=str(dev),
            fit_seconds=time.perf_counter() - start,
        )
        return writer.commit(record)


def load_items(
    model: Model, items: Sequence[DatasetItem], handle: ProgressHandle
) -> tuple[np.ndarray, np.ndarray]:
    """Decode data-set items onto the model's input grid (cancellable between items)."""
    h, w = model.input_size
    images = np.empty((len(items), h, w, 3), np.float32)
    labels = np.empty(len(items), np.int64)
    handle.update(message=f"loading {len(items)} images")
    for i, item in enumerate(items):
        handle.check_cancelled()
        if item.label is None:
            raise InvalidInput(f"item {item.name!r} has no label; GAD fitting needs labels")
        images[i] = fit_to_input(item.load(), model.config.input)
        labels[i] = item.label
    return images, labels


def run_gad_fit(
    model: Model, items: Sequence[DatasetItem], config: GadFitConfig, handle: ProgressHandle
) -> dict[str, Any]:
    """The ``fit_gad`` operation's job: load the items, fit, return the record as the result
    (``support_set`` is the new set's id, the ``support_set`` parameter of the ``gad`` method)."""
    images, labels = load_items(model, items, handle)
    record = fit_support_set(model, images, labels, config, handle)
    handle.update(message=f"support set {record.id} is ready")
    return {"support_set": record.id, **record.summary()}


KIND = "fit_gad"


def fit_spec(
    model: Model, config: GadFitConfig, *, dataset: str = "", limit: int = 0, rows_limit: int = 0
) -> dict[str, Any]:
    """What a replica needs to run the fit (one chunk: GAD fitting is one training run):
    a server-side folder's first ``rows_limit`` rows, of classes a and b, at most ``limit``."""
    return {
        "model": model.name,
        "version": model.version,
        "fit": dataclasses.asdict(config),
        "dataset": dataset,
        "limit": limit,
        "rows_limit": rows_limit,
    }


def submit(
    operations: OperationStore,
    model: Model,
    config: GadFitConfig,
    *,
    message: str,
    dataset: str = "",
    limit: int = 0,
    rows_limit: int = 0,
    staged: Sequence[StagedItem] = (),
    owner: str = "",
) -> OperationRecord:
    """Record a ``fit_gad`` operation: one chunk (one training run; its progress counts
    epochs), claimed by any replica's worker."""
    total = len(config.alphas) * config.epochs
    return operations.start(
        KIND,
        fit_spec(model, config, dataset=dataset, limit=limit, rows_limit=rows_limit),
        [ChunkSpec(0, total)],
        items=staged,
        total=total,
        message=message,
        owner=owner,
    )


class GadFitRunner:
    """The ``fit_gad`` runner: one chunk, the whole fit (Sections 4.1–4.2); deterministic for
    a seed, so a fit re-run after a replica died gives the same set. A set that is not used (the
    operation was cancelled meanwhile, or a twin run stored first) is deleted again."""

    def __init__(self, models: Any, store: StateStore, limits: ImageLimits, datasets_dir: str) -> None:
        self.models = models
        self.store = store
        self.limits = limits
        self.datasets_dir = datasets_dir

    def items(self, spec: dict[str, Any], model: Model, config: GadFitConfig, op_id: str
              ) -> list[DatasetItem]:
        if spec["dataset"]:
            folder = dataset_folder(self.datasets_dir, spec["dataset"])
            rows, _ = folder_items(
                folder, model.labels, self.limits, spec["rows_limit"] or 10**9, model.input_size
            )
            keep = [r for r in rows if r.label in (config.class_a, config.class_b)]
            return keep[: spec["limit"] or None]
        from xaiserve.jobs.dataset_evaluation import staged_dataset_items

        return staged_dataset_items(
            self.store.staged_items(op_id, 0, 2**31 - 1), self.limits, model.input_size
        )

    def run(self, chunk: Any, handle: Any) -> Any:
        spec = chunk.spec
        model = self.models.get(spec["model"], spec["version"])
        config = GadFitConfig(**{**spec["fit"], "alphas": tuple(spec["fit"]["alphas"])})
        items = self.items(spec, model, config, chunk.operation_id)
        return run_gad_fit(model, items, config, handle)

    def finalize(self, op_id: str, spec: dict[str, Any], results: list[Any]) -> dict[str, Any]:
        return dict(results[0])

    def discard(self, spec: dict[str, Any], result: Any) -> None:
        set_id = result.get("support_set") if isinstance(result, dict) else None
        if not set_id:
            return
        model = self.models.get(spec["model"], spec["version"])
        path = SupportSetStore(model.artifact_folder).path(set_id)
        shutil.rmtree(path, ignore_errors=True)


__all__ = [
    "DEFAULT_ALPHAS",
    "KIND",
    "GadFitConfig",
    "GadFitRunner",
    "fit_spec",
    "fit_support_set",
    "load_items",
    "modified_targets",
    "run_gad_fit",
    "select_pair",
]
