"""Storage of GAD support sets (Mazini Rodrigues et al., "gradient artificial distancing").

A support set is the family of support regression networks of Section 4.2, one per distance
``α`` of the schedule of Section 4.3, fitted for one pair of classes ``(a, b)`` of one model
version. It lives in the version's *artifact* folder (:mod:`xaiserve.models.artifacts`, shared
by every replica; the model folder itself stays read-only)::

    <artifacts>/models/<model>/<version>/support_sets/<id>/record.json  what was fitted, how
    <artifacts>/models/<model>/<version>/support_sets/<id>/alpha_<α>.pt one state_dict per α

Ids are ``gad-<a>-<b>-<n>`` (class indices, ``n`` counts up from 1) and pass
:func:`xaiserve.models.repository.validate_name`, so an id from a request can never address
anything outside ``support_sets/``.

Writes are atomic: a fit writes into a hidden temporary sibling (``support_sets/.tmp-…``) and
renames it into place only once every α file and the record are written, so a cancelled or
failed fit leaves no half-written set, and `SupportSetStore.list_sets` (which skips hidden
folders) finds exactly the finished sets, also after a restart.

State dicts are loaded with ``torch.load(..., weights_only=True)`` into a fresh module from the
model's own module factory (the converted ONNX graph or the registered module), so a support
model has exactly the original architecture: "the identical network architecture" (Section 4).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xaiserve import __version__
from xaiserve.contracts.names import validate_name
from xaiserve.errors import FailedPrecondition, InvalidInput, NotFound
from xaiserve.models.artifacts import TMP_PREFIX as _TMP_PREFIX
from xaiserve.models.artifacts import keep_fresh

if TYPE_CHECKING:
    import torch
    from torch import nn

    from xaiserve.models.model import Model

SUPPORT_SETS_DIR = "support_sets"
RECORD_FILE = "record.json"
_ID = re.compile(r"gad-(\d+)-(\d+)-(\d+)")
_COMMIT_TRIES = 1000


def alpha_filename(alpha: float) -> str:
    """``alpha_<α>.pt`` with the shortest exact decimal of ``α`` (``alpha_2.pt``, ``alpha_2.5.pt``)."""
    if not math.isfinite(alpha):
        raise InvalidInput(f"alpha {alpha!r} must be finite")
    text = repr(float(alpha))
    if text.endswith(".0"):
        text = text[:-2]
    return f"alpha_{text}.pt"


def support_set_id(class_a: int, class_b: int, n: int) -> str:
    """The id of the ``n``-th set fitted for classes ``(a, b)``: ``gad-<a>-<b>-<n>``."""
    return f"gad-{class_a}-{class_b}-{n}"


def dataset_sha256(images: np.ndarray, labels: Sequence[int] | np.ndarray) -> str:
    """SHA-256 over the images and labels, in order.

    Each item contributes its shape (int64 little endian), its pixels as little-endian float32
    in image space (0..255, the model's input grid) and its label (int64 little endian), so the
    same images in another order, with another label, or at another size give another hash.
    """
    arr = np.asarray(images)
    lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    if arr.ndim != 4 or len(arr) != len(lab):
        raise InvalidInput(
            f"expected (N, H, W, 3) images and N labels, got {arr.shape}, {lab.shape}"
        )
    digest = hashlib.sha256()
    for image, label in zip(arr, lab, strict=True):
        digest.update(np.asarray(image.shape, dtype="<i8").tobytes())
        digest.update(np.ascontiguousarray(image, dtype="<f4").tobytes())
        digest.update(np.asarray([label], dtype="<i8").tobytes())
    return digest.hexdigest()


@dataclass
class SupportSetRecord:
    """``record.json``: everything needed to know what a support set is and how it was fitted.

    ``alphas`` is the α schedule of Section 4.3 (in fitting order); ``final_loss[i]`` is the MSE
    of the support model for ``alphas[i]`` against its modified targets (Section 4.2) over the
    whole fitting set after training, ``initial_loss[i]`` the same for the original weights.
    """

    id: str
    model: str
    version: str
    model_sha256: str
    class_a: int
    class_b: int
    class_a_label: str
    class_b_label: str
    alphas: list[float]
    epochs: int
    learning_rate: float
    batch_size: int
    seed: int
    images: int
    images_a: int
    images_b: int
    dataset_sha256: str
    final_loss: list[float]
    initial_loss: list[float] = field(default_factory=list)
    epoch_losses: list[list[float]] = field(default_factory=list)
    device: str = "cpu"
    fit_seconds: float = 0.0
    created: float = field(default_factory=time.time)
    xaiserve_version: str = __version__

    @property
    def files(self) -> list[str]:
        """The state-dict file of each α, in ``alphas`` order."""
        return [alpha_filename(a) for a in self.alphas]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> SupportSetRecord:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("record.json must hold an object")
        return cls(**data)

    def summary(self) -> dict[str, Any]:
        """JSON-compatible view (operation results, listings)."""
        return asdict(self)


class SupportSetStore:
    """The support sets of one model version folder (see module docs)."""

    def __init__(self, version_folder: Path | str) -> None:
        self.folder = Path(version_folder)
        self.root = self.folder / SUPPORT_SETS_DIR

    # -- reading -------------------------------------------------------------------------------
    def list_sets(self) -> list[SupportSetRecord]:
        """Every finished set (temporary folders of running or aborted fits are skipped)."""
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.iterdir()):
            if path.name.startswith(".") or not _ID.fullmatch(path.name):
                continue
            try:
                found.append(self._read(path))
            except (OSError, ValueError, TypeError):
                continue  # not a finished set (or a damaged one): not listed
        return sorted(found, key=lambda r: _id_key(r.id))

    def get(self, set_id: str) -> SupportSetRecord:
        """The record of ``set_id``, or :class:`NotFound` naming it."""
        validate_name(set_id, "support_set")
        path = self.root / set_id
        if not (path / RECORD_FILE).is_file():
            known = ", ".join(r.id for r in self.list_sets()) or "none"
            raise NotFound(
                f"support set {set_id!r} does not exist for this model version (known: {known}); "
                "fit one with FitGad"
            )
        try:
            return self._read(path)
        except (OSError, ValueError, TypeError) as exc:
            raise FailedPrecondition(f"support set {set_id!r} is unreadable: {exc}") from exc

    def path(self, set_id: str) -> Path:
        validate_name(set_id, "support_set")
        return self.root / set_id

    def load_state(self, record: SupportSetRecord, alpha: float) -> dict[str, torch.Tensor]:
        """The state dict of ``α`` (``torch.load(weights_only=True)``, on the CPU)."""
        import torch

        path = self.path(record.id) / alpha_filename(alpha)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise FailedPrecondition(f"{path} does not hold a state dict")
        return state

    def _read(self, path: Path) -> SupportSetRecord:
        record = SupportSetRecord.from_json((path / RECORD_FILE).read_text(encoding="utf-8"))
        if record.id != path.name:
            raise ValueError(f"record id {record.id!r} does not match its folder {path.name!r}")
        for name in record.files:
            if not (path / name).is_file():
                raise ValueError(f"{name} is missing")
        return record

    # -- writing -------------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Raise :class:`FailedPrecondition` naming the folder if sets cannot be written there."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=self.root)
            os.rmdir(probe)
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot write GAD support sets: folder {self.root} is not writable "
                f"({exc.strerror or exc})"
            ) from exc

    @contextlib.contextmanager
    def writer(self, class_a: int, class_b: int) -> Iterator[SupportSetWriter]:
        """A temporary folder to write one set into; :meth:`SupportSetWriter.commit` renames it
        into place. Leaving the block without a commit (an exception, a cancellation) removes
        the temporary folder, so no half-written set is ever visible."""
        self.check_writable()
        tmp = self.root / f"{_TMP_PREFIX}gad-{class_a}-{class_b}-{uuid.uuid4().hex}"
        try:
            tmp.mkdir()
        except OSError as exc:
            raise FailedPrecondition(f"cannot create a folder in {self.root}: {exc}") from exc
        writer = SupportSetWriter(self, tmp, class_a, class_b)
        try:
            with keep_fresh(tmp):  # a live fit's folder is never swept as a crashed one's
                yield writer
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _next_number(self, class_a: int, class_b: int) -> int:
        used = [0]
        if self.root.is_dir():
            for path in self.root.iterdir():
                m = _ID.fullmatch(path.name)
                if m and (int(m[1]), int(m[2])) == (class_a, class_b):
                    used.append(int(m[3]))
        return max(used) + 1


class SupportSetWriter:
    """Writes the α files and the record of one set into its temporary folder."""

    def __init__(self, store: SupportSetStore, tmp: Path, class_a: int, class_b: int) -> None:
        self.store = store
        self.tmp = tmp
        self.class_a = class_a
        self.class_b = class_b

    def add(self, alpha: float, state_dict: Mapping[str, torch.Tensor]) -> Path:
        """Save the support model of ``α`` (tensors moved to the CPU)."""
        import torch

        path = self.tmp / alpha_filename(alpha)
        state = {k: v.detach().to("cpu").clone() for k, v in state_dict.items()}
        try:
            torch.save(state, path)
        except OSError as exc:
            raise FailedPrecondition(f"cannot write {path}: {exc}") from exc
        return path

    def commit(self, record: SupportSetRecord) -> SupportSetRecord:
        """Write ``record.json`` (its ``id`` chosen here) and rename the folder into place.

        The id is the next free ``gad-<a>-<b>-<n>``; renaming onto an existing set fails
        (another fit won the race), in which case the next number is tried.
        """
        if (record.class_a, record.class_b) != (self.class_a, self.class_b):
            raise ValueError("record classes do not match the writer's")
        for name in record.files:
            if not (self.tmp / name).is_file():
                raise ValueError(f"cannot commit: {name} was not written")
        for _ in range(_COMMIT_TRIES):
            n = self.store._next_number(self.class_a, self.class_b)
            record.id = support_set_id(self.class_a, self.class_b, n)
            (self.tmp / RECORD_FILE).write_text(record.to_json(), encoding="utf-8")
            target = self.store.root / record.id
            try:
                os.rename(self.tmp, target)  # atomic; fails if target exists and is non-empty
            except OSError:
                if target.exists():
                    continue
                raise
            return record
        raise FailedPrecondition(f"could not find a free support-set id in {self.store.root}")


def _id_key(set_id: str) -> tuple[int, int, int]:
    m = _ID.fullmatch(set_id)
    return (int(m[1]), int(m[2]), int(m[3])) if m else (0, 0, 0)


# ---------------------------------------------------------------------------------------------
# modules


def logit_module(module: nn.Module, output_kind: str) -> nn.Module:
    """The network with a linear output: "we replace the Softmax activation with a Linear one"
    (Section 4.2). Logit models are returned as they are; for probability models a final
    ``Softmax`` (an ``nn.Softmax`` ending a ``torch.fx`` graph or an ``nn.Sequential``) is
    removed. Anything else is :class:`FailedPrecondition`: GAD needs the pre-softmax
    activations (Section 4.1)."""
    if output_kind != "probabilities":
        return module
    import torch
    import torch.fx
    from torch import nn

    if isinstance(module, torch.fx.GraphModule):
        graph = module.graph
        out = next(n for n in reversed(graph.nodes) if n.op == "output")
        last = out.args[0]
        if isinstance(last, torch.fx.Node) and _is_softmax(module, last):
            out.args = (last.args[0],)
            graph.erase_node(last)
            graph.lint()
            module.recompile()
            return module
    if isinstance(module, nn.Sequential) and len(module) and isinstance(module[-1], nn.Softmax):
        return nn.Sequential(*list(module)[:-1])
    raise FailedPrecondition(
        "GAD fits regressions on pre-softmax outputs, but this model outputs probabilities and "
        "its torch graph does not end in a Softmax that could be removed"
    )


def _is_softmax(module: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    import torch
    from torch import nn

    if node.op == "call_module":
        return isinstance(module.get_submodule(str(node.target)), nn.Softmax)
    if node.op == "call_function":
        return node.target in (torch.softmax, torch.nn.functional.softmax)
    return node.op == "call_method" and node.target == "softmax"


def support_module_factory(
    model: Model, store: SupportSetStore, record: SupportSetRecord, alpha: float
) -> Callable[[], nn.Module]:
    """Build the support model of ``α``: a fresh module from the model's module factory, made
    linear-output (:func:`logit_module`), with the saved state dict loaded (strict)."""
    build = model.torch_module_factory()
    kind = model.output_kind  # the closure must not keep the Model alive (gad's cache)

    def make() -> nn.Module:
        module = logit_module(build(), kind)
        module.load_state_dict(store.load_state(record, alpha), strict=True)
        return module.eval()

    return make


__all__ = [
    "RECORD_FILE",
    "SUPPORT_SETS_DIR",
    "SupportSetRecord",
    "SupportSetStore",
    "SupportSetWriter",
    "alpha_filename",
    "dataset_sha256",
    "logit_module",
    "support_module_factory",
    "support_set_id",
]
