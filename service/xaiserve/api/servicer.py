"""``xaiserve.v1.ExplainService``: every RPC converts its request, calls the core, converts the
result. No algorithm and no service decision lives here (see :mod:`xaiserve.core`)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from xaiserve import core
from xaiserve.api import converters as conv
from xaiserve.api.interceptors import set_method_label
from xaiserve.api.owners import Owners
from xaiserve.api.streams import bounded, child, config_then_items, request_context
from xaiserve.config import Settings
from xaiserve.jobs.operations import OperationStore
from xaiserve.models.repository import ModelRepository
from xaiserve.runtime import context as rctx
from xaiserve_client.v1 import explain_pb2 as pb
from xaiserve_client.v1 import explain_pb2_grpc as pb_grpc


class ExplainServicer(pb_grpc.ExplainServiceServicer):
    def __init__(
        self,
        settings: Settings,
        repository: ModelRepository,
        operations: OperationStore,
        owners: Owners | None = None,
    ) -> None:
        self.services = core.Services(settings, repository, operations, set_method_label)
        self.owners = owners or Owners(auth=False, admin_tokens=[])

    # -- models --------------------------------------------------------------------------------
    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        entries = core.list_models(self.services)
        return pb.ListModelsResponse(models=[conv.model_info(e) for e in entries])

    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        return conv.model_info(core.get_model(self.services, request.model, request.version))

    # -- predict -------------------------------------------------------------------------------
    def Predict(
        self, request: pb.PredictRequest, context: grpc.ServicerContext
    ) -> pb.PredictResponse:
        with rctx.bind(request_context(context, interactive=True)):
            result = core.predict(self.services, conv.predict_input(request))
            return conv.predict_response(result, request.request_id)

    def PredictStream(
        self, requests: Iterator[pb.PredictRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.PredictResponse]:
        ctx = request_context(context, interactive=True)
        for request in bounded(requests, self.services.settings.max_stream_images):
            with rctx.bind(child(ctx)):
                result = core.predict(self.services, conv.predict_input(request))
                yield conv.predict_response(result, request.request_id)

    # -- explain -------------------------------------------------------------------------------
    def Explain(
        self, request: pb.ExplainRequest, context: grpc.ServicerContext
    ) -> pb.ExplainResponse:
        with rctx.bind(request_context(context)):
            result = core.explain(self.services, conv.explain_input(request))
            return conv.explain_response(result, request.request_id)

    def ExplainStream(
        self, requests: Iterator[pb.ExplainRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ExplainResponse]:
        ctx = request_context(context)
        for request in bounded(requests, self.services.settings.max_stream_images):
            with rctx.bind(child(ctx)):
                result = core.explain(self.services, conv.explain_input(request))
                yield conv.explain_response(result, request.request_id)

    # -- score ---------------------------------------------------------------------------------
    def Score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        with rctx.bind(request_context(context)):
            return conv.score_response(core.score(self.services, conv.score_input(request)))

    # -- operations ----------------------------------------------------------------------------
    def EvaluateDataset(
        self, requests: Iterator[pb.EvaluateDatasetRequest], context: grpc.ServicerContext
    ) -> pb.Operation:
        config, items = config_then_items(requests, "EvaluateDatasetRequest")
        owner = self.owners.creator(context)
        evaluation = conv.dataset_evaluation_input(config)
        op = core.start_dataset_evaluation(
            self.services, evaluation, conv.streamed_items(items), owner=owner
        )
        return conv.operation(op)

    def FitGad(
        self, requests: Iterator[pb.FitGadRequest], context: grpc.ServicerContext
    ) -> pb.Operation:
        config, items = config_then_items(requests, "FitGadRequest")
        owner = self.owners.creator(context)
        fit = conv.gad_fit_input(config)
        op = core.start_gad_fit(self.services, fit, conv.streamed_items(items), owner=owner)
        return conv.operation(op)

    def GetOperation(
        self, request: pb.OperationRequest, context: grpc.ServicerContext
    ) -> pb.Operation:
        scope = self.owners.scope(context)
        return conv.operation(self.services.operations.get(request.id, scope))

    def WatchOperation(
        self, request: pb.OperationRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Operation]:
        scope = self.owners.scope(context)
        for snapshot in self.services.operations.watch(request.id, context.is_active, scope):
            yield conv.operation(snapshot)

    def CancelOperation(
        self, request: pb.OperationRequest, context: grpc.ServicerContext
    ) -> pb.Operation:
        scope = self.owners.scope(context)
        return conv.operation(self.services.operations.cancel(request.id, scope))

    def ListOperations(
        self, request: pb.ListOperationsRequest, context: grpc.ServicerContext
    ) -> pb.ListOperationsResponse:
        page = self.services.operations.list(
            self.owners.scope(context), request.page_size, request.page_token
        )
        return pb.ListOperationsResponse(
            operations=[conv.operation(op) for op in page.operations],
            next_page_token=page.next_token,
        )
