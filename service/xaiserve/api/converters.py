"""Protobuf ↔ domain conversion. Protobuf stops here: methods never see it."""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from xaiserve import __version__
from xaiserve.errors import InvalidInput
from xaiserve.imaging.decode import ImageLimits, decode_encoded, decode_heatmap, decode_tensor
from xaiserve.imaging.preprocess import fit_to_input
from xaiserve.methods.base import registered_methods
from xaiserve.models.model import Model
from xaiserve.models.repository import ModelEntry
from xaiserve.v1 import explain_pb2 as pb


def image_from_proto(image: pb.Image, limits: ImageLimits, field: str = "image") -> np.ndarray:
    """Decode a request image to image space at its own size."""
    kind = image.WhichOneof("data")
    if kind == "encoded":
        return decode_encoded(image.encoded, limits)
    if kind == "tensor":
        t = image.tensor
        return decode_tensor(t.dtype, list(t.shape), t.data, limits)
    raise InvalidInput(
        f"{field} is missing: set {field}.encoded (PNG/JPEG bytes) or {field}.tensor"
    )


def model_image(
    image: pb.Image, model: Model, limits: ImageLimits, field: str = "image"
) -> np.ndarray:
    """Decode and bring to the model's input grid."""
    return fit_to_input(image_from_proto(image, limits, field), model.config.input)


def tensor_to_proto(array: np.ndarray) -> pb.Tensor:
    if array.dtype == np.bool_ or array.dtype == np.uint8:
        arr = np.ascontiguousarray(array, dtype=np.uint8)
        dtype = "uint8"
    else:
        arr = np.ascontiguousarray(array, dtype="<f4")
        dtype = "float32"
    return pb.Tensor(dtype=dtype, shape=list(arr.shape), data=arr.tobytes())


def heatmap_from_proto(t: pb.Tensor, model: Model, field: str) -> np.ndarray:
    h, w = model.input_size
    return decode_heatmap(t.dtype, list(t.shape), t.data, h, w, field)


def resolve_class(ref: pb.ClassRef, model: Model, field: str) -> int | None:
    """Class index for a ClassRef; ``None`` means "the predicted class" (unset or predicted)."""
    kind = ref.WhichOneof("ref")
    if kind is None or kind == "predicted":
        return None
    if kind == "index":
        if ref.index >= model.num_classes:
            raise InvalidInput(
                f"{field}.index {ref.index} is out of range: model {model.name!r} has "
                f"{model.num_classes} classes (0..{model.num_classes - 1})"
            )
        return int(ref.index)
    try:
        return model.labels.index(ref.label)
    except ValueError:
        shown = ", ".join(model.labels[:20])
        raise InvalidInput(
            f"{field}.label {ref.label[:64]!r} is not a label of {model.name!r} ({shown})"
        ) from None


def message_to_mapping(message: Message) -> dict[str, Any]:
    """Only the fields the client set, recursively; proto3 ``optional`` keeps explicit zeros."""
    out: dict[str, Any] = {}
    for fd, value in message.ListFields():
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            out[fd.name] = dict(value)
        elif fd.is_repeated:
            out[fd.name] = [message_to_mapping(v) if isinstance(v, Message) else v for v in value]
        elif isinstance(value, Message):
            out[fd.name] = message_to_mapping(value)
        else:
            out[fd.name] = value
    return out


def method_of(params: pb.MethodParams, field: str = "method") -> tuple[str, Message]:
    name = params.WhichOneof("method")
    if name is None:
        names = ", ".join(f.name for f in pb.MethodParams.DESCRIPTOR.oneofs[0].fields)
        raise InvalidInput(f"{field} is missing: set one of {names}")
    return name, getattr(params, name)


def struct_from_dict(values: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(_plain(values))
    return s


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def provenance(
    model: Model, method: str, params: dict[str, Any], seed: int | None, backend: str
) -> pb.Provenance:
    p = pb.Provenance(
        model=model.name,
        version=model.version,
        model_sha256=model.sha256,
        method=method,
        parameters=struct_from_dict(params),
        xaiserve_version=__version__,
        backend=backend,
    )
    if seed is not None:
        p.seed = seed
    return p


def class_score(model: Model, index: int, probability: float) -> pb.ClassScore:
    return pb.ClassScore(index=index, label=model.labels[index], probability=float(probability))


def supported_methods(model: Model) -> list[str]:
    return sorted(name for name, spec in registered_methods().items() if model.supports(spec))


def version_info(entry_version: Any) -> pb.ModelVersionInfo:
    v = entry_version
    info = pb.ModelVersionInfo(version=v.version, error=v.error, sha256=v.sha256)
    if v.model is None:
        info.state = pb.ModelVersionInfo.FAILED
        return info
    model: Model = v.model
    cfg = model.config
    info.state = pb.ModelVersionInfo.READY
    info.input.CopyFrom(
        pb.InputSpec(
            height=cfg.input.height,
            width=cfg.input.width,
            layout=cfg.input.layout,
            channel_order=cfg.input.channel_order,
            resize=cfg.input.resize,
            value_range=list(cfg.input.value_range),
            mean=list(cfg.input.mean),
            std=list(cfg.input.std),
            input_name=model.input_name,
        )
    )
    info.labels.extend(cfg.output.labels)
    info.output_kind = cfg.output.kind
    info.backends.extend(model.backends)
    info.providers.extend(model.providers)
    info.methods.extend(supported_methods(model))
    info.max_batch_size = model.max_batch_size
    info.description = cfg.description
    return info


def model_info(entry: ModelEntry) -> pb.ModelInfo:
    return pb.ModelInfo(name=entry.name, versions=[version_info(v) for v in entry.newest_first()])
