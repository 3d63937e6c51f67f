"""Protobuf ↔ domain conversion. Protobuf stops here: nothing below ``api/`` sees it.

Requests become the core's input types (:mod:`xaiserve.core`) without decoding anything — the
core decodes the image once, after the model is known — and the core's results become
responses.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from xaiserve import __version__, core
from xaiserve.evaluation.randomisation import RandomisationCurve
from xaiserve.imaging.decode import ImageInput, RawTensor
from xaiserve.jobs.operations import OperationState, json_safe
from xaiserve.methods.base import registered_methods
from xaiserve.models.model import Model
from xaiserve.models.randomised_variants import DISTRIBUTION, RandomisationOptions
from xaiserve.models.repository import ModelEntry, VersionEntry
from xaiserve_client.v1 import explain_pb2 as pb

# ---------------------------------------------------------------------------------------------
# proto → domain


def raw_tensor(t: pb.Tensor) -> RawTensor:
    return RawTensor(dtype=t.dtype, shape=tuple(t.shape), data=t.data)


def image_input(image: pb.Image) -> ImageInput:
    kind = image.WhichOneof("data")
    if kind == "encoded":
        return ImageInput(encoded=image.encoded)
    if kind == "tensor":
        return ImageInput(tensor=raw_tensor(image.tensor))
    return ImageInput()


def class_ref(ref: pb.ClassRef) -> core.ClassRef:
    kind = ref.WhichOneof("ref")
    if kind == "index":
        return core.ClassRef(index=int(ref.index))
    if kind == "label":
        return core.ClassRef(label=ref.label)
    return core.ClassRef(predicted=kind == "predicted")


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


def method_choice(params: pb.MethodParams, field: str = "method") -> core.MethodChoice:
    name = params.WhichOneof("method")
    if name is None:
        return core.MethodChoice(None, {}, field)
    return core.MethodChoice(name, message_to_mapping(getattr(params, name)), field)


def predict_input(r: pb.PredictRequest) -> core.PredictInput:
    top_k = r.top_k if r.HasField("top_k") else None
    return core.PredictInput(r.model, r.version, image_input(r.image), top_k)


def explain_input(r: pb.ExplainRequest) -> core.ExplainInput:
    return core.ExplainInput(
        model=r.model,
        version=r.version,
        image=image_input(r.image),
        method=method_choice(r.method),
        target=class_ref(r.target),
        contrast=class_ref(r.contrast),
    )


def score_input(r: pb.ScoreRequest) -> core.ScoreInput:
    source = r.WhichOneof("heatmap_source")
    return core.ScoreInput(
        model=r.model,
        version=r.version,
        image=image_input(r.image),
        target=class_ref(r.target),
        heatmap=raw_tensor(r.heatmap) if source == "heatmap" else None,
        method=method_choice(r.method) if source == "method" else None,
        morf=message_to_mapping(r.morf),
        mask=raw_tensor(r.mask) if r.HasField("mask") else None,
        hull_keep_fraction=r.hull_keep_fraction if r.HasField("hull_keep_fraction") else None,
        randomisation=(
            randomisation_options(r.randomisation) if r.HasField("randomisation") else None
        ),
    )


def randomisation_options(message: pb.RandomisationOptions) -> RandomisationOptions:
    """Unset fields take their defaults (INVALID_ARGUMENT when out of range)."""
    return RandomisationOptions(
        stops=int(message.stops) if message.HasField("stops") else 0,
        seed=int(message.seed) if message.HasField("seed") else 0,
    )


def streamed_items(
    items: Iterator[tuple[int, pb.LabelledImage]],
) -> Iterator[core.StreamedItem]:
    """The items of a "config, then items" stream (``api.streams.config_then_items``), lazily."""
    for index, item in items:
        yield core.StreamedItem(
            index=index,
            name=item.name or str(index),
            image=image_input(item.image),
            label=class_ref(item.label),
            mask=raw_tensor(item.mask) if item.HasField("mask") else None,
        )


def dataset_evaluation_input(c: pb.EvaluateDatasetConfig) -> core.DatasetEvaluationInput:
    return core.DatasetEvaluationInput(
        model=c.model,
        version=c.version,
        methods=[method_choice(m, f"config.methods[{i}]") for i, m in enumerate(c.methods)],
        morf=message_to_mapping(c.morf),
        dataset=c.dataset,
        limit=c.limit if c.HasField("limit") else None,
        randomisation=(
            randomisation_options(c.randomisation) if c.HasField("randomisation") else None
        ),
    )


def gad_fit_input(c: pb.FitGadConfig) -> core.GadFitInput:
    return core.GadFitInput(
        model=c.model,
        version=c.version,
        class_a=class_ref(c.class_a),
        class_b=class_ref(c.class_b),
        dataset=c.dataset,
        alphas=tuple(c.alphas),
        epochs=c.epochs if c.HasField("epochs") else None,
        learning_rate=c.learning_rate if c.HasField("learning_rate") else None,
        batch_size=c.batch_size if c.HasField("batch_size") else None,
        seed=c.seed if c.HasField("seed") else None,
    )


# ---------------------------------------------------------------------------------------------
# domain → proto


def tensor_to_proto(array: np.ndarray) -> pb.Tensor:
    if array.dtype == np.bool_ or array.dtype == np.uint8:
        arr = np.ascontiguousarray(array, dtype=np.uint8)
        dtype = "uint8"
    else:
        arr = np.ascontiguousarray(array, dtype="<f4")
        dtype = "float32"
    return pb.Tensor(dtype=dtype, shape=list(arr.shape), data=arr.tobytes())


def struct_from_dict(values: dict[str, Any]) -> struct_pb2.Struct:
    """Values as a Struct, made plain JSON first (:func:`xaiserve.jobs.operations.json_safe`)."""
    s = struct_pb2.Struct()
    s.update(json_safe(values))
    return s


def class_score(score: core.ClassScore) -> pb.ClassScore:
    return pb.ClassScore(index=score.index, label=score.label, probability=score.probability)


def timings(t: core.Timings) -> pb.Timings:
    return pb.Timings(
        total_seconds=t.total_seconds,
        decode_seconds=t.decode_seconds,
        method_seconds=t.method_seconds,
        inference_seconds=t.inference_seconds,
        queue_seconds=t.queue_seconds,
    )


def provenance(p: core.Provenance) -> pb.Provenance:
    out = pb.Provenance(
        model=p.model,
        version=p.version,
        model_sha256=p.model_sha256,
        method=p.method,
        parameters=struct_from_dict(p.parameters),
        xaiserve_version=__version__,
        backend=p.backend,
    )
    if p.seed is not None:
        out.seed = p.seed
    return out


def predict_response(result: core.Prediction, request_id: str) -> pb.PredictResponse:
    return pb.PredictResponse(
        model=result.model.name,
        version=result.model.version,
        classes=[class_score(c) for c in result.classes],
        timings=timings(result.timings),
        request_id=request_id,
    )


def explain_response(result: core.ExplainResult, request_id: str) -> pb.ExplainResponse:
    explanation = result.explanation
    response = pb.ExplainResponse(
        heatmap=tensor_to_proto(result.heatmap),
        signed=bool(explanation.signed),
        target=class_score(result.target),
        forward_passes=result.forward_passes,
        timings=timings(result.timings),
        provenance=provenance(result.provenance),
        method=result.method.spec.name,
        request_id=request_id,
    )
    if result.contrast is not None:
        response.contrast.CopyFrom(class_score(result.contrast))
    for key, value in explanation.maps.items():
        response.maps[key].CopyFrom(tensor_to_proto(np.asarray(value)))
    for key, number in explanation.values.items():
        response.values[key] = float(number)
    return response


def randomisation_curve(curve: RandomisationCurve, seed: int) -> pb.Randomisation:
    out = pb.Randomisation(
        method=curve.method,
        total_layers=curve.total_layers,
        seed=seed,
        summary=curve.summary,
        full_randomisation=curve.full,
        distribution=DISTRIBUTION,
        notes=list(curve.notes),
        images=curve.images,
    )
    for depth, layer, sim in zip(curve.depths, curve.layers, curve.similarities, strict=True):
        out.points.append(
            pb.RandomisationPoint(
                depth=depth,
                layer=layer,
                spearman_abs=sim.spearman_abs,
                spearman_signed=sim.spearman_signed,
                ssim=sim.ssim,
                hog=sim.hog,
            )
        )
    return out


def score_response(result: core.ScoreResult) -> pb.ScoreResponse:
    curves = result.morf
    response = pb.ScoreResponse(
        morf_curve=curves.morf_curve.tolist(),
        aopc_morf=curves.aopc_morf,
        forward_passes=result.forward_passes,
        complexity=pb.Complexity(
            png_bytes=float(result.complexity.png_bytes), entropy=float(result.complexity.entropy)
        ),
        convex_hull=pb.ConvexHull(
            area_ratio=result.convex_hull.area_ratio, sensitivity=result.convex_hull.sensitivity
        ),
        target=class_score(result.target),
        provenance=provenance(result.provenance),
        timings=timings(result.timings),
    )
    if curves.lerf_curve is not None:
        response.lerf_curve.extend(curves.lerf_curve.tolist())
        response.aopc_lerf = float(curves.aopc_lerf or 0.0)
        response.area_between_lerf_morf = float(curves.area_between_lerf_morf or 0.0)
    if curves.random_curve is not None:
        response.random_curve.extend(curves.random_curve.tolist())
        response.aopc_random = float(curves.aopc_random or 0.0)
        response.aopc_morf_minus_random = float(curves.aopc_morf_minus_random or 0.0)
    if result.heatmap is not None:
        response.heatmap.CopyFrom(tensor_to_proto(result.heatmap))
    if result.randomisation is not None:
        response.randomisation.CopyFrom(
            randomisation_curve(result.randomisation, result.randomisation_seed)
        )
    loc = result.localisation
    if loc is not None:
        response.localisation.CopyFrom(
            pb.Localisation(
                mu=loc.mu,
                mu_weighted=loc.mu_weighted,
                object_fraction=loc.object_fraction,
                thresholds=np.asarray(loc.thresholds).tolist(),
                precision=np.asarray(loc.precision).tolist(),
                recall=np.asarray(loc.recall).tolist(),
                f_measure=np.asarray(loc.f_measure).tolist(),
            )
        )
    return response


def _timestamp(t: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


def operation(op: OperationState) -> pb.Operation:
    out = pb.Operation(
        id=op.id,
        kind=op.kind,
        state=getattr(pb.Operation, op.state),
        done=op.done,
        total=op.total,
        message=op.message,
    )
    for key, value in op.progress.items():
        out.progress[key] = float(value)
    if op.item_result is not None:
        out.item_result.CopyFrom(struct_from_dict(op.item_result))
    if op.result is not None:
        out.result.CopyFrom(struct_from_dict(op.result))
    if op.error_code:
        out.error.code = op.error_code
        out.error.message = op.error_message
    out.created.CopyFrom(_timestamp(op.created))
    out.updated.CopyFrom(_timestamp(op.updated))
    return out


def supported_methods(model: Model) -> list[str]:
    return sorted(
        name for name, spec in registered_methods().items() if model.supports(spec.model_backend)
    )


def version_info(v: VersionEntry) -> pb.ModelVersionInfo:
    info = pb.ModelVersionInfo(version=v.version, error=v.error, sha256=v.sha256)
    if v.model is None:
        info.state = pb.ModelVersionInfo.FAILED
        return info
    model: Model = v.model
    cfg = model.config
    state_error = model.state_error()  # a remote backend that is down or not ready
    info.state = pb.ModelVersionInfo.FAILED if state_error else pb.ModelVersionInfo.READY
    info.error = state_error or v.error
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
    info.inference_workers = model.workers
    info.intra_op_threads = model.intra_op_threads
    info.description = cfg.description
    return info


def model_info(entry: ModelEntry) -> pb.ModelInfo:
    return pb.ModelInfo(name=entry.name, versions=[version_info(v) for v in entry.newest_first()])

