"""Gradient methods (captum) against plain-autograd references and their axioms.

- Saliency: Samek et al. Eq. (3), ℓ2 / ℓ∞ / ℓ1 of the input gradient over colour channels.
- Gradient×Input: ``x ⊙ ∇f``; equals LRP_z on a bias-free ReLU network.
- Integrated gradients: completeness ``Σ a = f(x) − f(x')`` (Sundararajan et al.).
- Guided backprop / deconvolution: against a hand-written ReLU backward (Springenberg et al.;
  Zeiler & Fergus, Samek et al. Sec. II-B).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from torch import nn

from xaiserve.errors import InvalidInput
from xaiserve.methods.base import Target, get_method
from xaiserve.methods.gradients import (
    DeconvolutionParams,
    GradientTimesInputParams,
    GuidedBackpropParams,
    IntegratedGradientsParams,
    SaliencyParams,
    SmoothGradParams,
)
from xaiserve.methods.lrp import LrpParams
from xaiserve.methods.params import params_from_mapping
from xaiserve.runtime.torch_backend import TorchLease, TorchModelPool, leftover_hooks

torch.set_num_threads(1)

MEAN = (0.4, 0.5, 0.6)
STD = (0.25, 0.2, 0.3)


class Net(nn.Module):
    """conv-relu-maxpool-conv-relu-avgpool-linear, ReLUs as modules (captum hooks them)."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=bias)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=bias)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(24, 3, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        return self.fc(self.flatten(self.pool2(self.relu2(self.conv2(x)))))


def net(bias: bool = True) -> Net:
    torch.manual_seed(0)
    return Net(bias).eval()


class PoolModel:
    """A real WhiteBoxModel over a :class:`TorchModelPool`."""

    def __init__(self, pool: TorchModelPool) -> None:
        self.pool = pool
        self.input_size = (8, 8)
        self.num_classes = 3
        self.output_kind = "logits"

    def torch_backend(self) -> contextlib.AbstractContextManager[TorchLease]:
        return self.pool.lease()

    def predict(self, images: np.ndarray, output: str = "probabilities") -> np.ndarray:
        with self.pool.lease() as b, torch.no_grad():
            logits = b.module(b.to_input(images))
        return (logits.softmax(1) if output == "probabilities" else logits).numpy()

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.predict(images, output="raw").astype(np.float64)


def make_model(bias: bool = True) -> PoolModel:
    return PoolModel(TorchModelPool(lambda: net(bias), mean=MEAN, std=STD, copies=1, device="cpu"))


@pytest.fixture()
def model() -> PoolModel:
    return make_model()


@pytest.fixture()
def image() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (8, 8, 3)).astype(np.float32)


def input_and_grad(
    model: PoolModel, image: np.ndarray, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    with model.pool.lease() as b:
        x = b.to_input(image[None]).requires_grad_(True)
        (g,) = torch.autograd.grad(b.module(x)[0, k], x)
    return x.detach(), g


@pytest.mark.parametrize(
    ("norm", "reduce"),
    [
        ("l2", lambda g: np.sqrt((g**2).sum(0))),
        ("linf", lambda g: np.abs(g).max(0)),
        ("abs_sum", lambda g: np.abs(g).sum(0)),
    ],
)
def test_saliency_is_the_channel_norm_of_the_gradient(
    model: PoolModel, image: np.ndarray, norm: str, reduce
) -> None:  # type: ignore[no-untyped-def]
    exp = get_method("saliency").explain(model, image, Target(1), SaliencyParams(channel_norm=norm))  # type: ignore[arg-type]
    _, g = input_and_grad(model, image, 1)
    np.testing.assert_allclose(exp.heatmap, reduce(g[0].numpy()), rtol=1e-5, atol=1e-7)
    assert not exp.signed and exp.heatmap.min() >= 0


def test_gradient_times_input_and_its_contrast(model: PoolModel, image: np.ndarray) -> None:
    gxi = get_method("gradient_times_input").explain
    exp = gxi(model, image, Target(2), GradientTimesInputParams())
    x, g = input_and_grad(model, image, 2)
    np.testing.assert_allclose(exp.heatmap, (x * g)[0].sum(0).numpy(), rtol=1e-5, atol=1e-7)
    assert exp.signed
    other = gxi(model, image, Target(0), GradientTimesInputParams())
    contrast = gxi(model, image, Target(2, contrast=0), GradientTimesInputParams())
    np.testing.assert_allclose(contrast.heatmap, exp.heatmap - other.heatmap, rtol=1e-4, atol=1e-6)


def test_gradient_times_input_equals_lrp_z_without_biases(image: np.ndarray) -> None:
    model = make_model(bias=False)
    gxi = get_method("gradient_times_input").explain(
        model, image, Target(1), GradientTimesInputParams()
    )
    lrp = get_method("lrp").explain(model, image, Target(1), LrpParams(composite="lrp_z"))
    np.testing.assert_allclose(gxi.heatmap, lrp.heatmap, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("baseline", "integration", "tolerance"),
    [("black", "gausslegendre", 0.02), ("uniform", "riemann_trapezoid", 0.05)],
)
def test_integrated_gradients_completeness(
    model: PoolModel, image: np.ndarray, baseline: str, integration: str, tolerance: float
) -> None:
    params = IntegratedGradientsParams(steps=64, baseline=baseline, integration=integration, seed=3)  # type: ignore[arg-type]
    exp = get_method("integrated_gradients").explain(model, image, Target(0), params)
    from xaiserve.methods.gradients import ig_baseline

    f = model.logits(np.stack([image, ig_baseline(image, params)]))[:, 0]
    scale = abs(f[0] - f[1]) + 1e-3
    total = exp.heatmap.sum(dtype=np.float64)
    assert total == pytest.approx(f[0] - f[1], abs=tolerance * scale)
    assert exp.values["completeness_error"] == pytest.approx(total - (f[0] - f[1]), abs=1e-5)
    assert exp.values["output_difference"] == pytest.approx(f[0] - f[1], rel=1e-4, abs=1e-6)
    assert exp.signed


def test_integrated_gradients_internal_batch_does_not_change_the_result(
    model: PoolModel, image: np.ndarray
) -> None:
    ig = get_method("integrated_gradients").explain
    a = ig(model, image, Target(1), IntegratedGradientsParams(steps=12, internal_batch_size=1))
    b = ig(model, image, Target(1), IntegratedGradientsParams(steps=12, internal_batch_size=12))
    np.testing.assert_allclose(a.heatmap, b.heatmap, rtol=1e-4, atol=1e-6)


class _GuidedReLU(torch.autograd.Function):
    """Reference ReLU backward: guided (``mask * relu(g)``) or deconvnet (``relu(g)``)."""

    @staticmethod
    def forward(ctx, x, guided):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(x)
        ctx.guided = guided
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def, override]
        (x,) = ctx.saved_tensors
        out = g.clamp(min=0)
        return (out * (x > 0) if ctx.guided else out), None


