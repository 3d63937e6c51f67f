"""The asyncio SDK: :class:`AsyncExplainClient`, the same surface as
:class:`~xaiserve_client.client.ExplainClient` on ``grpc.aio``.

Example::

    async with AsyncExplainClient("localhost:50051") as client:
        explanation = await client.explain("cat.png", method="saliency")
        async for e in client.explain_many(paths, method="saliency"):
            ...
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from xaiserve_client.builders import (
    DEFAULT_METHOD,
    ClassInput,
    LabelledInput,
    class_ref,
    evaluate_config,
    evaluate_requests,
    explain_request,
    fit_gad_config,
    fit_gad_requests,
    method_params,
    predict_request,
    score_request,
)
from xaiserve_client.channel import (
    DEFAULT,
    DEFAULT_TARGET,
    Timeout,
    auth_metadata,
    channel_credentials,
    channel_options,
    trace_metadata,
)
from xaiserve_client.errors import NotFound, Unavailable, XaiserveError, from_rpc_error
from xaiserve_client.images import ImageInput
from xaiserve_client.types import Explanation, ModelInfo, Operation, Prediction, ScoreResult
from xaiserve_client.v1 import explain_pb2 as pb
from xaiserve_client.v1 import explain_pb2_grpc as pb_grpc

T = TypeVar("T")
Images = Iterable[ImageInput] | AsyncIterable[ImageInput]
"""Images for the streaming calls: a plain or an async iterable."""


async def _aiter(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


class AsyncExplainClient:
    """An asyncio client of the xaiserve ``ExplainService``; use it with ``async with``.

    Arguments as for :class:`~xaiserve_client.client.ExplainClient` (including
    ``dns:///host:port`` targets balanced round-robin, e.g. over a Kubernetes headless
    Service). Every method is a coroutine, except the streaming ones
    (:meth:`predict_many`, :meth:`explain_many`, :meth:`watch_operation`), which are async
    iterators.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = 60.0,
        tls: bool = False,
        root_certificates: bytes | None = None,
        client_certificate: tuple[bytes, bytes] | None = None,
        token: str | None = None,
        retries: int = 3,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        self.timeout = timeout
        credentials = channel_credentials(tls, root_certificates, client_certificate)
        opts = channel_options(target, retries, options)
        self._channel = (
            grpc.aio.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=opts)
        )
        self._stub = pb_grpc.ExplainServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = auth_metadata(token)
        self._default_model: str | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the channel (pending calls are cancelled)."""
        await self._channel.close(grace=None)

    async def __aenter__(self) -> AsyncExplainClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncExplainClient({self.target!r})"

    # -- plumbing ---------------------------------------------------------------------------

    def _deadline(self, timeout: Timeout) -> float | None:
        return self.timeout if timeout is DEFAULT else timeout  # type: ignore[return-value]

    async def _unary(self, rpc: Callable[..., Any], request: Any, timeout: Timeout) -> Any:
        try:
            return await rpc(
                request, timeout=self._deadline(timeout), metadata=self._metadata + trace_metadata()
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    async def _stream(
        self,
        rpc: Callable[..., Any],
        requests: AsyncIterator[Any],
        convert: Callable[[Any], T],
        max_in_flight: int,
        timeout: Timeout,
    ) -> AsyncIterator[T]:
        """Run a bidirectional stream with at most ``max_in_flight`` unanswered requests."""
        window = asyncio.Semaphore(max(1, max_in_flight))
        failures: list[BaseException] = []

        async def feed() -> AsyncIterator[Any]:
            try:
                async for request in requests:
                    await window.acquire()
                    yield request
            except Exception as exc:  # a bad input: raised in the caller's task below
                failures.append(exc)

        call = rpc(
            feed(), timeout=self._deadline(timeout), metadata=self._metadata + trace_metadata()
        )
        try:
            async for response in call:
                window.release()
                yield convert(response)
        except grpc.RpcError as err:
            if failures:
                raise failures[0] from None
            raise from_rpc_error(err) from err
        finally:
            call.cancel()
        if failures:
            raise failures[0]

    async def _model(self, model: str | None) -> str:
        if model:
            return model
        if self._default_model is None:
            models = await self.list_models()
            if not models:
                raise NotFound("the server lists no models", grpc.StatusCode.NOT_FOUND)
            self._default_model = models[0].name
        return self._default_model

    # -- models -----------------------------------------------------------------------------

    async def list_models(self, *, timeout: Timeout = DEFAULT) -> list[ModelInfo]:
        """Every model the server serves, with versions, inputs and supported methods."""
        response = await self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [ModelInfo.from_proto(m) for m in response.models]

    async def get_model(
        self, name: str, version: str = "", *, timeout: Timeout = DEFAULT
    ) -> ModelInfo:
        """One model (all its versions, or just ``version``)."""
        request = pb.GetModelRequest(model=name, version=version)
        return ModelInfo.from_proto(await self._unary(self._stub.GetModel, request, timeout))

    # -- predict ----------------------------------------------------------------------------

    async def predict(
        self,
        image: ImageInput,
        model: str | None = None,
        *,
        version: str = "",
        top_k: int | None = 5,
        timeout: Timeout = DEFAULT,
    ) -> Prediction:
        """The ``top_k`` most probable classes of ``image``, best first."""
        request = predict_request(image, await self._model(model), version, top_k)
        return Prediction.from_proto(await self._unary(self._stub.Predict, request, timeout))

    async def predict_many(
        self,
        images: Images,
        model: str | None = None,
        *,
        version: str = "",
        top_k: int | None = 5,
        max_in_flight: int = 16,
        timeout: Timeout = DEFAULT,
    ) -> AsyncIterator[Prediction]:
        """Predictions for many images over one stream, yielded in input order."""
        name = await self._model(model)

        async def requests() -> AsyncIterator[pb.PredictRequest]:
            i = 0
            async for image in _aiter(images):
                yield predict_request(image, name, version, top_k, str(i))
                i += 1

        stream = self._stream(
            self._stub.PredictStream, requests(), Prediction.from_proto, max_in_flight, timeout
        )
        async for prediction in stream:
            yield prediction

    # -- explain ----------------------------------------------------------------------------

    async def explain(
        self,
        image: ImageInput,
        method: str = DEFAULT_METHOD,
        model: str | None = None,
        *,
        version: str = "",
        target: ClassInput = None,
        contrast: ClassInput = None,
        params: Mapping[str, Any] | None = None,
        timeout: Timeout = DEFAULT,
        **method_kwargs: Any,
    ) -> Explanation:
        """A heatmap explaining ``target`` (default: the predicted class) for ``image``."""
        request = explain_request(
            image,
            await self._model(model),
            version,
            method_params(method, {**(params or {}), **method_kwargs}),
            target,
            contrast,
        )
        return Explanation.from_proto(await self._unary(self._stub.Explain, request, timeout))

    async def explain_many(
        self,
        images: Images,
        method: str = DEFAULT_METHOD,
        model: str | None = None,
        *,
        version: str = "",
        target: ClassInput = None,
        contrast: ClassInput = None,
        params: Mapping[str, Any] | None = None,
        max_in_flight: int = 8,
        timeout: Timeout = DEFAULT,
        **method_kwargs: Any,
    ) -> AsyncIterator[Explanation]:
        """Explanations of many images over one stream, yielded in input order."""
        params_message = method_params(method, {**(params or {}), **method_kwargs})
        class_ref(target, "target")  # bad targets fail here, not inside the stream
        class_ref(contrast, "contrast")
        name = await self._model(model)

        async def requests() -> AsyncIterator[pb.ExplainRequest]:
            i = 0
            async for image in _aiter(images):
                yield explain_request(
                    image, name, version, params_message, target, contrast, str(i)
                )
                i += 1

        stream = self._stream(
            self._stub.ExplainStream, requests(), Explanation.from_proto, max_in_flight, timeout
        )
        async for explanation in stream:
            yield explanation

    # -- score ------------------------------------------------------------------------------

    async def score(
        self,
        image: ImageInput,
        model: str | None = None,
        *,
        heatmap: Any = None,
        method: str | None = None,
        params: Mapping[str, Any] | None = None,
        target: ClassInput = None,
        morf: Mapping[str, Any] | None = None,
        mask: Any = None,
        hull_keep_fraction: float | None = None,
        randomisation: Mapping[str, Any] | None = None,
        version: str = "",
        timeout: Timeout = DEFAULT,
    ) -> ScoreResult:
        """MoRF/LeRF region perturbation and AOPC of a heatmap (see ``ExplainClient.score``)."""
        request = score_request(
            image,
            await self._model(model),
            version,
            heatmap=heatmap,
            method=method,
            params=params,
            target=target,
            morf=morf,
            mask=mask,
            hull_keep_fraction=hull_keep_fraction,
            randomisation=randomisation,
        )
        return ScoreResult.from_proto(await self._unary(self._stub.Score, request, timeout))

    # -- long-running operations -----------------------------------------------------------

    async def evaluate_dataset(
        self,
        items: Iterable[LabelledInput] = (),
        model: str | None = None,
        *,
        methods: Sequence[str] | Mapping[str, Mapping[str, Any]] = (DEFAULT_METHOD,),
        morf: Mapping[str, Any] | None = None,
        dataset: str = "",
        limit: int | None = None,
        randomisation: Mapping[str, Any] | None = None,
        version: str = "",
        timeout: Timeout = DEFAULT,
    ) -> Operation:
        """Start evaluating ``methods`` over labelled images; returns the operation."""
        config = evaluate_config(
            await self._model(model), version, methods, morf, dataset, limit, randomisation
        )
        requests = evaluate_requests(config, items)
        return Operation.from_proto(
            await self._unary(self._stub.EvaluateDataset, requests, timeout)
        )

    async def fit_gad(
        self,
        items: Iterable[LabelledInput] = (),
        model: str | None = None,
        *,
        class_a: ClassInput,
        class_b: ClassInput,
        dataset: str = "",
        alphas: Sequence[float] = (),
        epochs: int | None = None,
        learning_rate: float | None = None,
        batch_size: int | None = None,
        seed: int | None = None,
        version: str = "",
        timeout: Timeout = DEFAULT,
    ) -> Operation:
        """Start fitting a GAD support set separating ``class_a`` from ``class_b``."""
        config = fit_gad_config(
            await self._model(model),
            version,
            class_a,
            class_b,
            dataset=dataset or None,
            alphas=list(alphas) or None,
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            seed=seed,
        )
        requests = fit_gad_requests(config, items)
        return Operation.from_proto(await self._unary(self._stub.FitGad, requests, timeout))

    async def get_operation(self, operation_id: str, *, timeout: Timeout = DEFAULT) -> Operation:
        """The operation's current state."""
        request = pb.OperationRequest(id=operation_id)
        return Operation.from_proto(await self._unary(self._stub.GetOperation, request, timeout))

    async def cancel_operation(self, operation_id: str, *, timeout: Timeout = DEFAULT) -> Operation:
        """Ask the server to cancel the operation; returns its state after the request."""
        request = pb.OperationRequest(id=operation_id)
        return Operation.from_proto(await self._unary(self._stub.CancelOperation, request, timeout))

    async def list_operations(self, *, timeout: Timeout = DEFAULT) -> list[Operation]:
        """Every operation the server knows."""
        response = await self._unary(self._stub.ListOperations, pb.ListOperationsRequest(), timeout)
        return [Operation.from_proto(o) for o in response.operations]

    async def watch_operation(
        self, operation_id: str, *, timeout: float | None = None
    ) -> AsyncIterator[Operation]:
        """The operation's state on every change, until it finishes (no deadline by default)."""
        call = self._stub.WatchOperation(
            pb.OperationRequest(id=operation_id),
            timeout=timeout,
            metadata=self._metadata + trace_metadata(),
        )
        try:
            async for message in call:
                yield Operation.from_proto(message)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        finally:
            call.cancel()

    async def wait_operation(
        self,
        operation_id: str,
        *,
        timeout: float | None = None,
        on_update: Callable[[Operation], None] | None = None,
    ) -> Operation:
        """Wait until the operation finishes; ``on_update`` sees every state on the way."""
        last = await self.get_operation(operation_id)
        if last.finished:
            return last
        async for last in self.watch_operation(operation_id, timeout=timeout):
            if on_update is not None:
                on_update(last)
            if last.finished:
                break
        return last

    # -- health -----------------------------------------------------------------------------

    async def health(self, service: str = "", *, timeout: Timeout = DEFAULT) -> str:
        """The ``grpc.health.v1`` status name, e.g. ``"SERVING"``."""
        request = health_pb2.HealthCheckRequest(service=service)
        response = await self._unary(self._health.Check, request, timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    async def wait_for_server(self, timeout: float = 30.0, service: str = "") -> None:
        """Poll :meth:`health` until ``SERVING``; raises :class:`Unavailable` after ``timeout``."""
        end = time.monotonic() + timeout
        status, reason = "UNKNOWN", ""
        while True:
            left = end - time.monotonic()
            try:
                status = await self.health(service, timeout=max(0.1, min(2.0, left)))
                if status == "SERVING":
                    return
            except XaiserveError as err:
                reason = err.details
            if left <= 0:
                raise Unavailable(
                    f"server at {self.target} not SERVING after {timeout:g} s (status {status}"
                    f"{'; ' + reason if reason else ''})"
                )
            await asyncio.sleep(min(0.2, max(0.0, end - time.monotonic())))
