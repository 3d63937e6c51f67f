"""Typed results: plain dataclasses with numpy arrays, built from the protobuf responses.

Every class has a ``from_proto`` constructor; callers never need the generated messages.
Heatmaps and curves are numpy arrays, provenance and operation results are plain dicts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import struct_pb2
from numpy.typing import NDArray

from xaiserve_client.images import ImageInput, save_overlay, tensor_to_array
from xaiserve_client.sanity import Randomisation
from xaiserve_client.v1 import explain_pb2 as pb

FloatArray = NDArray[np.float64]


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return _struct(value.struct_value)
    if kind == "list_value":
        return [_value(v) for v in value.list_value.values]
    if kind in ("number_value", "string_value", "bool_value"):
        return getattr(value, kind)
    return None


def _struct(message: struct_pb2.Struct) -> dict[str, Any]:
    """A ``Struct`` as a dict (numbers stay floats; NaN is kept, unlike ``MessageToDict``)."""
    return {key: _value(v) for key, v in message.fields.items()}


def jsonable(value: Any) -> Any:
    """Results as JSON-ready values: dataclasses as dicts, numpy arrays as nested lists, numpy
    scalars as numbers, datetimes and paths as strings (what ``--json`` prints)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (dt.datetime, Path)):
        return str(value)
    return value


def _time(message: Any) -> dt.datetime | None:
    if not message.seconds and not message.nanos:
        return None
    return message.ToDatetime(tzinfo=dt.UTC)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ClassScore:
    """A class and its probability (``probability`` is 0 where the server did not compute it)."""

    index: int
    label: str
    probability: float

    @classmethod
    def from_proto(cls, message: pb.ClassScore) -> ClassScore:
        return cls(int(message.index), message.label, float(message.probability))


@dataclass(frozen=True)
class Timings:
    """Server-side seconds spent on one request (see ``Timings`` in the proto)."""

    total: float = 0.0
    decode: float = 0.0
    method: float = 0.0
    inference: float = 0.0
    queue: float = 0.0

    @classmethod
    def from_proto(cls, message: pb.Timings) -> Timings:
        return cls(
            message.total_seconds,
            message.decode_seconds,
            message.method_seconds,
            message.inference_seconds,
            message.queue_seconds,
        )


def provenance_dict(message: pb.Provenance) -> dict[str, Any]:
    """Provenance as a plain dict: model, version, model_sha256, method, parameters, seed,
    xaiserve_version and backend (``seed`` is ``None`` when the method used none)."""
    return {
        "model": message.model,
        "version": message.version,
        "model_sha256": message.model_sha256,
        "method": message.method,
        "parameters": _struct(message.parameters),
        "seed": int(message.seed) if message.HasField("seed") else None,
        "xaiserve_version": message.xaiserve_version,
        "backend": message.backend,
    }


@dataclass(frozen=True)
class Prediction:
    """The top classes of one image, best first."""

    model: str
    version: str
    classes: list[ClassScore]
    timings: Timings
    request_id: str = ""

    @property
    def top(self) -> ClassScore:
        """The predicted class."""
        return self.classes[0]

    @classmethod
    def from_proto(cls, message: pb.PredictResponse) -> Prediction:
        return cls(
            model=message.model,
            version=message.version,
            classes=[ClassScore.from_proto(c) for c in message.classes],
            timings=Timings.from_proto(message.timings),
            request_id=message.request_id,
        )


