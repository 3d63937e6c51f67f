import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "tensor")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    tensor: Tensor
    def __init__(self, encoded: _Optional[bytes] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ClassRef(_message.Message):
    __slots__ = ("index", "label", "predicted")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_FIELD_NUMBER: _ClassVar[int]
    index: int
    label: str
    predicted: bool
    def __init__(self, index: _Optional[int] = ..., label: _Optional[str] = ..., predicted: _Optional[bool] = ...) -> None: ...

class ClassScore(_message.Message):
    __slots__ = ("index", "label", "probability")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    index: int
    label: str
    probability: float
    def __init__(self, index: _Optional[int] = ..., label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("total_seconds", "decode_seconds", "method_seconds", "inference_seconds", "queue_seconds")
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DECODE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    METHOD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    total_seconds: float
    decode_seconds: float
    method_seconds: float
    inference_seconds: float
    queue_seconds: float
    def __init__(self, total_seconds: _Optional[float] = ..., decode_seconds: _Optional[float] = ..., method_seconds: _Optional[float] = ..., inference_seconds: _Optional[float] = ..., queue_seconds: _Optional[float] = ...) -> None: ...

class Provenance(_message.Message):
    __slots__ = ("model", "version", "model_sha256", "method", "parameters", "seed", "xaiserve_version", "backend")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    XAISERVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    model_sha256: str
    method: str
    parameters: _struct_pb2.Struct
    seed: int
    xaiserve_version: str
    backend: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., model_sha256: _Optional[str] = ..., method: _Optional[str] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., seed: _Optional[int] = ..., xaiserve_version: _Optional[str] = ..., backend: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class InputSpec(_message.Message):
    __slots__ = ("height", "width", "layout", "channel_order", "resize", "value_range", "mean", "std", "input_name")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ORDER_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    VALUE_RANGE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    INPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    layout: str
    channel_order: str
    resize: str
    value_range: _containers.RepeatedScalarFieldContainer[float]
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    input_name: str
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., layout: _Optional[str] = ..., channel_order: _Optional[str] = ..., resize: _Optional[str] = ..., value_range: _Optional[_Iterable[float]] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., input_name: _Optional[str] = ...) -> None: ...

class ModelVersionInfo(_message.Message):
    __slots__ = ("version", "state", "error", "sha256", "input", "labels", "output_kind", "backends", "providers", "methods", "max_batch_size", "description", "inference_workers", "intra_op_threads")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[ModelVersionInfo.State]
        READY: _ClassVar[ModelVersionInfo.State]
        FAILED: _ClassVar[ModelVersionInfo.State]
        LOADING: _ClassVar[ModelVersionInfo.State]
    STATE_UNSPECIFIED: ModelVersionInfo.State
    READY: ModelVersionInfo.State
    FAILED: ModelVersionInfo.State
    LOADING: ModelVersionInfo.State
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_KIND_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_WORKERS_FIELD_NUMBER: _ClassVar[int]
    INTRA_OP_THREADS_FIELD_NUMBER: _ClassVar[int]
    version: str
    state: ModelVersionInfo.State
    error: str
    sha256: str
    input: InputSpec
    labels: _containers.RepeatedScalarFieldContainer[str]
    output_kind: str
    backends: _containers.RepeatedScalarFieldContainer[str]
    providers: _containers.RepeatedScalarFieldContainer[str]
    methods: _containers.RepeatedScalarFieldContainer[str]
    max_batch_size: int
    description: str
    inference_workers: int
    intra_op_threads: int
    def __init__(self, version: _Optional[str] = ..., state: _Optional[_Union[ModelVersionInfo.State, str]] = ..., error: _Optional[str] = ..., sha256: _Optional[str] = ..., input: _Optional[_Union[InputSpec, _Mapping]] = ..., labels: _Optional[_Iterable[str]] = ..., output_kind: _Optional[str] = ..., backends: _Optional[_Iterable[str]] = ..., providers: _Optional[_Iterable[str]] = ..., methods: _Optional[_Iterable[str]] = ..., max_batch_size: _Optional[int] = ..., description: _Optional[str] = ..., inference_workers: _Optional[int] = ..., intra_op_threads: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "versions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersionInfo]
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[ModelVersionInfo, _Mapping]]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "version", "image", "top_k", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    image: Image
    top_k: int
    request_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., top_k: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model", "version", "classes", "timings", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    classes: _containers.RepeatedCompositeFieldContainer[ClassScore]
    timings: Timings
    request_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., classes: _Optional[_Iterable[_Union[ClassScore, _Mapping]]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model", "version", "image", "target", "contrast", "method", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CONTRAST_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    image: Image
    target: ClassRef
    contrast: ClassRef
    method: MethodParams
    request_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., target: _Optional[_Union[ClassRef, _Mapping]] = ..., contrast: _Optional[_Union[ClassRef, _Mapping]] = ..., method: _Optional[_Union[MethodParams, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class MethodParams(_message.Message):
    __slots__ = ("regional_prediction_difference", "pixelwise_prediction_difference", "contextual_importance", "lrp", "saliency", "deconvolution", "gradient_times_input", "guided_backprop", "integrated_gradients", "smoothgrad", "gad")
    REGIONAL_PREDICTION_DIFFERENCE_FIELD_NUMBER: _ClassVar[int]
    PIXELWISE_PREDICTION_DIFFERENCE_FIELD_NUMBER: _ClassVar[int]
    CONTEXTUAL_IMPORTANCE_FIELD_NUMBER: _ClassVar[int]
    LRP_FIELD_NUMBER: _ClassVar[int]
    SALIENCY_FIELD_NUMBER: _ClassVar[int]
    DECONVOLUTION_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_TIMES_INPUT_FIELD_NUMBER: _ClassVar[int]
    GUIDED_BACKPROP_FIELD_NUMBER: _ClassVar[int]
    INTEGRATED_GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    SMOOTHGRAD_FIELD_NUMBER: _ClassVar[int]
    GAD_FIELD_NUMBER: _ClassVar[int]
    regional_prediction_difference: RegionalPredictionDifferenceParams
    pixelwise_prediction_difference: PixelwisePredictionDifferenceParams
    contextual_importance: ContextualImportanceParams
    lrp: LrpParams
    saliency: SaliencyParams
    deconvolution: DeconvolutionParams
    gradient_times_input: GradientTimesInputParams
    guided_backprop: GuidedBackpropParams
    integrated_gradients: IntegratedGradientsParams
    smoothgrad: SmoothGradParams
    gad: GadParams
    def __init__(self, regional_prediction_difference: _Optional[_Union[RegionalPredictionDifferenceParams, _Mapping]] = ..., pixelwise_prediction_difference: _Optional[_Union[PixelwisePredictionDifferenceParams, _Mapping]] = ..., contextual_importance: _Optional[_Union[ContextualImportanceParams, _Mapping]] = ..., lrp: _Optional[_Union[LrpParams, _Mapping]] = ..., saliency: _Optional[_Union[SaliencyParams, _Mapping]] = ..., deconvolution: _Optional[_Union[DeconvolutionParams, _Mapping]] = ..., gradient_times_input: _Optional[_Union[GradientTimesInputParams, _Mapping]] = ..., guided_backprop: _Optional[_Union[GuidedBackpropParams, _Mapping]] = ..., integrated_gradients: _Optional[_Union[IntegratedGradientsParams, _Mapping]] = ..., smoothgrad: _Optional[_Union[SmoothGradParams, _Mapping]] = ..., gad: _Optional[_Union[GadParams, _Mapping]] = ...) -> None: ...

class SegmentationParams(_message.Message):
    __slots__ = ("algorithm", "n_segments", "compactness", "sigma", "scale", "min_size", "kernel_size", "max_dist", "ratio", "slic_zero", "nested")
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    N_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    COMPACTNESS_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    KERNEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_DIST_FIELD_NUMBER: _ClassVar[int]
    RATIO_FIELD_NUMBER: _ClassVar[int]
    SLIC_ZERO_FIELD_NUMBER: _ClassVar[int]
    NESTED_FIELD_NUMBER: _ClassVar[int]
    algorithm: str
    n_segments: int
    compactness: float
    sigma: float
    scale: float
    min_size: int
    kernel_size: float
    max_dist: float
    ratio: float
    slic_zero: bool
    nested: bool
    def __init__(self, algorithm: _Optional[str] = ..., n_segments: _Optional[int] = ..., compactness: _Optional[float] = ..., sigma: _Optional[float] = ..., scale: _Optional[float] = ..., min_size: _Optional[int] = ..., kernel_size: _Optional[float] = ..., max_dist: _Optional[float] = ..., ratio: _Optional[float] = ..., slic_zero: _Optional[bool] = ..., nested: _Optional[bool] = ...) -> None: ...

class RegionalPredictionDifferenceParams(_message.Message):
    __slots__ = ("scales", "segmentation", "sigma_squared", "prior_segments", "evidence", "clip_negative", "seed", "return_scale_maps", "bandwidth", "laplace_train_size")
    SCALES_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    SIGMA_SQUARED_FIELD_NUMBER: _ClassVar[int]
    PRIOR_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    CLIP_NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RETURN_SCALE_MAPS_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_FIELD_NUMBER: _ClassVar[int]
    LAPLACE_TRAIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    scales: int
    segmentation: SegmentationParams
    sigma_squared: float
    prior_segments: int
    evidence: str
    clip_negative: bool
    seed: int
    return_scale_maps: bool
    bandwidth: float
    laplace_train_size: int
    def __init__(self, scales: _Optional[int] = ..., segmentation: _Optional[_Union[SegmentationParams, _Mapping]] = ..., sigma_squared: _Optional[float] = ..., prior_segments: _Optional[int] = ..., evidence: _Optional[str] = ..., clip_negative: _Optional[bool] = ..., seed: _Optional[int] = ..., return_scale_maps: _Optional[bool] = ..., bandwidth: _Optional[float] = ..., laplace_train_size: _Optional[int] = ...) -> None: ...

class PixelwisePredictionDifferenceParams(_message.Message):
    __slots__ = ("inner_size", "outer_size", "samples", "stride", "evidence", "clip_negative", "seed", "laplace_train_size")
    INNER_SIZE_FIELD_NUMBER: _ClassVar[int]
    OUTER_SIZE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    CLIP_NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LAPLACE_TRAIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    inner_size: int
    outer_size: int
    samples: int
    stride: int
    evidence: str
    clip_negative: bool
    seed: int
    laplace_train_size: int
    def __init__(self, inner_size: _Optional[int] = ..., outer_size: _Optional[int] = ..., samples: _Optional[int] = ..., stride: _Optional[int] = ..., evidence: _Optional[str] = ..., clip_negative: _Optional[bool] = ..., seed: _Optional[int] = ..., laplace_train_size: _Optional[int] = ...) -> None: ...

class ContextualImportanceParams(_message.Message):
    __slots__ = ("segmentation", "fill", "utility_fills", "absmin", "absmax", "threshold", "output", "seed", "blur_sigma")
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    FILL_FIELD_NUMBER: _ClassVar[int]
    UTILITY_FILLS_FIELD_NUMBER: _ClassVar[int]
    ABSMIN_FIELD_NUMBER: _ClassVar[int]
    ABSMAX_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BLUR_SIGMA_FIELD_NUMBER: _ClassVar[int]
    segmentation: SegmentationParams
    fill: str
    utility_fills: _containers.RepeatedScalarFieldContainer[str]
    absmin: float
    absmax: float
    threshold: float
    output: str
    seed: int
    blur_sigma: float
    def __init__(self, segmentation: _Optional[_Union[SegmentationParams, _Mapping]] = ..., fill: _Optional[str] = ..., utility_fills: _Optional[_Iterable[str]] = ..., absmin: _Optional[float] = ..., absmax: _Optional[float] = ..., threshold: _Optional[float] = ..., output: _Optional[str] = ..., seed: _Optional[int] = ..., blur_sigma: _Optional[float] = ...) -> None: ...

class LrpRuleOverride(_message.Message):
    __slots__ = ("layer_type", "position", "layer_name", "rule")
    LAYER_TYPE_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    LAYER_NAME_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    layer_type: str
    position: int
    layer_name: str
    rule: str
    def __init__(self, layer_type: _Optional[str] = ..., position: _Optional[int] = ..., layer_name: _Optional[str] = ..., rule: _Optional[str] = ...) -> None: ...

class LrpParams(_message.Message):
    __slots__ = ("composite", "rules", "epsilon", "flat_layers", "merge_batchnorm", "low", "high")
    COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    FLAT_LAYERS_FIELD_NUMBER: _ClassVar[int]
    MERGE_BATCHNORM_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    composite: str
    rules: _containers.RepeatedCompositeFieldContainer[LrpRuleOverride]
    epsilon: float
    flat_layers: int
    merge_batchnorm: bool
    low: float
    high: float
    def __init__(self, composite: _Optional[str] = ..., rules: _Optional[_Iterable[_Union[LrpRuleOverride, _Mapping]]] = ..., epsilon: _Optional[float] = ..., flat_layers: _Optional[int] = ..., merge_batchnorm: _Optional[bool] = ..., low: _Optional[float] = ..., high: _Optional[float] = ...) -> None: ...

class SaliencyParams(_message.Message):
    __slots__ = ("channel_norm",)
    CHANNEL_NORM_FIELD_NUMBER: _ClassVar[int]
    channel_norm: str
    def __init__(self, channel_norm: _Optional[str] = ...) -> None: ...

class DeconvolutionParams(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GradientTimesInputParams(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GuidedBackpropParams(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IntegratedGradientsParams(_message.Message):
    __slots__ = ("steps", "baseline", "internal_batch_size", "integration", "seed")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    INTEGRATION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    steps: int
    baseline: str
    internal_batch_size: int
    integration: str
    seed: int
    def __init__(self, steps: _Optional[int] = ..., baseline: _Optional[str] = ..., internal_batch_size: _Optional[int] = ..., integration: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class SmoothGradParams(_message.Message):
    __slots__ = ("samples", "noise_level", "base_method", "variant", "seed")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NOISE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    BASE_METHOD_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    samples: int
    noise_level: float
    base_method: str
    variant: str
    seed: int
    def __init__(self, samples: _Optional[int] = ..., noise_level: _Optional[float] = ..., base_method: _Optional[str] = ..., variant: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class GadParams(_message.Message):
    __slots__ = ("support_set", "base_method", "keep_fraction", "steps")
    SUPPORT_SET_FIELD_NUMBER: _ClassVar[int]
    BASE_METHOD_FIELD_NUMBER: _ClassVar[int]
    KEEP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    support_set: str
    base_method: str
    keep_fraction: float
    steps: int
    def __init__(self, support_set: _Optional[str] = ..., base_method: _Optional[str] = ..., keep_fraction: _Optional[float] = ..., steps: _Optional[int] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("heatmap", "signed", "target", "contrast", "forward_passes", "timings", "maps", "values", "provenance", "method", "request_id")
    class MapsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CONTRAST_FIELD_NUMBER: _ClassVar[int]
    FORWARD_PASSES_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    MAPS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    heatmap: Tensor
    signed: bool
    target: ClassScore
    contrast: ClassScore
    forward_passes: int
    timings: Timings
    maps: _containers.MessageMap[str, Tensor]
    values: _containers.ScalarMap[str, float]
    provenance: Provenance
    method: str
    request_id: str
    def __init__(self, heatmap: _Optional[_Union[Tensor, _Mapping]] = ..., signed: _Optional[bool] = ..., target: _Optional[_Union[ClassScore, _Mapping]] = ..., contrast: _Optional[_Union[ClassScore, _Mapping]] = ..., forward_passes: _Optional[int] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., maps: _Optional[_Mapping[str, Tensor]] = ..., values: _Optional[_Mapping[str, float]] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ..., method: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class MorfParams(_message.Message):
    __slots__ = ("window", "steps", "fill", "repeats", "seed", "lerf", "random_baseline")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    FILL_FIELD_NUMBER: _ClassVar[int]
    REPEATS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LERF_FIELD_NUMBER: _ClassVar[int]
    RANDOM_BASELINE_FIELD_NUMBER: _ClassVar[int]
    window: int
    steps: int
    fill: str
    repeats: int
    seed: int
    lerf: bool
    random_baseline: bool
    def __init__(self, window: _Optional[int] = ..., steps: _Optional[int] = ..., fill: _Optional[str] = ..., repeats: _Optional[int] = ..., seed: _Optional[int] = ..., lerf: _Optional[bool] = ..., random_baseline: _Optional[bool] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("model", "version", "image", "target", "heatmap", "method", "morf", "mask", "hull_keep_fraction", "randomisation")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MORF_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    HULL_KEEP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    RANDOMISATION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    image: Image
    target: ClassRef
    heatmap: Tensor
    method: MethodParams
    morf: MorfParams
    mask: Tensor
    hull_keep_fraction: float
    randomisation: RandomisationOptions
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., target: _Optional[_Union[ClassRef, _Mapping]] = ..., heatmap: _Optional[_Union[Tensor, _Mapping]] = ..., method: _Optional[_Union[MethodParams, _Mapping]] = ..., morf: _Optional[_Union[MorfParams, _Mapping]] = ..., mask: _Optional[_Union[Tensor, _Mapping]] = ..., hull_keep_fraction: _Optional[float] = ..., randomisation: _Optional[_Union[RandomisationOptions, _Mapping]] = ...) -> None: ...

class RandomisationOptions(_message.Message):
    __slots__ = ("stops", "seed")
    STOPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    stops: int
    seed: int
    def __init__(self, stops: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class RandomisationPoint(_message.Message):
    __slots__ = ("depth", "layer", "spearman_abs", "spearman_signed", "ssim", "hog")
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    SPEARMAN_ABS_FIELD_NUMBER: _ClassVar[int]
    SPEARMAN_SIGNED_FIELD_NUMBER: _ClassVar[int]
    SSIM_FIELD_NUMBER: _ClassVar[int]
    HOG_FIELD_NUMBER: _ClassVar[int]
    depth: int
    layer: str
    spearman_abs: float
    spearman_signed: float
    ssim: float
    hog: float
    def __init__(self, depth: _Optional[int] = ..., layer: _Optional[str] = ..., spearman_abs: _Optional[float] = ..., spearman_signed: _Optional[float] = ..., ssim: _Optional[float] = ..., hog: _Optional[float] = ...) -> None: ...

class Randomisation(_message.Message):
    __slots__ = ("method", "total_layers", "seed", "points", "summary", "full_randomisation", "distribution", "notes", "images")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LAYERS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    FULL_RANDOMISATION_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    method: str
    total_layers: int
    seed: int
    points: _containers.RepeatedCompositeFieldContainer[RandomisationPoint]
    summary: float
    full_randomisation: bool
    distribution: str
    notes: _containers.RepeatedScalarFieldContainer[str]
    images: int
    def __init__(self, method: _Optional[str] = ..., total_layers: _Optional[int] = ..., seed: _Optional[int] = ..., points: _Optional[_Iterable[_Union[RandomisationPoint, _Mapping]]] = ..., summary: _Optional[float] = ..., full_randomisation: _Optional[bool] = ..., distribution: _Optional[str] = ..., notes: _Optional[_Iterable[str]] = ..., images: _Optional[int] = ...) -> None: ...

class Localisation(_message.Message):
    __slots__ = ("mu", "mu_weighted", "object_fraction", "thresholds", "precision", "recall", "f_measure")
    MU_FIELD_NUMBER: _ClassVar[int]
    MU_WEIGHTED_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    F_MEASURE_FIELD_NUMBER: _ClassVar[int]
    mu: float
    mu_weighted: float
    object_fraction: float
    thresholds: _containers.RepeatedScalarFieldContainer[float]
    precision: _containers.RepeatedScalarFieldContainer[float]
    recall: _containers.RepeatedScalarFieldContainer[float]
    f_measure: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, mu: _Optional[float] = ..., mu_weighted: _Optional[float] = ..., object_fraction: _Optional[float] = ..., thresholds: _Optional[_Iterable[float]] = ..., precision: _Optional[_Iterable[float]] = ..., recall: _Optional[_Iterable[float]] = ..., f_measure: _Optional[_Iterable[float]] = ...) -> None: ...

class Complexity(_message.Message):
    __slots__ = ("png_bytes", "entropy")
    PNG_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    png_bytes: float
    entropy: float
    def __init__(self, png_bytes: _Optional[float] = ..., entropy: _Optional[float] = ...) -> None: ...

class ConvexHull(_message.Message):
    __slots__ = ("area_ratio", "sensitivity")
    AREA_RATIO_FIELD_NUMBER: _ClassVar[int]
    SENSITIVITY_FIELD_NUMBER: _ClassVar[int]
    area_ratio: float
    sensitivity: float
    def __init__(self, area_ratio: _Optional[float] = ..., sensitivity: _Optional[float] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("morf_curve", "lerf_curve", "random_curve", "aopc_morf", "aopc_lerf", "aopc_random", "aopc_morf_minus_random", "area_between_lerf_morf", "forward_passes", "timings", "heatmap", "localisation", "complexity", "convex_hull", "provenance", "target", "randomisation")
    MORF_CURVE_FIELD_NUMBER: _ClassVar[int]
    LERF_CURVE_FIELD_NUMBER: _ClassVar[int]
    RANDOM_CURVE_FIELD_NUMBER: _ClassVar[int]
    AOPC_MORF_FIELD_NUMBER: _ClassVar[int]
    AOPC_LERF_FIELD_NUMBER: _ClassVar[int]
    AOPC_RANDOM_FIELD_NUMBER: _ClassVar[int]
    AOPC_MORF_MINUS_RANDOM_FIELD_NUMBER: _ClassVar[int]
    AREA_BETWEEN_LERF_MORF_FIELD_NUMBER: _ClassVar[int]
    FORWARD_PASSES_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    LOCALISATION_FIELD_NUMBER: _ClassVar[int]
    COMPLEXITY_FIELD_NUMBER: _ClassVar[int]
    CONVEX_HULL_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    RANDOMISATION_FIELD_NUMBER: _ClassVar[int]
    morf_curve: _containers.RepeatedScalarFieldContainer[float]
    lerf_curve: _containers.RepeatedScalarFieldContainer[float]
    random_curve: _containers.RepeatedScalarFieldContainer[float]
    aopc_morf: float
    aopc_lerf: float
    aopc_random: float
    aopc_morf_minus_random: float
    area_between_lerf_morf: float
    forward_passes: int
    timings: Timings
    heatmap: Tensor
    localisation: Localisation
    complexity: Complexity
    convex_hull: ConvexHull
    provenance: Provenance
    target: ClassScore
    randomisation: Randomisation
    def __init__(self, morf_curve: _Optional[_Iterable[float]] = ..., lerf_curve: _Optional[_Iterable[float]] = ..., random_curve: _Optional[_Iterable[float]] = ..., aopc_morf: _Optional[float] = ..., aopc_lerf: _Optional[float] = ..., aopc_random: _Optional[float] = ..., aopc_morf_minus_random: _Optional[float] = ..., area_between_lerf_morf: _Optional[float] = ..., forward_passes: _Optional[int] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., heatmap: _Optional[_Union[Tensor, _Mapping]] = ..., localisation: _Optional[_Union[Localisation, _Mapping]] = ..., complexity: _Optional[_Union[Complexity, _Mapping]] = ..., convex_hull: _Optional[_Union[ConvexHull, _Mapping]] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ..., target: _Optional[_Union[ClassScore, _Mapping]] = ..., randomisation: _Optional[_Union[Randomisation, _Mapping]] = ...) -> None: ...

class LabelledImage(_message.Message):
    __slots__ = ("image", "label", "mask", "name")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    image: Image
    label: ClassRef
    mask: Tensor
    name: str
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., label: _Optional[_Union[ClassRef, _Mapping]] = ..., mask: _Optional[_Union[Tensor, _Mapping]] = ..., name: _Optional[str] = ...) -> None: ...

class EvaluateDatasetConfig(_message.Message):
    __slots__ = ("model", "version", "methods", "morf", "dataset", "limit", "randomisation")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    MORF_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    RANDOMISATION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    methods: _containers.RepeatedCompositeFieldContainer[MethodParams]
    morf: MorfParams
    dataset: str
    limit: int
    randomisation: RandomisationOptions
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., methods: _Optional[_Iterable[_Union[MethodParams, _Mapping]]] = ..., morf: _Optional[_Union[MorfParams, _Mapping]] = ..., dataset: _Optional[str] = ..., limit: _Optional[int] = ..., randomisation: _Optional[_Union[RandomisationOptions, _Mapping]] = ...) -> None: ...

class EvaluateDatasetRequest(_message.Message):
    __slots__ = ("config", "item")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    config: EvaluateDatasetConfig
    item: LabelledImage
    def __init__(self, config: _Optional[_Union[EvaluateDatasetConfig, _Mapping]] = ..., item: _Optional[_Union[LabelledImage, _Mapping]] = ...) -> None: ...

class FitGadConfig(_message.Message):
    __slots__ = ("model", "version", "class_a", "class_b", "dataset", "alphas", "epochs", "learning_rate", "batch_size", "seed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLASS_A_FIELD_NUMBER: _ClassVar[int]
    CLASS_B_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    ALPHAS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    class_a: ClassRef
    class_b: ClassRef
    dataset: str
    alphas: _containers.RepeatedScalarFieldContainer[float]
    epochs: int
    learning_rate: float
    batch_size: int
    seed: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., class_a: _Optional[_Union[ClassRef, _Mapping]] = ..., class_b: _Optional[_Union[ClassRef, _Mapping]] = ..., dataset: _Optional[str] = ..., alphas: _Optional[_Iterable[float]] = ..., epochs: _Optional[int] = ..., learning_rate: _Optional[float] = ..., batch_size: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class FitGadRequest(_message.Message):
    __slots__ = ("config", "item")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    config: FitGadConfig
    item: LabelledImage
    def __init__(self, config: _Optional[_Union[FitGadConfig, _Mapping]] = ..., item: _Optional[_Union[LabelledImage, _Mapping]] = ...) -> None: ...

class OperationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListOperationsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListOperationsResponse(_message.Message):
    __slots__ = ("operations", "next_page_token")
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    operations: _containers.RepeatedCompositeFieldContainer[Operation]
    next_page_token: str
    def __init__(self, operations: _Optional[_Iterable[_Union[Operation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class OperationError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Operation(_message.Message):
    __slots__ = ("id", "kind", "state", "done", "total", "message", "progress", "item_result", "result", "error", "created", "updated")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Operation.State]
        PENDING: _ClassVar[Operation.State]
        RUNNING: _ClassVar[Operation.State]
        SUCCEEDED: _ClassVar[Operation.State]
        FAILED: _ClassVar[Operation.State]
        CANCELLED: _ClassVar[Operation.State]
    STATE_UNSPECIFIED: Operation.State
    PENDING: Operation.State
    RUNNING: Operation.State
    SUCCEEDED: Operation.State
    FAILED: Operation.State
    CANCELLED: Operation.State
    class ProgressEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ITEM_RESULT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    state: Operation.State
    done: int
    total: int
    message: str
    progress: _containers.ScalarMap[str, float]
    item_result: _struct_pb2.Struct
    result: _struct_pb2.Struct
    error: OperationError
    created: _timestamp_pb2.Timestamp
    updated: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[_Union[Operation.State, str]] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., message: _Optional[str] = ..., progress: _Optional[_Mapping[str, float]] = ..., item_result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., error: _Optional[_Union[OperationError, _Mapping]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
