"""Gradient-based explanations via captum.

- ``saliency``: sensitivity analysis (Simonyan et al. 2014), Samek et al. Sec. II-A Eq. (3):
  ``h_p = ‖(∂f/∂x_{p,c})_c‖_q`` over the colour channels, ``q ∈ {2, ∞}`` (or the ℓ1 "abs_sum").
- ``deconvolution``: Zeiler & Fergus 2014, Samek et al. Sec. II-B Eq. (5) (ReLU backward passes
  the rectified signal), pooled over channels with the ℓ2 norm as Samek et al. do.
- ``gradient_times_input``: ``x ⊙ ∂f/∂x`` (Shrikumar et al. 2016), summed over channels; equals
  LRP_z on ReLU networks without biases (Kohlbrenner et al. Sec. 2.1).
- ``guided_backprop``: Springenberg et al. 2015 (the "GB" row of Kohlbrenner et al. Table 1).
- ``integrated_gradients``: Sundararajan et al. 2017, ``(x − x') ⊙ ∫₀¹ ∂f(x' + α(x − x'))/∂x dα``;
  completeness: ``Σ attributions = f(x) − f(x')``. The baseline ``x'`` is an image-space fill
  (:mod:`xaiserve.imaging.fills`) put through the model's preprocessing.
- ``smoothgrad``: Smilkov et al. 2017 (and SmoothGrad², VarGrad), captum ``NoiseTunnel``.

Every method explains the target's raw output (logit), or ``f_t − f_c`` with a contrast class.
Gradients are taken with respect to the model's (normalised) input tensor.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Saliency,
)
from captum.attr._utils import approximation_methods as _captum_approximation
from torch import nn

from xaiserve.contracts.footprint import (
    FLOAT32,
    FLOAT64,
    TORCH_BATCH_BYTES,
    Footprint,
    image_bytes,
    torch_batch,
)
from xaiserve.errors import InvalidInput
from xaiserve.imaging.fills import FILLS, check_fill, fill_image
from xaiserve.methods.base import (
    Explanation,
    Target,
    TorchBackend,
    WhiteBoxModel,
    get_method,
    register_method,
)

ChannelNorm = Literal["l2", "linf", "abs_sum"]
Integration = Literal[
    "gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"
]
BaseMethod = Literal["saliency", "gradient_times_input", "integrated_gradients", "guided_backprop"]
Variant = Literal["smoothgrad", "smoothgrad_sq", "vargrad"]

DEFAULT_IG_BATCH = {"cpu": 10, "cuda": 64}
"""Internal batch of interpolation steps when the request leaves it 0 (per device type: on a
2-core CPU per-image cost is flat or worse above ~10 images; a GPU wants whole batches)."""

MAX_STEPS = 100_000
"""Upper bound on ``integrated_gradients.steps`` with a Riemann rule (O(steps) memory/CPU)."""

MAX_GAUSS_LEGENDRE_STEPS = 256
"""Upper bound on ``steps`` with ``integration = "gausslegendre"``: its nodes and weights come
from an eigenvalue problem on a ``steps × steps`` matrix (numpy ``leggauss``), O(steps²) memory
and O(steps³) CPU that no deadline can interrupt — 256 steps take ~0.2 s of CPU, 512 steps
~0.5 s, 2000 steps a minute. (Gauss–Legendre needs few nodes: use a Riemann rule for more.)
The nodes are computed once per step count and cached (:func:`gauss_legendre`)."""

GAUSS_LEGENDRE_PASS_EQUIVALENT = 200_000
"""``steps³`` of the Gauss–Legendre eigenproblem counted as one forward pass in the cost
estimate (256 steps ≈ 80 passes; the first request for a step count computes them)."""

MAX_SAMPLES = 10_000
"""Upper bound on ``smoothgrad.samples``."""

MAX_NOISE_LEVEL = 10.0
"""Upper bound on ``smoothgrad.noise_level`` (σ in multiples of the input's value range)."""

MAX_SEED = 2**64 - 1


@functools.lru_cache(maxsize=64)
def gauss_legendre(n: int) -> tuple[list[float], list[float]]:
    """Gauss–Legendre quadrature on [0, 1] with ``n`` nodes: ``(step_sizes, alphas)`` as
    captum uses them (weights/2 and (1 + nodes)/2), computed once per ``n``."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return (0.5 * weights).tolist(), (0.5 * (1.0 + nodes)).tolist()


def _cached_gauss_legendre_builders() -> tuple[
    Callable[[int], list[float]], Callable[[int], list[float]]
]:
    return (lambda n: list(gauss_legendre(n)[0]), lambda n: list(gauss_legendre(n)[1]))


# captum recomputes ``leggauss(n)`` twice per batch call (step sizes, then alphas); serve both
# from the cache instead (same numbers, see tests/unit/test_footprint.py).
_captum_approximation.gauss_legendre_builders = _cached_gauss_legendre_builders


def _ig_batch(requested: int, steps: int, backend: TorchBackend, size: tuple[int, int]) -> int:
    """Steps per internal batch: the client's request or the device default, capped by the
    lease's memory budget (``torch_batch_bytes``), so the client alone never decides it."""
    default = DEFAULT_IG_BATCH.get(backend.device.type, DEFAULT_IG_BATCH["cpu"])
    budget = int(getattr(backend, "batch_bytes", TORCH_BATCH_BYTES))
    return min(steps, torch_batch(budget, size, requested or default))


def _check_seed(seed: int | None, field: str) -> None:
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InvalidInput(f"{field} is {seed}; it must be in 0..2**64-1")


@dataclass
class SaliencyParams:
    """``SaliencyParams``: the channel norm of Samek et al. Eq. (3)."""

    channel_norm: ChannelNorm = "l2"


@dataclass
class DeconvolutionParams:
    """``DeconvolutionParams`` (no fields)."""


@dataclass
class GradientTimesInputParams:
    """``GradientTimesInputParams`` (no fields)."""


@dataclass
class GuidedBackpropParams:
    """``GuidedBackpropParams`` (no fields)."""


@dataclass
class IntegratedGradientsParams:
    """``IntegratedGradientsParams``; ``internal_batch_size=0`` means the server's default."""

    steps: int = 50
    baseline: str = "black"
    internal_batch_size: int = 0
    integration: Integration = "gausslegendre"
    seed: int = 0

    def __post_init__(self) -> None:
        limit = MAX_GAUSS_LEGENDRE_STEPS if self.integration == "gausslegendre" else MAX_STEPS
        if not 1 <= self.steps <= limit:
            raise InvalidInput(
                f"steps is {self.steps}; it must be in 1..{limit} with integration "
                f"{self.integration!r}"
                + (
                    " (use a riemann_* rule for more steps)"
                    if self.integration == "gausslegendre"
                    else ""
                )
            )
        if not 0 <= self.internal_batch_size <= self.steps:
            raise InvalidInput(
                f"internal_batch_size is {self.internal_batch_size}; it must be in 0..steps "
                "(0 = the server's choice; the server may batch fewer to stay in its memory budget)"
            )
        check_fill(self.baseline, "baseline")
        _check_seed(self.seed, "seed")


@dataclass
class SmoothGradParams:
    """``SmoothGradParams``: ``noise_level`` is σ as a fraction of the input's value range."""

    samples: int = 25
    noise_level: float = 0.15
    base_method: BaseMethod = "saliency"
    variant: Variant = "smoothgrad"
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise InvalidInput(f"samples is {self.samples}; it must be in 1..{MAX_SAMPLES}")
        if not 0 <= self.noise_level <= MAX_NOISE_LEVEL:
            raise InvalidInput(
                f"noise_level is {self.noise_level}; it must be in 0..{MAX_NOISE_LEVEL}"
            )
        _check_seed(self.seed, "seed")


# ---------------------------------------------------------------------------------------------
# helpers


class _Difference(nn.Module):
    """``f_t − f_c`` as a one-output module (contrastive explanations)."""

    def __init__(self, module: nn.Module, target: int, contrast: int) -> None:
        super().__init__()
        self.inner = module
        self.target = target
        self.contrast = contrast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return (out[:, self.target] - out[:, self.contrast]).unsqueeze(1)


def _explained(module: nn.Module, target: Target) -> tuple[nn.Module, int]:
    if target.contrast is None:
        return module, target.index
    return _Difference(module, target.index, target.contrast), 0


def _channel_axis(x: torch.Tensor, heat_shape: tuple[int, ...]) -> int:
    """The colour axis of the model input ``x`` given the heatmap shape ``(N, H, W)``."""
    for axis in (1, 3):
        if x.shape[axis] == 3 and tuple(np.delete(np.array(x.shape), axis)) == heat_shape:
            return axis
    raise ValueError(f"cannot find the channel axis of input shape {tuple(x.shape)}")


def channel_pool(backend: TorchBackend, grad: torch.Tensor, norm: ChannelNorm) -> np.ndarray:
    """Samek et al. Eq. (3): ``‖·‖_q`` of the gradient over the colour channels → ``(N, H, W)``."""
    if norm == "l2":
        return np.sqrt(backend.to_heatmap(grad.detach() ** 2)).astype(np.float32)
    if norm == "abs_sum":
        return backend.to_heatmap(grad.detach().abs())
    if norm == "linf":
        axis = _channel_axis(grad, backend.to_heatmap(grad).shape)
        return grad.detach().abs().amax(dim=axis).cpu().numpy().astype(np.float32)
    raise InvalidInput(f"channel_norm {norm!r} is unknown; choose l2, linf or abs_sum")


def _check_target(num_classes: int, target: Target) -> None:
    for k in (target.index, target.contrast):
        if k is not None and not 0 <= k < num_classes:
            raise InvalidInput(f"class {k} is out of range (model has {num_classes})")


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        warnings.filterwarnings("ignore", message=".*required_grads has been set automatically")
        yield


def _input(backend: TorchBackend, image: np.ndarray) -> torch.Tensor:
    return backend.to_input(image[None]).detach().requires_grad_(True)


# ---------------------------------------------------------------------------------------------
# methods


def _cost_fb(params: Any, size: tuple[int, int]) -> int:
    return 2  # one forward and one backward pass


@dataclass(frozen=True)
class CaptumWrapper:
    """A captum attribution class registered as a method: configuration, not code.

    ``attribution`` is built on the explained module and called with ``kwargs``; ``pooling``
    turns its input-space attribution into the map: ``"channel_norm"`` (Samek et al. Eq. 3 with
    the request's ``channel_norm``), ``"l2"`` (always ℓ2) or ``"sum"`` (signed channel sum).
    ``channel_sum_map`` adds the signed channel sum as ``maps["channel_sum"]``;
    ``attribution_sum`` adds ``values["attribution_sum"]``.
    """

    attribution: type[Any]
    params: type[Any]
    signed: bool
    pooling: Literal["channel_norm", "l2", "sum"]
    description: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    channel_sum_map: bool = False
    attribution_sum: bool = False


CAPTUM_WRAPPERS: dict[str, CaptumWrapper] = {
    "saliency": CaptumWrapper(
        Saliency,
        SaliencyParams,
        signed=False,
        pooling="channel_norm",
        kwargs={"abs": False},
        description="Sensitivity map, Samek et al. Eq. (3) with ``params.channel_norm``.",
    ),
    "deconvolution": CaptumWrapper(
        Deconvolution,
        DeconvolutionParams,
        signed=False,
        pooling="l2",
        channel_sum_map=True,
        description="Deconvolution (Zeiler & Fergus), ℓ2-pooled over channels (Samek et al. "
        'Sec. II-B); ``maps["channel_sum"]`` holds the signed channel sum.',
    ),
    "gradient_times_input": CaptumWrapper(
        InputXGradient,
        GradientTimesInputParams,
        signed=True,
        pooling="sum",
        attribution_sum=True,
        description="``x ⊙ ∇f(x)`` summed over channels (captum ``InputXGradient``).",
    ),
    "guided_backprop": CaptumWrapper(
        GuidedBackprop,
        GuidedBackpropParams,
        signed=True,
        pooling="sum",
        description="Guided backpropagation (Springenberg et al.), summed over channels.",
    ),
}


def _pooled(
    backend: TorchBackend, attr: torch.Tensor, wrapper: CaptumWrapper, params: Any
) -> np.ndarray:
    if wrapper.pooling == "channel_norm":
        return channel_pool(backend, attr, params.channel_norm)[0]
    if wrapper.pooling == "l2":
        return channel_pool(backend, attr, "l2")[0]
    return backend.to_heatmap(attr)[0]


def _register_captum(name: str, wrapper: CaptumWrapper) -> None:
    def explain(
        model: WhiteBoxModel, image: np.ndarray, target: Target, params: Any
    ) -> Explanation:
        _check_target(model.num_classes, target)
        maps: dict[str, np.ndarray] = {}
        with model.torch_backend() as backend, _quiet():
            fn, t = _explained(backend.module, target)
            attr = wrapper.attribution(fn).attribute(
                _input(backend, image), target=t, **wrapper.kwargs
            )
            heat = _pooled(backend, attr, wrapper, params)
            if wrapper.channel_sum_map:
                maps["channel_sum"] = backend.to_heatmap(attr)[0]
        values = {"attribution_sum": float(heat.sum())} if wrapper.attribution_sum else {}
        return Explanation(heatmap=heat, signed=wrapper.signed, maps=maps, values=values)

    explain.__name__ = explain.__qualname__ = name
    explain.__doc__ = wrapper.description
    register_method(
        name, params=wrapper.params, backend="whitebox", cost=_cost_fb, signed=wrapper.signed
    )(explain)


for _name, _wrapper in CAPTUM_WRAPPERS.items():
    _register_captum(_name, _wrapper)


def _ig_cost(params: IntegratedGradientsParams, size: tuple[int, int]) -> int:
    """Forward-pass equivalents: a forward and a backward per step, the convergence check's
    two passes, and for Gauss–Legendre the O(steps³) eigenproblem behind its nodes."""
    table = 0
    if params.integration == "gausslegendre":
        table = params.steps**3 // GAUSS_LEGENDRE_PASS_EQUIVALENT
    return 2 * params.steps + 2 + table


def _ig_memory(
    params: IntegratedGradientsParams, size: tuple[int, int], num_classes: int = 1
) -> Footprint:
    """The integration rule's table (Gauss–Legendre: the ``steps²`` float64 companion matrix and
    the eigensolver's workspace, ~3×), the per-step scalars, and the input, baseline,
    attribution and gradient sum at the input's size (the batches are under the torch budget)."""
    table = 3 * FLOAT64 * params.steps**2 if params.integration == "gausslegendre" else 0
    rest = 2 * FLOAT64 * params.steps + 6 * image_bytes(size)
    return Footprint(table + rest, "integrated_gradients.steps" if table > rest else "image")


def ig_baseline(image: np.ndarray, params: IntegratedGradientsParams) -> np.ndarray:
    """The image-space baseline ``x'`` (a fill of :mod:`xaiserve.imaging.fills`)."""
    rng = np.random.default_rng(params.seed)
    return fill_image(image, check_fill(params.baseline, "baseline"), rng)


@register_method(
    "integrated_gradients",
    params=IntegratedGradientsParams,
    backend="whitebox",
    cost=_ig_cost,
    memory=_ig_memory,
    signed=True,
)
def integrated_gradients(
    model: WhiteBoxModel, image: np.ndarray, target: Target, params: IntegratedGradientsParams
) -> Explanation:
    """Integrated gradients (Sundararajan et al.) with captum; ``values`` holds captum's
    convergence delta as ``completeness_error = Σ attributions − (f(x) − f(x'))`` and
    ``output_difference = f(x) − f(x')``."""
    _check_target(model.num_classes, target)
    base_img = ig_baseline(image, params)
    with model.torch_backend() as backend, _quiet():
        fn, t = _explained(backend.module, target)
        x = _input(backend, image)
        base = backend.to_input(base_img[None]).detach()
        attr, delta = IntegratedGradients(fn).attribute(
            x,
            baselines=base,
            target=t,
            n_steps=params.steps,
            method=params.integration,
            internal_batch_size=_ig_batch(
                params.internal_batch_size, params.steps, backend, image.shape[:2]
            ),
            return_convergence_delta=True,
        )
        heat = backend.to_heatmap(attr)[0]
    total = float(attr.detach().double().sum())
    error = float(delta.detach().double().sum())  # captum: Σ attributions − (f(x) − f(x'))
    return Explanation(
        heatmap=heat,
        signed=True,
        values={
            "completeness_error": error,
            "attribution_sum": total,
            "output_difference": total - error,
        },
    )


def _smoothgrad_cost(params: SmoothGradParams, size: tuple[int, int]) -> int:
    """``samples`` times the base method's own registered cost (at its default parameters)."""
    base = get_method(params.base_method)
    return params.samples * int(base.cost(base.params_type(), size))


def _smoothgrad_base(
    name: str, fn: nn.Module, backend: TorchBackend, size: tuple[int, int]
) -> tuple[Any, dict[str, Any]]:
    """The base method's captum attribution and its arguments, from the same configuration
    as the registered method (integrated gradients at its default steps)."""
    if name == "integrated_gradients":
        steps = IntegratedGradientsParams().steps
        return IntegratedGradients(fn), {"internal_batch_size": _ig_batch(0, steps, backend, size)}
    if name not in CAPTUM_WRAPPERS:
        raise InvalidInput(f"base_method {name!r} is unknown")
    wrapper = CAPTUM_WRAPPERS[name]
    return wrapper.attribution(fn), dict(wrapper.kwargs)


def _smoothgrad_memory(
    params: SmoothGradParams, size: tuple[int, int], num_classes: int = 1
) -> Footprint:
    """NoiseTunnel keeps the running sum and sum of squares at the input's size; the noisy
    copies go through in batches under the torch budget (``nt_samples_batch_size``)."""
    base = _ig_memory(IntegratedGradientsParams(), size).bytes
    return Footprint(base + 4 * image_bytes(size) + FLOAT32 * params.samples, "smoothgrad.samples")


_SEED_LOCK = threading.Lock()


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's global generator for ``NoiseTunnel``'s draws (captum takes no generator).

    Seeded requests are serialised with each other; unseeded ones draw freely.
    """
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with _SEED_LOCK, torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _value_range(backend: TorchBackend) -> float:
    """Mean per-channel range of the model input for pixel values 0..255."""
    lo = backend.to_input(np.zeros((1, 1, 1, 3), np.float32))
    hi = backend.to_input(np.full((1, 1, 1, 3), 255.0, np.float32))
    return float((hi - lo).abs().mean())


@register_method(
    "smoothgrad",
    params=SmoothGradParams,
    backend="whitebox",
    cost=_smoothgrad_cost,
    memory=_smoothgrad_memory,
    signed=True,
)
def smoothgrad(
    model: WhiteBoxModel, image: np.ndarray, target: Target, params: SmoothGradParams
) -> Explanation:
    """SmoothGrad (Smilkov et al.): the base method averaged over noisy copies of the input
    (captum ``NoiseTunnel``). The saliency base is ℓ2-pooled over channels (Samek et al. Eq. 3);
    other bases are summed over channels."""
    _check_target(model.num_classes, target)
    size = (int(image.shape[0]), int(image.shape[1]))
    with model.torch_backend() as backend, _quiet():
        fn, t = _explained(backend.module, target)
        base, kwargs = _smoothgrad_base(params.base_method, fn, backend, size)
        # Noisy copies per batch: the device's batch, capped by the memory budget — never all
        # samples at once (IG as the base already batches its steps: its copies go one by one).
        per_batch = (
            1
            if params.base_method == "integrated_gradients"
            else _ig_batch(0, params.samples, backend, size)
        )
        sigma = params.noise_level * _value_range(backend)
        with _seeded(params.seed, backend.device):
            attr = NoiseTunnel(base).attribute(
                _input(backend, image),
                nt_type=params.variant,
                nt_samples=params.samples,
                nt_samples_batch_size=min(params.samples, per_batch),
                stdevs=sigma,
                target=t,
                **kwargs,
            )
        if params.base_method == "saliency" and params.variant == "smoothgrad":
            heat = channel_pool(backend, attr, "l2")[0]
        else:
            heat = backend.to_heatmap(attr)[0]
    signed = params.variant == "smoothgrad" and params.base_method != "saliency"
    return Explanation(heatmap=heat, signed=signed, values={"sigma": sigma})


__all__ = [
    "FILLS",
    "DeconvolutionParams",
    "GradientTimesInputParams",
    "GuidedBackpropParams",
    "IntegratedGradientsParams",
    "SaliencyParams",
    "SmoothGradParams",
]
