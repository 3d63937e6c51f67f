"""xaiserve_client: the Python SDK and the ``xaiserve`` command of the xaiserve service.

- :class:`ExplainClient` (synchronous) and :class:`AsyncExplainClient` (asyncio) call the
  service; results are typed dataclasses with numpy arrays (:mod:`xaiserve_client.types`).
- Failed calls raise :class:`XaiserveError` subclasses (:mod:`xaiserve_client.errors`).
- :mod:`xaiserve_client.images` converts image inputs and draws heatmap overlays.
- :mod:`xaiserve_client.v1` holds the generated gRPC stubs; :func:`protos_dir` the ``.proto``
  files they come from.
"""

from pathlib import Path

from xaiserve_client.aio import AsyncExplainClient
from xaiserve_client.client import ExplainClient
from xaiserve_client.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    XaiserveError,
)
from xaiserve_client.types import (
    ClassScore,
    Explanation,
    InputSpec,
    Localisation,
    ModelInfo,
    ModelVersion,
    Operation,
    Prediction,
    ScoreResult,
    Timings,
)

__version__ = "0.1.0"


def protos_dir() -> Path:
    """The folder holding the service's ``.proto`` files (``xaiserve/v1/explain.proto``), shipped
    in this package for clients in other languages: pass it to ``protoc -I``."""
    return Path(__file__).resolve().parent / "protos"


__all__ = [
    "AsyncExplainClient",
    "Cancelled",
    "ClassScore",
    "DeadlineExceeded",
    "ExplainClient",
    "Explanation",
    "FailedPrecondition",
    "InputSpec",
    "Internal",
    "InvalidArgument",
    "Localisation",
    "ModelInfo",
    "ModelVersion",
    "NotFound",
    "Operation",
    "PermissionDenied",
    "Prediction",
    "ResourceExhausted",
    "ScoreResult",
    "Timings",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "XaiserveError",
    "protos_dir",
]
