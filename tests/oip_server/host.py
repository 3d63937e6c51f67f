"""A real Open Inference Protocol server for the tests: KServe's gRPC servicer and data plane
hosting ONNX files through onnxruntime. Runs in its own venv (see requirements.txt).

    python host.py --control DIR [--port 0] [--token T] [--tls-cert F --tls-key F] [--threads N]
        NAME=MODEL.onnx ...

Prints ``PORT <n>`` once serving. Test hooks, all outside KServe's code path:
- ``DIR/<name>.mode`` (read on every request): ``normal``, ``wrong_shape``, ``wrong_dtype``,
  ``slow <seconds>``, ``not_ready``, ``error``;
- ``DIR/calls.jsonl``: one line per ModelInfer with the metadata the server saw (traceparent,
  authorization), the time the client left it (its deadline) and the input shape;
- ``--token``: ModelInfer/ModelReady/ModelMetadata need ``authorization: Bearer <token>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
from grpc import aio
from kserve import Model
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.protocol.model_repository_extension import ModelRepositoryExtension

NP_TO_OIP = {np.dtype("float32"): "FP32", np.dtype("float64"): "FP64", np.dtype("int64"): "INT64"}


class OnnxModel(Model):
    def __init__(self, name: str, path: Path, control: Path, threads: int) -> None:
        super().__init__(name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0]
        self.output = self.session.get_outputs()[0]
        self.control = control
        self.ready = True

    def mode(self) -> str:
        try:
            return (self.control / f"{self.name}.mode").read_text().strip() or "normal"
        except FileNotFoundError:
            return "normal"

    async def healthy(self) -> bool:
        return self.mode() != "not_ready"

    def _dims(self, shape: list) -> list[int]:
        return [d if isinstance(d, int) else -1 for d in shape]

    def get_input_types(self) -> list[dict]:
        return [
            {"name": self.input.name, "datatype": "FP32", "shape": self._dims(self.input.shape)}
        ]

    def get_output_types(self) -> list[dict]:
        return [
            {"name": self.output.name, "datatype": "FP32", "shape": self._dims(self.output.shape)}
        ]

    async def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
        mode = self.mode()
        if mode.startswith("slow"):
            await asyncio.sleep(float(mode.split()[1]))
        if mode == "error":
            raise RuntimeError("the test asked this model to fail")
        x = payload.inputs[0].as_numpy()
        (y,) = await asyncio.to_thread(self.session.run, [self.output.name], {self.input.name: x})
        if mode == "wrong_shape":
            y = y[:, :-1]
        elif mode == "wrong_dtype":
            y = np.round(y).astype(np.int64)
        out = InferOutput(self.output.name, list(y.shape), NP_TO_OIP[y.dtype])
        out.set_data_from_numpy(y, binary_data=True)
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=[out])


class RecordingServicer(InferenceServicer):
    """KServe's servicer; each ModelInfer is also written to calls.jsonl."""

    def __init__(self, data_plane: DataPlane, ext: ModelRepositoryExtension, calls: Path) -> None:
        super().__init__(data_plane, ext)
        self.calls = calls

    async def ModelInfer(self, request, context):  # type: ignore[no-untyped-def]
        seen = {m.key: m.value for m in context.invocation_metadata()}
        record = {
            "model": request.model_name,
            "traceparent": seen.get("traceparent", ""),
            "authorization": seen.get("authorization", ""),
            "time_remaining": context.time_remaining(),
            "shape": [list(t.shape) for t in request.inputs],
        }
        with self.calls.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        return await super().ModelInfer(request, context)


class BearerToken(aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self.expected = f"Bearer {token}"

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        seen = dict(details.invocation_metadata or ())
        if seen.get("authorization") == self.expected:
            return await continuation(details)

        async def deny(request, context):  # type: ignore[no-untyped-def]
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        return grpc.unary_unary_rpc_method_handler(deny)


async def serve(args: argparse.Namespace) -> None:
    control = Path(args.control)
    registry = ModelRepository()
    for spec in args.models:
        name, _, path = spec.partition("=")
        registry.update(OnnxModel(name, Path(path), control, args.threads))
    data_plane = DataPlane(model_registry=registry)
    interceptors: list[aio.ServerInterceptor] = [ExceptionToStatusInterceptor()]
    if args.token:
        interceptors.insert(0, BearerToken(args.token))
    server = aio.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=interceptors,
        options=[
            ("grpc.max_send_message_length", 1 << 30),
            ("grpc.max_receive_message_length", 1 << 30),
        ],
    )
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        RecordingServicer(data_plane, ModelRepositoryExtension(registry), control / "calls.jsonl"),
        server,
    )
    address = f"127.0.0.1:{args.port}"
    if args.tls_cert:
        creds = grpc.ssl_server_credentials(
            [(Path(args.tls_key).read_bytes(), Path(args.tls_cert).read_bytes())]
        )
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    await server.start()
    print(f"PORT {port}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--control", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default="")
    parser.add_argument("--tls-cert", default="")
    parser.add_argument("--tls-key", default="")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (0 = all)")
    parser.add_argument("models", nargs="+", help="NAME=PATH.onnx")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
