"""LRP (zennit) against invariants and independent references.

- Conservation (Samek et al. Eq. 6; Kohlbrenner et al. Eq. 1): with LRP_z / LRP_ε on a
  bias-free network the relevance sums to the explained logit.
- LRP_z equals Gradient×Input on bias-free ReLU networks (Kohlbrenner et al. Sec. 2.1),
  computed here with plain autograd.
- Named composites equal zennit's own composites called directly on a torchvision ResNet with
  zennit's ``ResNetCanonizer``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from zennit.composites import EpsilonAlpha2Beta1Flat, EpsilonPlusFlat, SpecialFirstLayerMapComposite
from zennit.layer import Sum
from zennit.rules import Epsilon, Norm, Pass, ZBox, ZPlus
from zennit.torchvision import ResNetCanonizer
from zennit.types import Activation, AvgPool, Convolution

from xaiserve.errors import InvalidInput
from xaiserve.methods.base import Target, get_method
from xaiserve.methods.lrp import LrpParams, LrpRuleOverride, lrp_attribute
from xaiserve.methods.lrp_composites import COMPOSITES, RuleOverride, layer_order, resolve_rules
from xaiserve.methods.params import params_from_mapping
from xaiserve.runtime.torch_backend import TorchLease, TorchModelPool, leftover_hooks

torch.set_num_threads(1)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class TinyNet(nn.Module):
    """conv-relu-[conv + skip → zennit Sum]-relu-avgpool-linear; bias-free unless ``bias``."""

    def __init__(self, classes: int = 3, bias: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=bias)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=bias)
        self.add = Sum()
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu1(self.conv1(x))
        s = self.relu2(self.add(torch.stack([a, self.conv2(a)], dim=-1)))
        return self.fc(self.flatten(self.pool(s)))


def tiny(bias: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return TinyNet(bias=bias).eval()


def small_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial batch-norm statistics, so merging matters
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.2, 0.2, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            m.weight.data.uniform_(0.5, 1.5, generator=gen)
            m.bias.data.uniform_(-0.1, 0.1, generator=gen)
    return model.eval()


class PoolModel:
    """A real WhiteBoxModel over a :class:`TorchModelPool` (forward passes via the pool)."""

    def __init__(self, pool: TorchModelPool, size: tuple[int, int], classes: int) -> None:
        self.pool = pool
        self.input_size = size
        self.num_classes = classes
        self.output_kind = "logits"

    def torch_backend(self) -> contextlib.AbstractContextManager[TorchLease]:
        return self.pool.lease()

    def predict(self, images: np.ndarray, output: str = "probabilities") -> np.ndarray:
        with self.pool.lease() as b, torch.no_grad():
            logits = b.module(b.to_input(images))
        return (logits.softmax(1) if output == "probabilities" else logits).numpy()


@pytest.fixture()
def images() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)


@pytest.fixture()
def tiny_pool() -> TorchModelPool:
    return TorchModelPool(tiny, mean=MEAN, std=STD, copies=1, device="cpu")


@contextlib.contextmanager
def leased(pool: TorchModelPool) -> Iterator[TorchLease]:
    with pool.lease() as backend:
        yield backend


def logits_of(backend: TorchLease, imgs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return backend.module(backend.to_input(imgs)).numpy().astype(np.float64)


@pytest.mark.parametrize("composite", ["lrp_z", "lrp_epsilon"])
def test_conservation_on_bias_free_network(
    tiny_pool: TorchModelPool, images: np.ndarray, composite: str
) -> None:
    targets = [Target(0), Target(2)]
    with leased(tiny_pool) as b:
        result = lrp_attribute(b, images, targets, LrpParams(composite=composite))
        logits = logits_of(b, images)
    sums = result.heatmaps.sum(axis=(1, 2), dtype=np.float64)
    expected = np.array([logits[0, 0], logits[1, 2]])
    np.testing.assert_allclose(sums, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.explained, expected, rtol=1e-6)


def test_large_epsilon_absorbs_relevance(tiny_pool: TorchModelPool, images: np.ndarray) -> None:
    with leased(tiny_pool) as b:
        z = lrp_attribute(b, images, [Target(1)] * 2, LrpParams(composite="lrp_z"))
        eps = lrp_attribute(
            b, images, [Target(1)] * 2, LrpParams(composite="lrp_epsilon", epsilon=10.0)
        )
    assert np.all(np.abs(eps.heatmaps.sum(axis=(1, 2))) < np.abs(z.heatmaps.sum(axis=(1, 2))))


def test_lrp_z_equals_gradient_times_input(tiny_pool: TorchModelPool, images: np.ndarray) -> None:
    with leased(tiny_pool) as b:
        result = lrp_attribute(b, images, [Target(1), Target(1)], LrpParams(composite="lrp_z"))
        x = b.to_input(images).requires_grad_(True)
        (grad,) = torch.autograd.grad(b.module(x)[:, 1].sum(), x)
        reference = (x * grad).sum(1).detach().numpy()
    np.testing.assert_allclose(result.heatmaps, reference, rtol=1e-4, atol=1e-6)


def test_contrast_decomposes_the_logit_difference(
    tiny_pool: TorchModelPool, images: np.ndarray
) -> None:
    with leased(tiny_pool) as b:
        result = lrp_attribute(b, images, [Target(0, contrast=2)] * 2, LrpParams(composite="lrp_z"))
        logits = logits_of(b, images)
    np.testing.assert_allclose(
        result.heatmaps.sum(axis=(1, 2)), logits[:, 0] - logits[:, 2], rtol=1e-4, atol=1e-6
    )


def test_batched_equals_one_by_one(tiny_pool: TorchModelPool, images: np.ndarray) -> None:
    params = LrpParams(composite="epsilon_alpha2beta1_flat")
    with leased(tiny_pool) as b:
        both = lrp_attribute(b, images, [Target(0), Target(1)], params).heatmaps
        first = lrp_attribute(b, images[:1], [Target(0)], params).heatmaps
        second = lrp_attribute(b, images[1:], [Target(1)], params).heatmaps
    np.testing.assert_allclose(both, np.concatenate([first, second]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("composite", "reference"),
    [("epsilon_plus_flat", EpsilonPlusFlat), ("epsilon_alpha2beta1_flat", EpsilonAlpha2Beta1Flat)],
)
def test_named_composites_equal_zennit_on_torchvision_resnet(
    composite: str, reference: Callable[..., object]
) -> None:
    imgs = np.random.default_rng(1).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    pool = TorchModelPool(small_resnet, mean=MEAN, std=STD, copies=1, device="cpu")
    with leased(pool) as b:
        ours = lrp_attribute(b, imgs, [Target(2)], LrpParams(composite=composite)).heatmaps
        x = b.to_input(imgs).requires_grad_(True)
    original = small_resnet()
    with reference(canonizers=[ResNetCanonizer()]).context(original) as hooked:  # type: ignore[attr-defined]
        out = hooked(x)
        init = torch.zeros_like(out)
        init[0, 2] = out[0, 2]
        (rel,) = torch.autograd.grad(out, x, init)
    np.testing.assert_allclose(
        ours, rel.sum(1).numpy(), rtol=1e-5, atol=1e-6 * float(rel.abs().max())
    )
    assert not leftover_hooks(original)
    assert all(not leftover_hooks(m) for m in pool.built_copies)
    # batch norms were merged for the attribution and restored afterwards
    with leased(pool) as b, torch.no_grad():
        np.testing.assert_allclose(
            b.module(x.detach()).numpy(), small_resnet()(x.detach()).numpy(), rtol=1e-5, atol=1e-6
        )


def test_zbox_first_layer_uses_normalised_image_bounds(
    tiny_pool: TorchModelPool, images: np.ndarray
) -> None:
    params = LrpParams(
        composite="epsilon_plus",
        rules=[LrpRuleOverride(rule="zbox", layer_type="first")],
        low=0,
        high=255,
    )
    with leased(tiny_pool) as b:
        ours = lrp_attribute(b, images, [Target(0)] * 2, params).heatmaps
        x = b.to_input(images).requires_grad_(True)
    low = ((0.0 - np.array(MEAN)) / np.array(STD)).reshape(1, 3, 1, 1)
    high = ((1.0 - np.array(MEAN)) / np.array(STD)).reshape(1, 3, 1, 1)
    reference = SpecialFirstLayerMapComposite(
        layer_map=[
            (Activation, Pass()), (Sum, Norm()), (AvgPool, Norm()),
            (Convolution, ZPlus()), (nn.Linear, Epsilon(epsilon=1e-6)),
        ],
        first_map=[(Convolution, ZBox(torch.tensor(low).float(), torch.tensor(high).float()))],
    )  # fmt: skip
    module = tiny()
    with reference.context(module) as hooked:
        out = hooked(x)
        init = torch.zeros_like(out)
        init[:, 0] = out[:, 0]
        (rel,) = torch.autograd.grad(out, x, init)
    np.testing.assert_allclose(ours, rel.sum(1).numpy(), rtol=1e-5, atol=1e-7)


def _rules(
    module: nn.Module, composite: str, flat: int | None, overrides: list[RuleOverride]
) -> dict[str, str | None]:
    order = layer_order(module, torch.zeros(1, 3, 8, 8))
    spec = COMPOSITES[composite]
    rule_for = resolve_rules(
        module, order, spec, spec.flat_layers if flat is None else flat, overrides
    )
    return {name: rule_for(name, sub) for name, sub in module.named_modules() if name}


def test_layer_order_follows_the_forward_pass() -> None:
    assert layer_order(tiny(), torch.zeros(1, 3, 8, 8)) == ("conv1", "conv2", "fc")


def test_composite_rule_assignment_and_flat_layers() -> None:
    module = tiny()
    cmp = _rules(module, "lrp_cmp_alpha2beta1", None, [])
    assert (cmp["conv1"], cmp["conv2"], cmp["fc"]) == ("alpha2beta1", "alpha2beta1", "epsilon")
    assert (cmp["relu1"], cmp["add"], cmp["pool"], cmp["flatten"]) == ("pass", "norm", "norm", None)
    flat2 = _rules(module, "lrp_cmp_alpha1beta0", 2, [])
    assert (flat2["conv1"], flat2["conv2"], flat2["fc"]) == ("flat", "flat", "epsilon")
    plus_flat = _rules(module, "epsilon_plus_flat", None, [])
    assert (plus_flat["conv1"], plus_flat["conv2"]) == ("flat", "zplus")


def test_overrides_apply_in_order_later_wins() -> None:
    overrides = [
        RuleOverride("wsquare", layer_type="conv"),
        RuleOverride("z", position=1),
        RuleOverride("alpha1beta0", layer_name="fc"),
        RuleOverride("epsilon", layer_type="last"),
        RuleOverride("gradient", layer_type="sum"),
    ]
    rules = _rules(tiny(), "lrp_z", None, overrides)
    assert (rules["conv1"], rules["conv2"], rules["fc"], rules["add"]) == (
        "wsquare",
        "z",
        "epsilon",
        "gradient",
    )


@pytest.mark.parametrize(
    "override",
    [
        RuleOverride("nonsense", layer_type="conv"),
        RuleOverride("z", layer_type="nonsense"),
        RuleOverride("z", position=7),
        RuleOverride("z", layer_name="nope"),
        RuleOverride("epsilon", layer_type="activation"),
        RuleOverride("pass", layer_name="conv1"),
        RuleOverride("z", layer_type="conv", position=0),
    ],
)
def test_invalid_overrides_name_the_problem(override: RuleOverride) -> None:
    with pytest.raises(InvalidInput, match=r"rules\[0\]"):
        _rules(tiny(), "lrp_z", None, [override])


def test_params_from_mapping_builds_rule_overrides() -> None:
    params = params_from_mapping(
        LrpParams,
        {
            "composite": "lrp_cmp_alpha1beta0",
            "flat_layers": 2,
            "rules": [{"position": 0, "rule": "zbox"}],
        },
    )
    assert params.rules == [LrpRuleOverride(rule="zbox", position=0)]
    assert params.flat_layers == 2 and params.epsilon == 1e-6 and params.merge_batchnorm
    with pytest.raises(InvalidInput, match="composite"):
        params_from_mapping(LrpParams, {"composite": "nope"})


def test_registered_method_reports_values_and_leaves_no_hooks(
    tiny_pool: TorchModelPool, images: np.ndarray
) -> None:
    spec = get_method("lrp")
    assert spec.backend == "whitebox" and spec.signed
    model = PoolModel(tiny_pool, (8, 8), 3)
    exp = spec.explain(model, images[0], Target(1), LrpParams(composite="lrp_z"))
    logit = model.predict(images[:1], output="raw")[0, 1]
    assert exp.signed and exp.heatmap.shape == (8, 8) and exp.heatmap.dtype == np.float32
    assert exp.values["target_logit"] == pytest.approx(logit, rel=1e-5)
    assert exp.values["relevance_sum"] == pytest.approx(logit, rel=1e-4)
    assert exp.target_probability == pytest.approx(model.predict(images[:1])[0, 1], rel=1e-5)
    with pytest.raises(InvalidInput, match="out of range"):
        spec.explain(model, images[0], Target(5), LrpParams())
    assert all(not leftover_hooks(m) for m in tiny_pool.built_copies)
