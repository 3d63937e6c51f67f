"""White-box methods on models loaded as the server loads them (ONNX → converter → pool).

- The converted module of an ONNX export of torchvision's ResNet-18 (batch norms kept as
  ``BatchNormalization`` nodes, residual ``Add`` nodes) gives the same LRP maps as zennit on the
  original torchvision module with its ``ResNetCanonizer``.
- Concurrent requests with different composites and targets give the sequential maps and leave
  no hooks on any module copy.
- On the demo shapes model, LRP_CMP (α1; α2 by μ_w) puts more positive relevance on the object
  than uniform LRP_z, and LRP_z more than a uniform map (Kohlbrenner et al. Table 1; μ, μ_w of
  Eq. 2). (The "+b" variants, flat on the first layer, do not beat LRP_z on this 64×64 model:
  see ``bench/whitebox.py --demo-mu``.)
"""

from __future__ import annotations

import io
import tomllib
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import torchvision
from torch import nn
from zennit.composites import EpsilonAlpha2Beta1Flat, EpsilonPlusFlat
from zennit.torchvision import ResNetCanonizer

from tests.support import load_onnx_model
from xaiserve.demo import shapes
from xaiserve.evaluation.localisation import (
    inside_total_relevance_ratio,
    weighted_inside_total_relevance_ratio,
)
from xaiserve.methods.base import Target, get_method
from xaiserve.methods.gradients import IntegratedGradientsParams, SaliencyParams
from xaiserve.methods.lrp import LrpParams, lrp_attribute
from xaiserve.runtime.onnx_to_torch import convert_onnx
from xaiserve.runtime.torch_backend import TorchModelPool, leftover_hooks

torch.set_num_threads(1)

SIZE = 32
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DEMO = Path(__file__).resolve().parents[2] / "models" / "shapes" / "1"


def resnet() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.2, 0.2, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            m.weight.data.uniform_(0.5, 1.5, generator=gen)
            m.bias.data.uniform_(-0.1, 0.1, generator=gen)
    return model.eval()


