"""The synchronous SDK: :class:`ExplainClient`.

Example::

    from xaiserve_client import ExplainClient

    with ExplainClient("localhost:50051") as client:
        explanation = client.explain("cat.png", method="saliency")
        explanation.save_png("cat-saliency.png", image="cat.png")

Requests are built by :mod:`xaiserve_client.builders`; channels by :mod:`xaiserve_client.channel`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
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
    method_names,
    method_params,
    predict_request,
    score_request,
)
from xaiserve_client.channel import (
    DEFAULT,
    DEFAULT_TARGET,
    SERVICE_NAME,
    Timeout,
    auth_metadata,
    channel_credentials,
    channel_options,
    service_config,
    trace_metadata,
)
from xaiserve_client.errors import (
    NotFound,
    Unavailable,
    XaiserveError,
    from_rpc_error,
)
from xaiserve_client.images import ImageInput
from xaiserve_client.types import (
    Explanation,
    ModelInfo,
    Operation,
    Prediction,
    ScoreResult,
)
from xaiserve_client.v1 import explain_pb2 as pb
from xaiserve_client.v1 import explain_pb2_grpc as pb_grpc

T = TypeVar("T")

if TYPE_CHECKING:
    from xaiserve_client.compare import Comparison

# Names other modules imported from here before the split; kept importable from this module.
__all__ = [
    "DEFAULT",
    "DEFAULT_METHOD",
    "DEFAULT_TARGET",
    "SERVICE_NAME",
    "ClassInput",
    "ExplainClient",
    "LabelledInput",
    "Timeout",
    "class_ref",
    "method_names",
    "method_params",
    "score_request",
    "service_config",
]


# ---------------------------------------------------------------------------------------------
# Client


class ExplainClient:
    """A synchronous client of the xaiserve ``ExplainService``; use it as a context manager.

    Args:
        target: ``host:port``, or ``dns:///host:port`` to spread calls over every address
            the name resolves to (round-robin) — e.g. a Kubernetes headless Service.
        timeout: default deadline in seconds of every call (``None``: no deadline); each
            method takes ``timeout=`` to override it.
        tls: use TLS (implied by ``root_certificates`` or ``client_certificate``).
        root_certificates: PEM CA bundle to verify the server (default: system roots).
        client_certificate: ``(certificate_chain_pem, private_key_pem)`` for mutual TLS.
        token: bearer token sent as ``authorization: Bearer <token>`` on every call.
        retries: extra attempts, with exponential backoff (0.1 s … 1 s), for calls that fail
            with UNAVAILABLE; other codes are never retried. gRPC caps attempts at 5.
        options: extra gRPC channel arguments (they win over the client's own).
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
            grpc.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.insecure_channel(target, options=opts)
        )
        self._stub = pb_grpc.ExplainServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = auth_metadata(token)
        self._default_model: str | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel (pending calls are cancelled)."""
        self._channel.close()

    def __enter__(self) -> ExplainClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ExplainClient({self.target!r})"

    # -- plumbing ---------------------------------------------------------------------------

    def _deadline(self, timeout: Timeout) -> float | None:
        return self.timeout if timeout is DEFAULT else timeout  # type: ignore[return-value]

    def _unary(self, rpc: Callable[..., Any], request: Any, timeout: Timeout) -> Any:
        try:
            return rpc(
                request, timeout=self._deadline(timeout), metadata=self._metadata + trace_metadata()
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def _stream(
        self,
        rpc: Callable[..., Any],
        requests: Iterator[Any],
        convert: Callable[[Any], T],
        max_in_flight: int,
        timeout: Timeout,
    ) -> Iterator[T]:
        """Run a bidirectional stream with at most ``max_in_flight`` unanswered requests."""
        window = threading.Semaphore(max(1, max_in_flight))
        stop = threading.Event()
        failures: list[BaseException] = []

        def feed() -> Iterator[Any]:
            try:
                for request in requests:
                    while not window.acquire(timeout=0.05):
                        if stop.is_set():
                            return
                    if stop.is_set():
                        return
                    yield request
            except Exception as exc:  # a bad input: raised in the caller's thread below
                failures.append(exc)

        call = rpc(
            feed(), timeout=self._deadline(timeout), metadata=self._metadata + trace_metadata()
        )
        try:
            for response in call:
                window.release()
                yield convert(response)
        except grpc.RpcError as err:
            if failures:
                raise failures[0] from None
            raise from_rpc_error(err) from err
        finally:
            stop.set()
            call.cancel()
        if failures:
            raise failures[0]

    def _model(self, model: str | None) -> str:
        if model:
            return model
        if self._default_model is None:
            models = self.list_models()
            if not models:
                raise NotFound("the server lists no models", grpc.StatusCode.NOT_FOUND)
            self._default_model = models[0].name
        return self._default_model

    # -- models -----------------------------------------------------------------------------

    def list_models(self, *, timeout: Timeout = DEFAULT) -> list[ModelInfo]:
        """Every model the server serves, with versions, inputs and supported methods."""
        response = self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [ModelInfo.from_proto(m) for m in response.models]

    def get_model(self, name: str, version: str = "", *, timeout: Timeout = DEFAULT) -> ModelInfo:
        """One model (all its versions, or just ``version``)."""
        request = pb.GetModelRequest(model=name, version=version)
        return ModelInfo.from_proto(self._unary(self._stub.GetModel, request, timeout))

    # -- predict ----------------------------------------------------------------------------

    def predict(
        self,
        image: ImageInput,
        model: str | None = None,
        *,
        version: str = "",
        top_k: int | None = 5,
        timeout: Timeout = DEFAULT,
    ) -> Prediction:
        """The ``top_k`` most probable classes of ``image``, best first."""
        request = predict_request(image, self._model(model), version, top_k)
        return Prediction.from_proto(self._unary(self._stub.Predict, request, timeout))

    def predict_many(
        self,
        images: Iterable[ImageInput],
        model: str | None = None,
        *,
        version: str = "",
        top_k: int | None = 5,
        max_in_flight: int = 16,
        timeout: Timeout = DEFAULT,
    ) -> Iterator[Prediction]:
        """Predictions for many images over one stream, yielded in input order.

        ``images`` is consumed lazily; at most ``max_in_flight`` requests await an answer.
        ``timeout`` bounds the whole stream.
        """
        name = self._model(model)
        requests = (
            predict_request(image, name, version, top_k, str(i)) for i, image in enumerate(images)
        )
        return self._stream(
            self._stub.PredictStream, requests, Prediction.from_proto, max_in_flight, timeout
        )

    # -- explain ----------------------------------------------------------------------------

    def explain(
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
        """A heatmap explaining ``target`` (default: the predicted class) for ``image``.

        Method parameters come from ``params`` and/or keyword arguments, by the field names of
        the method's params message (nested dicts for nested messages), e.g.
        ``client.explain(img, "contextual_importance", segmentation={"n_segments": 50})``.
        ``contrast`` asks "why ``target`` and not ``contrast``" where the method supports it.
        """
        request = explain_request(
            image,
            self._model(model),
            version,
            method_params(method, {**(params or {}), **method_kwargs}),
            target,
            contrast,
        )
        return Explanation.from_proto(self._unary(self._stub.Explain, request, timeout))

    def explain_many(
        self,
        images: Iterable[ImageInput],
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
    ) -> Iterator[Explanation]:
        """Explanations of many images over one stream, yielded in input order.

        The same method, parameters and target apply to every image. ``images`` is consumed
        lazily; at most ``max_in_flight`` requests await an answer. ``timeout`` bounds the
        whole stream. Stopping the iteration early cancels the stream.
        """
        name = self._model(model)
        params_message = method_params(method, {**(params or {}), **method_kwargs})
        class_ref(target, "target")  # bad targets fail here, not inside the stream
        class_ref(contrast, "contrast")
        requests = (
            explain_request(image, name, version, params_message, target, contrast, str(i))
            for i, image in enumerate(images)
        )
        return self._stream(
            self._stub.ExplainStream, requests, Explanation.from_proto, max_in_flight, timeout
        )

    def compare(self, image: ImageInput, model: str | None = None, **kwargs: Any) -> Comparison:
        """Every method (default: all the model supports) side by side on ``image``, each
        scored with MoRF/AOPC; see :func:`xaiserve_client.compare.compare` for the options.
        The result renders ``.figure()``, ``.save_png()``, ``.to_html()`` and ``.save_json()``."""
        from xaiserve_client.compare import compare

        return compare(self, image, model, **kwargs)

    # -- score ------------------------------------------------------------------------------

    def score(
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
        """MoRF/LeRF region perturbation and AOPC of a heatmap.

        Pass either ``heatmap`` (an ``(H, W)`` array on the model's grid, from any source) or
        ``method`` (with ``params``) to compute it in the call. ``morf`` sets the perturbation
        (``window``, ``steps``, ``fill``, ``repeats``, ``seed``, ``lerf``, ``random_baseline``);
        ``mask`` (``(H, W)`` bool) adds localisation metrics. ``randomisation`` (a mapping, ``{}``
        for the defaults; keys ``stops``, ``seed``) adds the model-parameter randomisation test
        of ``method`` (Adebayo et al. 2018): ``result.randomisation``.
        """
        request = score_request(
            image,
            self._model(model),
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
        return ScoreResult.from_proto(self._unary(self._stub.Score, request, timeout))

    # -- long-running operations -----------------------------------------------------------

    def evaluate_dataset(
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
        """Start evaluating ``methods`` over labelled images; returns the operation.

        Stream ``items`` (see :data:`LabelledInput`), or name a server-side ``dataset`` folder.
        ``methods`` is a list of names or a mapping name → params. Follow progress with
        :meth:`watch_operation` or :meth:`wait_operation`. ``randomisation`` (``{}`` for the
        defaults) adds each method's randomisation test, averaged per stop (the result's
        ``randomisation`` key).
        """
        config = evaluate_config(
            self._model(model), version, methods, morf, dataset, limit, randomisation
        )
        requests = evaluate_requests(config, items)
        return Operation.from_proto(self._unary(self._stub.EvaluateDataset, requests, timeout))

    def fit_gad(
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
            self._model(model),
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
        return Operation.from_proto(self._unary(self._stub.FitGad, requests, timeout))

    def get_operation(self, operation_id: str, *, timeout: Timeout = DEFAULT) -> Operation:
        """The operation's current state."""
        request = pb.OperationRequest(id=operation_id)
        return Operation.from_proto(self._unary(self._stub.GetOperation, request, timeout))

    def cancel_operation(self, operation_id: str, *, timeout: Timeout = DEFAULT) -> Operation:
        """Ask the server to cancel the operation; returns its state after the request."""
        request = pb.OperationRequest(id=operation_id)
        return Operation.from_proto(self._unary(self._stub.CancelOperation, request, timeout))

    def list_operations(self, *, timeout: Timeout = DEFAULT) -> list[Operation]:
        """Every operation the server knows."""
        response = self._unary(self._stub.ListOperations, pb.ListOperationsRequest(), timeout)
        return [Operation.from_proto(o) for o in response.operations]

    def watch_operation(
        self, operation_id: str, *, timeout: float | None = None
    ) -> Iterator[Operation]:
        """The operation's state on every change, until it finishes.

        Operations run long, so the watch has no deadline unless ``timeout`` is given.
        """
        call = self._stub.WatchOperation(
            pb.OperationRequest(id=operation_id),
            timeout=timeout,
            metadata=self._metadata + trace_metadata(),
        )
        try:
            for message in call:
                yield Operation.from_proto(message)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        finally:
            call.cancel()

    def wait_operation(
        self,
        operation_id: str,
        *,
        timeout: float | None = None,
        on_update: Callable[[Operation], None] | None = None,
    ) -> Operation:
        """Block until the operation finishes; ``on_update`` sees every state on the way."""
        last = self.get_operation(operation_id)
        if last.finished:
            return last
        for last in self.watch_operation(operation_id, timeout=timeout):
            if on_update is not None:
                on_update(last)
            if last.finished:
                break
        return last

    # -- health -----------------------------------------------------------------------------

    def health(self, service: str = "", *, timeout: Timeout = DEFAULT) -> str:
        """The ``grpc.health.v1`` status: ``"SERVING"``, ``"NOT_SERVING"``, ``"UNKNOWN"`` or
        ``"SERVICE_UNKNOWN"`` (``service=""`` asks about the whole server)."""
        request = health_pb2.HealthCheckRequest(service=service)
        response = self._unary(self._health.Check, request, timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def wait_for_server(self, timeout: float = 30.0, service: str = "") -> None:
        """Poll :meth:`health` until ``SERVING``; raises :class:`Unavailable` after ``timeout``."""
        end = time.monotonic() + timeout
        status, reason = "UNKNOWN", ""
        while True:
            left = end - time.monotonic()
            try:
                status = self.health(service, timeout=max(0.1, min(2.0, left)))
                if status == "SERVING":
                    return
            except XaiserveError as err:
                reason = err.details
            if left <= 0:
                raise Unavailable(
                    f"server at {self.target} not SERVING after {timeout:g} s (status {status}"
                    f"{'; ' + reason if reason else ''})"
                )
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))