@dataclass(frozen=True, eq=False)  # holds numpy arrays: compare fields yourself
class Explanation:
    """A heatmap explaining ``target`` (optionally against ``contrast``) for one image.

    Attributes:
        heatmap: ``float32 (H, W)`` on the model's input grid.
        signed: whether negative values carry meaning (evidence against the target).
        target: the explained class with its probability.
        contrast: the contrast class, if one was asked for.
        forward_passes: images the server ran through the network for this request.
        timings: server-side timings.
        maps: method extras as arrays (per-scale maps, contrast maps, masks).
        values: method extras as numbers.
        provenance: model, version, checksum, method and its resolved parameters, seed.
        method: the method's name.
    """

    heatmap: NDArray[np.float32]
    signed: bool
    target: ClassScore
    contrast: ClassScore | None
    forward_passes: int
    timings: Timings
    maps: dict[str, NDArray[Any]]
    values: dict[str, float]
    provenance: dict[str, Any]
    method: str
    request_id: str = ""

    @classmethod
    def from_proto(cls, message: pb.ExplainResponse) -> Explanation:
        return cls(
            heatmap=tensor_to_array(message.heatmap).astype(np.float32, copy=False),
            signed=message.signed,
            target=ClassScore.from_proto(message.target),
            contrast=(
                ClassScore.from_proto(message.contrast) if message.HasField("contrast") else None
            ),
            forward_passes=int(message.forward_passes),
            timings=Timings.from_proto(message.timings),
            maps={k: tensor_to_array(v) for k, v in message.maps.items()},
            values=dict(message.values),
            provenance=provenance_dict(message.provenance),
            method=message.method,
            request_id=message.request_id,
        )

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-ready values: arrays as nested lists, classes and timings as
        dicts (``json.dumps`` takes it as it is)."""
        data: dict[str, Any] = jsonable(self)
        return data

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as a JSON string; ``kwargs`` go to :func:`json.dumps`."""
        return json.dumps(self.to_dict(), **kwargs)

    def save_npz(self, path: str | os.PathLike[str]) -> Path:
        """Write one compressed ``.npz``: ``heatmap``, every extra map as ``maps/<name>``, and
        the other fields as JSON in ``meta``. Loads with :meth:`load_npz`, or with
        ``numpy.load`` alone (no pickling). Returns the path written (``.npz`` appended if
        missing)."""
        target = Path(path)
        if target.suffix != ".npz":
            target = target.with_name(target.name + ".npz")
        target.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: v for k, v in self.to_dict().items() if k not in ("heatmap", "maps")}
        arrays: dict[str, Any] = {"heatmap": self.heatmap, "meta": np.array(json.dumps(meta))}
        arrays.update({f"maps/{name}": np.asarray(v) for name, v in self.maps.items()})
        np.savez_compressed(target, **arrays)
        return target

    @classmethod
    def load_npz(cls, path: str | os.PathLike[str]) -> Explanation:
        """The explanation :meth:`save_npz` wrote."""
        with np.load(Path(path), allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            heatmap = data["heatmap"]
            maps = {k.removeprefix("maps/"): data[k] for k in data.files if k.startswith("maps/")}
        contrast = meta.get("contrast")
        return cls(
            heatmap=heatmap,
            signed=bool(meta["signed"]),
            target=ClassScore(**meta["target"]),
            contrast=ClassScore(**contrast) if contrast else None,
            forward_passes=int(meta["forward_passes"]),
            timings=Timings(**meta["timings"]),
            maps=maps,
            values={k: float(v) for k, v in meta["values"].items()},
            provenance=meta["provenance"],
            method=meta["method"],
            request_id=meta.get("request_id", ""),
        )

    def save_png(
        self,
        path: str | os.PathLike[str],
        image: ImageInput | None = None,
        *,
        alpha: float = 0.7,
        resize: str = "stretch",
        scale: int = 1,
        grayscale: bool = True,
    ) -> Path:
        """Write the heatmap as a PNG, over ``image`` (resized to the heatmap grid) if given.

        Signed maps use a diverging colormap centred at zero (red: for the target, blue:
        against), unsigned maps a sequential one; see :func:`xaiserve_client.images.overlay`.
        """
        return save_overlay(
            path,
            self.heatmap,
            image,
            signed=self.signed,
            alpha=alpha,
            resize=resize,
            scale=scale,
            grayscale=grayscale,
        )


@dataclass(frozen=True, eq=False)  # holds numpy arrays: compare fields yourself
class Localisation:
    """How well the heatmap falls on a ground-truth object mask."""

    mu: float
    mu_weighted: float
    object_fraction: float
    thresholds: FloatArray
    precision: FloatArray
    recall: FloatArray
    f_measure: FloatArray

    @classmethod
    def from_proto(cls, message: pb.Localisation) -> Localisation:
        return cls(
            message.mu,
            message.mu_weighted,
            message.object_fraction,
            np.asarray(message.thresholds, dtype=np.float64),
            np.asarray(message.precision, dtype=np.float64),
            np.asarray(message.recall, dtype=np.float64),
            np.asarray(message.f_measure, dtype=np.float64),
        )


@dataclass(frozen=True, eq=False)  # holds numpy arrays: compare fields yourself
class ScoreResult:
    """Region-perturbation curves, AOPC figures and optional heatmap quality metrics.

    ``localisation`` is set when a mask was sent; ``complexity`` and ``convex_hull`` when the
    server computed them. ``heatmap`` is the map scored when the server computed it.
    """

    morf_curve: FloatArray
    lerf_curve: FloatArray
    random_curve: FloatArray
    aopc_morf: float
    aopc_lerf: float
    aopc_random: float
    aopc_morf_minus_random: float
    area_between_lerf_morf: float
    forward_passes: int
    timings: Timings
    target: ClassScore | None
    heatmap: NDArray[np.float32] | None = None
    localisation: Localisation | None = None
    complexity: dict[str, float] | None = None
    convex_hull: dict[str, float] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    randomisation: Randomisation | None = None  # when asked (``score(..., randomisation=)``)

    @classmethod
    def from_proto(cls, message: pb.ScoreResponse) -> ScoreResult:
        def curve(values: Any) -> FloatArray:
            return np.asarray(values, dtype=np.float64)

        return cls(
            morf_curve=curve(message.morf_curve),
            lerf_curve=curve(message.lerf_curve),
            random_curve=curve(message.random_curve),
            aopc_morf=message.aopc_morf,
            aopc_lerf=message.aopc_lerf,
            aopc_random=message.aopc_random,
            aopc_morf_minus_random=message.aopc_morf_minus_random,
            area_between_lerf_morf=message.area_between_lerf_morf,
            forward_passes=int(message.forward_passes),
            timings=Timings.from_proto(message.timings),
            target=ClassScore.from_proto(message.target) if message.HasField("target") else None,
            heatmap=(
                tensor_to_array(message.heatmap).astype(np.float32, copy=False)
                if message.HasField("heatmap")
                else None
            ),
            localisation=(
                Localisation.from_proto(message.localisation)
                if message.HasField("localisation")
                else None
            ),
            complexity=(
                {"png_bytes": message.complexity.png_bytes, "entropy": message.complexity.entropy}
                if message.HasField("complexity")
                else None
            ),
            convex_hull=(
                {
                    "area_ratio": message.convex_hull.area_ratio,
                    "sensitivity": message.convex_hull.sensitivity,
                }
                if message.HasField("convex_hull")
                else None
            ),
            provenance=provenance_dict(message.provenance),
            randomisation=(
                Randomisation.from_proto(message.randomisation)
                if message.HasField("randomisation")
                else None
            ),
        )


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: its input grid and how images are normalised."""

    height: int
    width: int
    layout: str
    channel_order: str
    resize: str
    value_range: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self.height, self.width)

    @classmethod
    def from_proto(cls, message: pb.InputSpec) -> InputSpec:
        return cls(
            int(message.height),
            int(message.width),
            message.layout,
            message.channel_order,
            message.resize or "stretch",
            tuple(message.value_range),
            tuple(message.mean),
            tuple(message.std),
        )


@dataclass(frozen=True)
class ModelVersion:
    """One version of a model: its state, input, classes and supported methods."""

    version: str
    state: str  # "READY" | "FAILED" | "LOADING"
    error: str
    sha256: str
    input: InputSpec
    labels: list[str]
    output_kind: str
    backends: list[str]
    providers: list[str]
    methods: list[str]
    max_batch_size: int
    description: str
    inference_workers: int = 0  # batches the version runs at once
    intra_op_threads: int = 0  # onnxruntime threads per batch; 0 = onnxruntime's choice

    @property
    def ready(self) -> bool:
        return self.state == "READY"

    @classmethod
    def from_proto(cls, message: pb.ModelVersionInfo) -> ModelVersion:
        return cls(
            version=message.version,
            state=pb.ModelVersionInfo.State.Name(message.state),
            error=message.error,
            sha256=message.sha256,
            input=InputSpec.from_proto(message.input),
            labels=list(message.labels),
            output_kind=message.output_kind,
            backends=list(message.backends),
            providers=list(message.providers),
            methods=list(message.methods),
            max_batch_size=int(message.max_batch_size),
            description=message.description,
            inference_workers=int(message.inference_workers),
            intra_op_threads=int(message.intra_op_threads),
        )


@dataclass(frozen=True)
class ModelInfo:
    """A model and its versions, newest first."""

    name: str
    versions: list[ModelVersion]

    @property
    def latest(self) -> ModelVersion | None:
        """The newest ready version (``None`` if none is ready)."""
        return next((v for v in self.versions if v.ready), None)

    @classmethod
    def from_proto(cls, message: pb.ModelInfo) -> ModelInfo:
        return cls(message.name, [ModelVersion.from_proto(v) for v in message.versions])


@dataclass(frozen=True)
class Operation:
    """A long-running operation (data-set evaluation, GAD fitting) at one moment."""

    id: str
    kind: str
    state: str  # "PENDING" | "RUNNING" | "SUCCEEDED" | "FAILED" | "CANCELLED"
    done: int
    total: int
    message: str
    progress: dict[str, float]
    item_result: dict[str, Any]
    result: dict[str, Any]
    error: tuple[str, str] | None  # (status name, message)
    created: dt.datetime | None
    updated: dt.datetime | None

    @property
    def finished(self) -> bool:
        """Whether the operation has stopped (succeeded, failed or cancelled)."""
        return self.state in ("SUCCEEDED", "FAILED", "CANCELLED")

    @property
    def fraction(self) -> float:
        """Progress on 0..1 (0 while the total is unknown)."""
        return self.done / self.total if self.total else 0.0

    @classmethod
    def from_proto(cls, message: pb.Operation) -> Operation:
        error = None
        if message.HasField("error") and (message.error.code or message.error.message):
            error = (message.error.code, message.error.message)
        return cls(
            id=message.id,
            kind=message.kind,
            state=pb.Operation.State.Name(message.state),
            done=int(message.done),
            total=int(message.total),
            message=message.message,
            progress=dict(message.progress),
            item_result=_struct(message.item_result),
            result=_struct(message.result),
            error=error,
            created=_time(message.created),
            updated=_time(message.updated),
        )


__all__ = [
    "ClassScore",
    "Explanation",
    "InputSpec",
    "Localisation",
    "ModelInfo",
    "ModelVersion",
    "Operation",
    "Prediction",
    "ScoreResult",
    "Timings",
    "provenance_dict",
]