def export(module: nn.Module) -> onnx.ModelProto:
    """TorchScript export keeping BatchNormalization nodes (no constant folding)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.zeros(1, 3, SIZE, SIZE),), buf,  # type: ignore[arg-type]
            dynamo=False, opset_version=17,
            do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip
    return onnx.load_from_string(buf.getvalue())


@pytest.fixture(scope="module")
def resnet_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    model = load_onnx_model(
        export(resnet()), tmp_path_factory.mktemp("resnet"), height=SIZE, width=SIZE,
        mean=MEAN, std=STD, value_range=(0.0, 1.0),
    )  # fmt: skip
    yield model
    model.close()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32)


def zennit_reference(composite: Any, x: torch.Tensor, target: int) -> np.ndarray:
    original = resnet()
    with composite(canonizers=[ResNetCanonizer()]).context(original) as hooked:
        out = hooked(x)
        init = torch.zeros_like(out)
        init[:, target] = out[:, target]
        (rel,) = torch.autograd.grad(out, x, init)
    return rel.sum(1).numpy()


@pytest.mark.parametrize(
    ("name", "composite"),
    [("epsilon_plus_flat", EpsilonPlusFlat), ("epsilon_alpha2beta1_flat", EpsilonAlpha2Beta1Flat)],
)
def test_converted_resnet_matches_zennit_on_the_original(
    resnet_model: Any, images: np.ndarray, name: str, composite: Any
) -> None:
    exp = get_method("lrp").explain(resnet_model, images[0], Target(1), LrpParams(composite=name))
    with resnet_model.torch_backend() as backend:
        x = backend.to_input(images[:1]).requires_grad_(True)
        assert isinstance(backend.module, torch.fx.GraphModule)
    ref = zennit_reference(composite, x, 1)[0]
    np.testing.assert_allclose(exp.heatmap, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())
    logits = resnet_model.predict(images[:1], output="raw")[0]
    assert exp.values["target_logit"] == pytest.approx(float(logits[1]), rel=1e-4, abs=1e-5)


def test_converted_resnet_gradients_match_the_original(
    resnet_model: Any, images: np.ndarray
) -> None:
    exp = get_method("saliency").explain(
        resnet_model, images[1], Target(3), SaliencyParams("abs_sum")
    )
    with resnet_model.torch_backend() as backend:
        x = backend.to_input(images[1:2]).requires_grad_(True)
    (g,) = torch.autograd.grad(resnet()(x)[0, 3], x)
    np.testing.assert_allclose(exp.heatmap, g.abs().sum(1)[0].numpy(), rtol=1e-3, atol=1e-6)


def test_concurrent_requests_equal_sequential_and_leave_no_hooks(
    resnet_model: Any, images: np.ndarray
) -> None:
    jobs = [
        ("lrp", LrpParams(composite="epsilon_plus_flat"), 0, 0),
        ("lrp", LrpParams(composite="epsilon_alpha2beta1_flat"), 1, 2),
        ("lrp", LrpParams(composite="lrp_z"), 2, 3),
        ("lrp", LrpParams(composite="lrp_cmp_alpha1beta0", flat_layers=3), 0, 1),
        ("integrated_gradients", IntegratedGradientsParams(steps=8), 1, 0),
        ("saliency", SaliencyParams(), 2, 2),
    ] * 2

    def run(job: tuple[str, Any, int, int]) -> np.ndarray:
        method, params, i, target = job
        heatmap: np.ndarray = (
            get_method(method).explain(resnet_model, images[i], Target(target), params).heatmap
        )
        return heatmap

    sequential = [run(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(run, jobs))
    for a, b in zip(sequential, concurrent, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(a).max()))
    copies = resnet_model._pool().built_copies  # the model's TorchModelPool
    assert len(copies) == 2
    assert all(leftover_hooks(m) == [] for m in copies)


def demo_mu_table(n: int, composites: list[str]) -> dict[str, tuple[float, float]]:
    """Mean (μ, μ_w) (Kohlbrenner et al. Eq. 2) per composite over ``n`` held-out images."""
    with open(DEMO / "config.toml", "rb") as fh:
        spec = tomllib.load(fh)["input"]
    data = shapes.heldout(n)
    images = data.images.astype(np.float32)
    table = {"baseline": (float(data.masks.mean()), 1.0)}
    pool = TorchModelPool(
        lambda: convert_onnx(DEMO / "model.onnx"), layout=spec["layout"],
        channel_order=spec["channel_order"], value_range=spec["value_range"],
        mean=spec["mean"], std=spec["std"], copies=1,
    )  # fmt: skip
    targets = [Target(int(label)) for label in data.labels]
    with pool.lease() as backend:
        for name in composites:
            params = LrpParams(composite=name)
            heatmaps = np.concatenate(
                [
                    lrp_attribute(backend, images[i : i + 25], targets[i : i + 25], params).heatmaps
                    for i in range(0, n, 25)
                ]
            )
            pairs = list(zip(heatmaps, data.masks, strict=True))
            mu = np.nanmean([inside_total_relevance_ratio(h, m) for h, m in pairs])
            mu_w = np.nanmean([weighted_inside_total_relevance_ratio(h, m) for h, m in pairs])
            table[name] = (float(mu), float(mu_w))
    return table


def test_demo_model_lrp_cmp_localises_better_than_lrp_z() -> None:
    table = demo_mu_table(100, ["lrp_cmp_alpha1beta0", "lrp_cmp_alpha2beta1", "lrp_z"])
    (mu_a1, muw_a1), (mu_a2, muw_a2) = table["lrp_cmp_alpha1beta0"], table["lrp_cmp_alpha2beta1"]
    mu_z, muw_z = table["lrp_z"]
    assert mu_a1 > mu_z > table["baseline"][0]
    assert muw_a1 > muw_z > 1.0
    assert muw_a2 > muw_z
    assert mu_a2 > table["baseline"][0]
