"""The transport-free use cases: explain, predict, score and start operations.

The core works on domain types only — an undecoded request image
(:class:`~xaiserve.imaging.decode.ImageInput`), a class reference (:class:`ClassRef`), method
parameters as a plain mapping (:class:`MethodChoice`) — and returns domain results. It owns
what the service decides rather than what a method computes: drawing seeds, the cost check
against ``max_forward_passes``, target resolution (which may run a prediction), probability
backfill, decoding the image once and fitting it onto the model's grid. ``api/`` converts
protobuf to these types and the results back; nothing here imports gRPC or protobuf.
"""

from xaiserve.core.catalog import get_model, list_models
from xaiserve.core.explain import ExplainInput, ExplainResult, explain
from xaiserve.core.operations import (
    DatasetEvaluationInput,
    GadFitInput,
    StreamedItem,
    start_dataset_evaluation,
    start_gad_fit,
)
from xaiserve.core.predict import PredictInput, Prediction, predict
from xaiserve.core.score import ScoreInput, ScoreResult, score
from xaiserve.core.services import Services
from xaiserve.core.types import ClassRef, ClassScore, MethodChoice, Provenance, Timings

__all__ = [
    "ClassRef",
    "ClassScore",
    "DatasetEvaluationInput",
    "ExplainInput",
    "ExplainResult",
    "GadFitInput",
    "MethodChoice",
    "PredictInput",
    "Prediction",
    "Provenance",
    "ScoreInput",
    "ScoreResult",
    "Services",
    "StreamedItem",
    "Timings",
    "explain",
    "get_model",
    "list_models",
    "predict",
    "score",
    "start_dataset_evaluation",
    "start_gad_fit",
]
