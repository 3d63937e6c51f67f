"""``xaiserve.v1.ExplainService``: validate, convert, delegate. No algorithm lives here."""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
import numpy as np

from xaiserve.api import converters as conv
from xaiserve.api.interceptors import set_method_label
from xaiserve.config import Settings
from xaiserve.errors import InvalidInput, LimitExceeded, ModelNotFound, Unimplemented
from xaiserve.imaging.decode import ImageLimits
from xaiserve.jobs.operations import OperationStore
from xaiserve.methods import catalog as _catalog  # noqa: F401 - registers the methods
from xaiserve.methods import get_method
from xaiserve.methods.base import Explanation, MethodSpec, Target
from xaiserve.methods.params import params_from_mapping, params_to_dict
from xaiserve.models.model import Model
from xaiserve.models.repository import ModelRepository, validate_name
from xaiserve.runtime import context as rctx
from xaiserve.v1 import explain_pb2 as pb
from xaiserve.v1 import explain_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

MAX_TOP_K = 1000


def request_context(context: grpc.ServicerContext) -> rctx.RequestContext:
    """Deadline and cancellation of this RPC, for the runtime (see ``runtime.context``)."""
    remaining = context.time_remaining()
    deadline = None if remaining is None or remaining > 1e8 else time.monotonic() + remaining
    ctx = rctx.RequestContext(deadline=deadline)
    context.add_callback(ctx.cancelled.set)  # fires when the RPC ends, early or not
    return ctx


@dataclasses.dataclass
class ResolvedMethod:
    spec: MethodSpec
    params: Any
    params_dict: dict[str, Any]
    seed: int | None


