"""Request builders: Python values (paths, arrays, dicts of parameters) to request messages.

Both clients build every request here; nothing in this module talks to the network. Mistakes
raise :class:`~xaiserve_client.errors.InvalidArgument` before a call is made, naming the
parameter to fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from xaiserve_client.errors import InvalidArgument
from xaiserve_client.images import ImageInput, array_to_tensor, to_image_proto
from xaiserve_client.types import ClassScore
from xaiserve_client.v1 import explain_pb2 as pb

DEFAULT_METHOD = "regional_prediction_difference"

ClassInput = int | np.integer | str | ClassScore | pb.ClassRef | None
"""A class: an index, a label, ``"predicted"``/``None`` (the model's prediction)."""

LabelledInput = tuple[Any, ...] | Mapping[str, Any]
"""A data-set item: ``(image, label)``, ``(image, label, mask)``, ``(image, label, mask, name)``
or a mapping with keys ``image``, ``label`` and optionally ``mask`` and ``name``."""

M = TypeVar("M", bound=Message)




def class_ref(value: ClassInput, what: str = "target") -> pb.ClassRef | None:
    """A ``ClassRef`` from an index, a label or ``"predicted"``; ``None`` leaves it unset."""
    if value is None or isinstance(value, pb.ClassRef):
        return value
    if isinstance(value, ClassScore):
        return pb.ClassRef(index=value.index)
    if isinstance(value, (bool, np.bool_)):
        raise InvalidArgument(f"{what} must be a class index, a label or 'predicted', not {value}")
    if isinstance(value, (int, np.integer)):
        if value < 0:
            raise InvalidArgument(f"{what} index must be 0 or more, got {value}")
        return pb.ClassRef(index=int(value))
    if isinstance(value, str):
        if value == "":
            return None
        if value == "predicted":
            return pb.ClassRef(predicted=True)
        return pb.ClassRef(label=value)
    raise InvalidArgument(
        f"{what} must be a class index, a label or 'predicted', not {type(value).__name__}"
    )


def _plain(value: Any) -> Any:
    """numpy scalars/arrays, tuples and paths as JSON-like values for ``ParseDict``."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def _check_fields(descriptor: Any, mapping: Mapping[str, Any], what: str) -> None:
    """Unknown keys → :class:`InvalidArgument` naming the key and the fields there are."""
    for key, value in mapping.items():
        field = descriptor.fields_by_name.get(key)
        if field is None:
            known = ", ".join(descriptor.fields_by_name) or "none"
            raise InvalidArgument(f"unknown parameter {key!r} for {what} (known: {known})")
        if field.message_type is None or field.message_type.full_name.startswith("google."):
            continue
        items = value if _is_repeated(field) and isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, Mapping):
                _check_fields(field.message_type, item, f"{what}.{key}")


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def parse_into(message: M, values: Mapping[str, Any] | None, what: str) -> M:
    """Fill ``message`` from a (nested) mapping of field names, raising InvalidArgument."""
    plain = _plain(dict(values or {}))
    _check_fields(message.DESCRIPTOR, plain, what)
    try:
        json_format.ParseDict(plain, message)
    except json_format.ParseError as exc:
        raise InvalidArgument(f"bad parameters for {what}: {exc}") from None
    return message


def method_names() -> list[str]:
    """Every method the protocol knows (a server may implement fewer)."""
    return [f.name for f in pb.MethodParams.DESCRIPTOR.oneofs_by_name["method"].fields]


def unknown_method_message(method: str) -> str:
    """``unknown method 'lrpp': did you mean 'lrp'? (known: ...)`` for a mistyped name."""
    known = method_names()
    close = difflib.get_close_matches(method.strip().lower().replace("-", "_"), known, n=3)
    hint = f": did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown method {method!r}{hint} (known: {', '.join(known)})"


def method_params(method: str, params: Mapping[str, Any] | None = None) -> pb.MethodParams:
    """``MethodParams`` selecting ``method`` with ``params`` set by field name.

    Nested messages take nested dicts, e.g. ``{"segmentation": {"algorithm": "slic"}}``.
    """
    if method not in method_names():
        raise InvalidArgument(unknown_method_message(method))
    message = pb.MethodParams()
    getattr(message, method).SetInParent()
    parse_into(getattr(message, method), params, f"method {method!r}")
    return message


def labelled_image(item: LabelledInput) -> pb.LabelledImage:
    """A ``LabelledImage`` from a tuple or mapping (see :data:`LabelledInput`)."""
    if isinstance(item, Mapping):
        fields = dict(item)
    elif isinstance(item, tuple) and 2 <= len(item) <= 4:
        fields = dict(zip(("image", "label", "mask", "name"), item, strict=False))
    else:
        raise InvalidArgument("items must be (image, label[, mask[, name]]) or a mapping")
    message = pb.LabelledImage(image=to_image_proto(fields["image"]), name=fields.get("name") or "")
    label = class_ref(fields.get("label"), "label")
    if label is not None:
        message.label.CopyFrom(label)
    if fields.get("mask") is not None:
        message.mask.CopyFrom(array_to_tensor(np.asarray(fields["mask"]).astype(np.uint8)))
    return message


def _with_refs(message: M, **refs: pb.ClassRef | None) -> M:
    for name, ref in refs.items():
        if ref is not None:
            getattr(message, name).CopyFrom(ref)
    return message


def explain_request(
    image: ImageInput,
    model: str,
    version: str,
    method: pb.MethodParams,
    target: ClassInput,
    contrast: ClassInput,
    request_id: str = "",
) -> pb.ExplainRequest:
    request = pb.ExplainRequest(
        model=model,
        version=version,
        image=to_image_proto(image),
        method=method,
        request_id=request_id,
    )
    return _with_refs(
        request, target=class_ref(target, "target"), contrast=class_ref(contrast, "contrast")
    )


def predict_request(
    image: ImageInput, model: str, version: str, top_k: int | None, request_id: str = ""
) -> pb.PredictRequest:
    request = pb.PredictRequest(
        model=model, version=version, image=to_image_proto(image), request_id=request_id
    )
    if top_k is not None:
        request.top_k = top_k
    return request


def score_request(
    image: ImageInput,
    model: str,
    version: str,
    *,
    heatmap: Any = None,
    method: str | None = None,
    params: Mapping[str, Any] | None = None,
    target: ClassInput = None,
    morf: Mapping[str, Any] | None = None,
    mask: Any = None,
    hull_keep_fraction: float | None = None,
    randomisation: Mapping[str, Any] | None = None,
) -> pb.ScoreRequest:
    if (heatmap is None) == (method is None):
        raise InvalidArgument("score needs exactly one of heatmap= or method=")
    request = pb.ScoreRequest(model=model, version=version, image=to_image_proto(image))
    if heatmap is not None:
        request.heatmap.CopyFrom(array_to_tensor(np.asarray(heatmap, dtype=np.float32)))
    else:
        request.method.CopyFrom(method_params(str(method), params))
    parse_into(request.morf, morf, "morf")
    if mask is not None:
        request.mask.CopyFrom(array_to_tensor(np.asarray(mask).astype(np.uint8)))
    if hull_keep_fraction is not None:
        request.hull_keep_fraction = hull_keep_fraction
    if randomisation is not None:
        request.randomisation.SetInParent()
        parse_into(request.randomisation, randomisation, "randomisation")
    return _with_refs(request, target=class_ref(target, "target"))


def evaluate_requests(
    config: pb.EvaluateDatasetConfig, items: Iterable[LabelledInput]
) -> Iterator[pb.EvaluateDatasetRequest]:
    yield pb.EvaluateDatasetRequest(config=config)
    for item in items:
        yield pb.EvaluateDatasetRequest(item=labelled_image(item))


def fit_gad_requests(
    config: pb.FitGadConfig, items: Iterable[LabelledInput]
) -> Iterator[pb.FitGadRequest]:
    yield pb.FitGadRequest(config=config)
    for item in items:
        yield pb.FitGadRequest(item=labelled_image(item))


def evaluate_config(
    model: str,
    version: str,
    methods: Sequence[str] | Mapping[str, Mapping[str, Any]],
    morf: Mapping[str, Any] | None,
    dataset: str,
    limit: int | None,
    randomisation: Mapping[str, Any] | None = None,
) -> pb.EvaluateDatasetConfig:
    chosen = methods.items() if isinstance(methods, Mapping) else [(m, {}) for m in methods]
    config = pb.EvaluateDatasetConfig(
        model=model,
        version=version,
        methods=[method_params(name, params) for name, params in chosen],
        dataset=dataset,
    )
    parse_into(config.morf, morf, "morf")
    if limit is not None:
        config.limit = limit
    if randomisation is not None:
        config.randomisation.SetInParent()
        parse_into(config.randomisation, randomisation, "randomisation")
    return config


def fit_gad_config(
    model: str, version: str, class_a: ClassInput, class_b: ClassInput, **options: Any
) -> pb.FitGadConfig:
    config = pb.FitGadConfig(model=model, version=version)
    _with_refs(config, class_a=class_ref(class_a, "class_a"), class_b=class_ref(class_b, "class_b"))
    return parse_into(config, {k: v for k, v in options.items() if v is not None}, "fit_gad")