def _reference(image: np.ndarray, k: int, guided: bool) -> np.ndarray:
    module = net()
    pool = TorchModelPool(net, mean=MEAN, std=STD, copies=1, device="cpu")
    with pool.lease() as b:
        x = b.to_input(image[None]).requires_grad_(True)
    relu = lambda t: _GuidedReLU.apply(t, guided)  # noqa: E731
    h = module.pool1(relu(module.conv1(x)))
    out = module.fc(module.flatten(module.pool2(relu(module.conv2(h)))))
    (g,) = torch.autograd.grad(out[0, k], x)
    return g[0].numpy()


def test_guided_backprop_matches_the_reference(model: PoolModel, image: np.ndarray) -> None:
    exp = get_method("guided_backprop").explain(model, image, Target(1), GuidedBackpropParams())
    np.testing.assert_allclose(exp.heatmap, _reference(image, 1, True).sum(0), rtol=1e-5, atol=1e-7)
    assert all(not leftover_hooks(m) for m in model.pool.built_copies)


def test_deconvolution_matches_the_reference(model: PoolModel, image: np.ndarray) -> None:
    exp = get_method("deconvolution").explain(model, image, Target(1), DeconvolutionParams())
    ref = _reference(image, 1, False)
    np.testing.assert_allclose(exp.heatmap, np.sqrt((ref**2).sum(0)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(exp.maps["channel_sum"], ref.sum(0), rtol=1e-5, atol=1e-7)
    assert not exp.signed


def test_smoothgrad_seeded_noise_and_zero_noise(model: PoolModel, image: np.ndarray) -> None:
    sg = get_method("smoothgrad").explain
    a = sg(model, image, Target(0), SmoothGradParams(samples=4, seed=1))
    b = sg(model, image, Target(0), SmoothGradParams(samples=4, seed=1))
    c = sg(model, image, Target(0), SmoothGradParams(samples=4, seed=2))
    np.testing.assert_array_equal(a.heatmap, b.heatmap)
    assert not np.allclose(a.heatmap, c.heatmap)
    quiet = sg(model, image, Target(0), SmoothGradParams(samples=2, noise_level=0.0))
    sal = get_method("saliency").explain(model, image, Target(0), SaliencyParams())
    np.testing.assert_allclose(quiet.heatmap, sal.heatmap, rtol=1e-5, atol=1e-7)
    gxi = sg(
        model,
        image,
        Target(0),
        SmoothGradParams(samples=2, base_method="gradient_times_input", noise_level=0.0),
    )
    assert gxi.signed
    var = sg(model, image, Target(0), SmoothGradParams(samples=3, variant="vargrad", seed=0))
    assert not var.signed and var.heatmap.min() >= 0


def test_registry_costs_and_parameter_validation() -> None:
    specs = {n: get_method(n) for n in (
        "saliency", "deconvolution", "gradient_times_input", "guided_backprop",
        "integrated_gradients", "smoothgrad",
    )}  # fmt: skip
    assert all(s.backend == "whitebox" for s in specs.values())
    assert [n for n, s in specs.items() if not s.signed] == ["saliency", "deconvolution"]
    assert specs["integrated_gradients"].cost(IntegratedGradientsParams(steps=50), (8, 8)) == 102
    assert specs["smoothgrad"].cost(SmoothGradParams(samples=10), (8, 8)) == 20
    with pytest.raises(InvalidInput, match="baseline"):
        params_from_mapping(IntegratedGradientsParams, {"baseline": "purple"})
    with pytest.raises(InvalidInput, match="channel_norm"):
        params_from_mapping(SaliencyParams, {"channel_norm": "l3"})
    with pytest.raises(InvalidInput, match="steps"):
        IntegratedGradientsParams(steps=0)


def test_out_of_range_class_is_refused(model: PoolModel, image: np.ndarray) -> None:
    with pytest.raises(InvalidInput, match="out of range"):
        get_method("saliency").explain(model, image, Target(3), SaliencyParams())