class ExplainServicer(pb_grpc.ExplainServiceServicer):
    def __init__(
        self, settings: Settings, repository: ModelRepository, operations: OperationStore
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.operations = operations
        self.limits = ImageLimits(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            formats=tuple(settings.allowed_image_formats),
        )

    # -- models --------------------------------------------------------------------------------
    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[conv.model_info(e) for e in self.repository.entries()])

    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        entry = self.repository.entry(request.model)
        info = conv.model_info(entry)
        if request.version:
            validate_name(request.version, "version")
            versions = [v for v in info.versions if v.version == request.version]
            if not versions:
                raise ModelNotFound(f"model {request.model!r} has no version {request.version!r}")
            del info.versions[:]
            info.versions.extend(versions)
        return info

    # -- predict -------------------------------------------------------------------------------
    def Predict(
        self, request: pb.PredictRequest, context: grpc.ServicerContext
    ) -> pb.PredictResponse:
        with rctx.bind(request_context(context)) as ctx:
            return self._predict(request, ctx)

    def PredictStream(
        self, requests: Iterator[pb.PredictRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.PredictResponse]:
        ctx = request_context(context)
        for request in _bounded(requests, self.settings.max_stream_images):
            with rctx.bind(_child(ctx)) as child:
                yield self._predict(request, child)

    def _predict(self, request: pb.PredictRequest, ctx: rctx.RequestContext) -> pb.PredictResponse:
        start = time.perf_counter()
        model = self.repository.get(request.model, request.version)
        top_k = request.top_k if request.HasField("top_k") else 5
        if not 1 <= top_k <= MAX_TOP_K:
            raise InvalidInput(f"top_k {top_k} must be between 1 and {MAX_TOP_K}")
        t0 = time.perf_counter()
        image = conv.model_image(request.image, model, self.limits)
        decode_s = time.perf_counter() - t0
        probs = model.predict(image[None])[0]
        order = np.argsort(-probs, kind="stable")[: min(top_k, model.num_classes)]
        return pb.PredictResponse(
            model=model.name,
            version=model.version,
            classes=[conv.class_score(model, int(i), float(probs[i])) for i in order],
            timings=_timings(start, decode_s, ctx),
            request_id=request.request_id,
        )

    # -- explain -------------------------------------------------------------------------------
    def Explain(
        self, request: pb.ExplainRequest, context: grpc.ServicerContext
    ) -> pb.ExplainResponse:
        with rctx.bind(request_context(context)) as ctx:
            return self._explain(request, ctx)

    def ExplainStream(
        self, requests: Iterator[pb.ExplainRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ExplainResponse]:
        ctx = request_context(context)
        for request in _bounded(requests, self.settings.max_stream_images):
            with rctx.bind(_child(ctx)) as child:
                yield self._explain(request, child)

    def resolve_method(
        self, model: Model, params: pb.MethodParams, field: str = "method"
    ) -> ResolvedMethod:
        name, message = conv.method_of(params, field)
        set_method_label(name)
        spec = get_method(name)
        if not model.supports(spec):
            raise Unimplemented(
                f"method {name!r} needs the torch backend, which model {model.name!r} does not have"
            )
        parsed: Any = params_from_mapping(
            spec.params_type, conv.message_to_mapping(message), f"{name}."
        )
        seed: int | None = None
        if "seed" in {f.name for f in dataclasses.fields(spec.params_type)}:
            seed = parsed.seed if parsed.seed is not None else secrets.randbits(32)
            parsed = dataclasses.replace(parsed, seed=seed)
        cost = int(spec.cost(parsed, model.input_size))
        if cost > self.settings.max_forward_passes:
            raise LimitExceeded(
                f"method {name!r} with these parameters needs {cost} forward passes, over the "
                f"per-request limit of {self.settings.max_forward_passes} (max_forward_passes): "
                "use a larger stride, fewer samples or fewer steps"
            )
        return ResolvedMethod(spec, parsed, params_to_dict(parsed), seed)

    def resolve_target(
        self, model: Model, image: np.ndarray, target: pb.ClassRef, contrast: pb.ClassRef | None
    ) -> tuple[Target, np.ndarray | None]:
        index = conv.resolve_class(target, model, "target")
        contrast_index = None
        probs = None
        if contrast is not None and contrast.WhichOneof("ref") is not None:
            contrast_index = conv.resolve_class(contrast, model, "contrast")
        if index is None or (contrast is not None and contrast.WhichOneof("ref") == "predicted"):
            probs = model.predict(image[None])[0]
            predicted = int(np.argmax(probs))
            index = predicted if index is None else index
            if contrast is not None and contrast.WhichOneof("ref") == "predicted":
                contrast_index = predicted
        return Target(index=index, contrast=contrast_index), probs

    def _explain(self, request: pb.ExplainRequest, ctx: rctx.RequestContext) -> pb.ExplainResponse:
        start = time.perf_counter()
        model = self.repository.get(request.model, request.version)
        method = self.resolve_method(model, request.method)
        t0 = time.perf_counter()
        image = conv.model_image(request.image, model, self.limits)
        decode_s = time.perf_counter() - t0
        target, probs = self.resolve_target(model, image, request.target, request.contrast)
        t1 = time.perf_counter()
        explanation = method.spec.explain(model, image, target, method.params)
        method_s = time.perf_counter() - t1
        ctx.check()
        if probs is None and (
            explanation.target_probability is None or target.contrast is not None
        ):
            probs = model.predict(image[None])[0]
        return self._explain_response(
            request,
            model,
            method,
            target,
            explanation,
            probs,
            _timings(start, decode_s, ctx, method_s),
            ctx,
        )

    def _explain_response(
        self,
        request: pb.ExplainRequest,
        model: Model,
        method: ResolvedMethod,
        target: Target,
        explanation: Explanation,
        probs: np.ndarray | None,
        timings: pb.Timings,
        ctx: rctx.RequestContext,
    ) -> pb.ExplainResponse:
        p_target = explanation.target_probability
        if probs is not None:
            p_target = float(probs[target.index])
        response = pb.ExplainResponse(
            heatmap=conv.tensor_to_proto(_finite(explanation.heatmap, "heatmap")),
            signed=bool(explanation.signed),
            target=conv.class_score(model, target.index, float(p_target or 0.0)),
            forward_passes=ctx.forward_passes,
            timings=timings,
            provenance=conv.provenance(
                model, method.spec.name, method.params_dict, method.seed, _backend(method.spec)
            ),
            method=method.spec.name,
            request_id=request.request_id,
        )
        if target.contrast is not None and probs is not None:
            response.contrast.CopyFrom(
                conv.class_score(model, target.contrast, float(probs[target.contrast]))
            )
        for key, value in explanation.maps.items():
            response.maps[key].CopyFrom(conv.tensor_to_proto(np.asarray(value)))
        for key, number in explanation.values.items():
            response.values[key] = float(number)
        return response

    # -- score ---------------------------------------------------------------------------------
    def Score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        with rctx.bind(request_context(context)) as ctx:
            from xaiserve.api.scoring import score

            return score(self, request, ctx)

    # -- operations ----------------------------------------------------------------------------
    def EvaluateDataset(
        self, requests: Iterator[pb.EvaluateDatasetRequest], context: grpc.ServicerContext
    ) -> pb.Operation:
        from xaiserve.api.operations_api import start_dataset_evaluation

        return start_dataset_evaluation(self, requests)

    def FitGad(
        self, requests: Iterator[pb.FitGadRequest], context: grpc.ServicerContext
    ) -> pb.Operation:
        from xaiserve.api.gad_api import start_gad_fit

        return start_gad_fit(self, requests)

    def GetOperation(
        self, request: pb.OperationRequest, context: grpc.ServicerContext
    ) -> pb.Operation:
        return self.operations.get(request.id).to_proto()

    def WatchOperation(
        self, request: pb.OperationRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Operation]:
        for snapshot in self.operations.watch(request.id, context.is_active):
            yield snapshot.to_proto()

    def CancelOperation(
        self, request: pb.OperationRequest, context: grpc.ServicerContext
    ) -> pb.Operation:
        return self.operations.cancel(request.id).to_proto()

    def ListOperations(
        self, request: pb.ListOperationsRequest, context: grpc.ServicerContext
    ) -> pb.ListOperationsResponse:
        return pb.ListOperationsResponse(
            operations=[op.to_proto() for op in self.operations.list()]
        )


def _backend(spec: MethodSpec) -> str:
    return "onnx" if spec.backend == "blackbox" else "torch"


def _finite(array: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(array, dtype=np.float32)
    if not np.isfinite(arr).all():
        log.warning("%s had non-finite values; replaced by 0", what)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    return arr


def _timings(
    start: float, decode_s: float, ctx: rctx.RequestContext, method_s: float = 0.0
) -> pb.Timings:
    return pb.Timings(
        total_seconds=time.perf_counter() - start,
        decode_seconds=decode_s,
        method_seconds=method_s,
        inference_seconds=ctx.inference_seconds,
        queue_seconds=ctx.queue_seconds,
    )


def _child(parent: rctx.RequestContext) -> rctx.RequestContext:
    """A per-item context on a stream: the stream's deadline and cancellation, own counters."""
    return rctx.RequestContext(deadline=parent.deadline, cancelled=parent.cancelled)


def _bounded(items: Iterable[Any], limit: int) -> Iterator[Any]:
    for i, item in enumerate(items):
        if i >= limit:
            raise LimitExceeded(f"a stream may carry at most {limit} items (max_stream_images)")
        yield item
