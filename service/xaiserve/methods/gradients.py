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

import threading
import warnings
from collections.abc import Iterator, Mapping
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
from torch import nn

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


def _ig_batch(requested: int, steps: int, device: torch.device) -> int:
    return min(steps, requested or DEFAULT_IG_BATCH.get(device.type, DEFAULT_IG_BATCH["cpu"]))


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
        if self.steps < 1:
            raise InvalidInput("steps must be ≥ 1")
        if self.internal_batch_size < 0:
            raise InvalidInput("internal_batch_size must be ≥ 0")
        check_fill(self.baseline, "baseline")


@dataclass
class SmoothGradParams:
    """``SmoothGradParams``: ``noise_level`` is σ as a fraction of the input's value range."""

    samples: int = 25
    noise_level: float = 0.15
    base_method: BaseMethod = "saliency"
    variant: Variant = "smoothgrad"
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise InvalidInput("samples must be ≥ 1")
        if self.noise_level < 0:
            raise InvalidInput("noise_level must be ≥ 0")


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
    return 2 * params.steps + 2


def ig_baseline(image: np.ndarray, params: IntegratedGradientsParams) -> np.ndarray:
    """The image-space baseline ``x'`` (a fill of :mod:`xaiserve.imaging.fills`)."""
    rng = np.random.default_rng(params.seed)
    return fill_image(image, check_fill(params.baseline, "baseline"), rng)


@register_method(
    "integrated_gradients",
    params=IntegratedGradientsParams,
    backend="whitebox",
    cost=_ig_cost,
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
            internal_batch_size=_ig_batch(params.internal_batch_size, params.steps, backend.device),
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


def _smoothgrad_base(name: str, fn: nn.Module, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """The base method's captum attribution and its arguments, from the same configuration
    as the registered method (integrated gradients at its default steps)."""
    if name == "integrated_gradients":
        steps = IntegratedGradientsParams().steps
        return IntegratedGradients(fn), {"internal_batch_size": _ig_batch(0, steps, device)}
    if name not in CAPTUM_WRAPPERS:
        raise InvalidInput(f"base_method {name!r} is unknown")
    wrapper = CAPTUM_WRAPPERS[name]
    return wrapper.attribution(fn), dict(wrapper.kwargs)


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
    "smoothgrad", params=SmoothGradParams, backend="whitebox", cost=_smoothgrad_cost, signed=True
)
def smoothgrad(
    model: WhiteBoxModel, image: np.ndarray, target: Target, params: SmoothGradParams
) -> Explanation:
    """SmoothGrad (Smilkov et al.): the base method averaged over noisy copies of the input
    (captum ``NoiseTunnel``). The saliency base is ℓ2-pooled over channels (Samek et al. Eq. 3);
    other bases are summed over channels."""
    _check_target(model.num_classes, target)
    with model.torch_backend() as backend, _quiet():
        fn, t = _explained(backend.module, target)
        base, kwargs = _smoothgrad_base(params.base_method, fn, backend.device)
        sigma = params.noise_level * _value_range(backend)
        with _seeded(params.seed, backend.device):
            attr = NoiseTunnel(base).attribute(
                _input(backend, image),
                nt_type=params.variant,
                nt_samples=params.samples,
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
