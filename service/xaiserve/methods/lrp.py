"""Layer-wise Relevance Propagation (Bach et al. 2015) with composites, via zennit.

Relevance starts at the explained output: the one-hot vector of the target class times its
logit, ``R^(L) = f_t(x) e_t`` (Kohlbrenner et al. Sec. 2.1: LRP decomposes "a model output of
interest"), so a conservative composite gives ``Σ_p h_p ≈ f_t(x)`` (Samek et al. Eq. 6). With a
contrast class ``c`` it starts from ``f_t e_t − f_c e_c`` and decomposes ``f_t − f_c``.

Before the rules are attached, batch norms are merged into the preceding convolution or dense
layer (zennit's ``MergeBatchNorm`` canonizers), and residual additions are routed through
``zennit.layer.Sum`` modules (which take the ``norm`` rule) as zennit's ``ResNetCanonizer``
does for torchvision ResNets. Rules and composites: :mod:`xaiserve.methods.lrp_composites`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx
from torch import nn
from zennit.canonizers import NamedMergeBatchNorm, SequentialMergeBatchNorm
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

from xaiserve.errors import InvalidInput
from xaiserve.methods.base import Explanation, Target, TorchBackend, WhiteBoxModel, register_method
from xaiserve.methods.lrp_composites import (
    COMPOSITES,
    RuleOverride,
    RuleSettings,
    build_composite,
    layer_order,
)

DEFAULT_COMPOSITE = "epsilon_plus_flat"


@dataclass
class LrpRuleOverride:
    """``LrpRuleOverride``: one rule for a layer type, a position or a layer name."""

    rule: str = ""
    layer_type: str | None = None
    position: int | None = None
    layer_name: str | None = None


@dataclass
class LrpParams:
    """``LrpParams`` (explain.proto). ``flat_layers=None`` keeps the composite's own default."""

    composite: str = DEFAULT_COMPOSITE
    rules: list[LrpRuleOverride] = field(default_factory=list)
    epsilon: float = 1e-6
    flat_layers: int | None = None
    merge_batchnorm: bool = True
    low: float = 0.0
    high: float = 255.0

    def __post_init__(self) -> None:
        if self.composite not in COMPOSITES:
            raise InvalidInput(
                f"composite {self.composite!r} is unknown; choose one of {', '.join(COMPOSITES)}"
            )
        if self.epsilon < 0:
            raise InvalidInput("epsilon must be ≥ 0")
        if self.flat_layers is not None and self.flat_layers < 0:
            raise InvalidInput("flat_layers must be ≥ 0")
        if not self.high > self.low:
            raise InvalidInput(f"low ({self.low}) must be below high ({self.high})")


# ---------------------------------------------------------------------------------------------
# canonizers


def batchnorm_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(name of a Conv2d/Linear submodule, name of the BatchNorm2d that directly consumes its
    output and nothing else), so zennit's MergeBatchNorm canonizer can merge them.

    Works on modules from :func:`xaiserve.runtime.onnx_to_torch.convert_onnx` (and any
    module ``torch.fx.symbolic_trace`` can trace). The conv/linear output must feed only the
    batch norm. Conv1d/Conv3d and BatchNorm1d/3d pairs are found too. For zennit use
    ``NamedMergeBatchNorm([((conv,), bn) for conv, bn in batchnorm_pairs(m)])``.
    """
    graph_module = module if isinstance(module, torch.fx.GraphModule) else None
    if graph_module is None:
        graph_module = torch.fx.symbolic_trace(module)
    modules = dict(graph_module.named_modules())
    pairs: list[tuple[str, str]] = []
    for node in graph_module.graph.nodes:
        if node.op != "call_module" or not isinstance(
            modules.get(node.target), (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
        ):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        consumer = modules.get(users[0].target)
        if isinstance(consumer, nn.modules.batchnorm._BatchNorm) and users[0].args[:1] == (node,):
            pairs.append((str(node.target), str(users[0].target)))
    return pairs


def canonizers_for(module: nn.Module, merge_batchnorm: bool) -> list[Any]:
    """zennit canonizers for ``module``: merge batch norms, expose residual sums.

    Modules from the ONNX converter get ``NamedMergeBatchNorm`` over ``batchnorm_pairs``
    (their residual ``Add`` nodes already are ``zennit.layer.Sum`` modules, which the
    composites map to ``norm``); anything else ``SequentialMergeBatchNorm`` (torchvision style,
    = ``VGGCanonizer``), plus the block canonizers of zennit's ``ResNetCanonizer`` that route
    torchvision ResNet blocks' additions through ``Sum``.
    """
    canonizers: list[Any] = []
    if merge_batchnorm:
        pairs = batchnorm_pairs(module) if isinstance(module, torch.fx.GraphModule) else []
        if pairs:
            canonizers.append(NamedMergeBatchNorm([((lin,), bn) for lin, bn in pairs]))
        else:
            canonizers.append(SequentialMergeBatchNorm())
    canonizers += [ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer()]
    return canonizers


# ---------------------------------------------------------------------------------------------
# attribution


def zbox_bounds(
    backend: TorchBackend, low: float, high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(1, C, 1, 1)`` bounds of the first layer's input for z^B (Montavon et al.)."""
    lo = backend.to_input(np.full((1, 1, 1, 3), low, dtype=np.float32)).reshape(1, -1, 1, 1)
    hi = backend.to_input(np.full((1, 1, 1, 3), high, dtype=np.float32)).reshape(1, -1, 1, 1)
    return lo.detach(), hi.detach()


@dataclass
class LrpResult:
    """Batched LRP output: heatmaps ``(N, H, W)``, logits ``(N, K)``, explained outputs ``(N,)``."""

    heatmaps: np.ndarray
    logits: np.ndarray
    explained: np.ndarray


def initial_relevance(out: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
    """``R^(L)``: ``f_t e_t`` per row, minus ``f_c e_c`` for a contrast class."""
    init = torch.zeros_like(out)
    rows = torch.arange(out.shape[0], device=out.device)
    t = torch.tensor([tg.index for tg in targets], device=out.device)
    init[rows, t] = out[rows, t]
    for i, tg in enumerate(targets):
        if tg.contrast is not None:
            init[i, tg.contrast] -= out[i, tg.contrast]
    return init.detach()


def lrp_attribute(
    backend: TorchBackend, images: np.ndarray, targets: Sequence[Target], params: LrpParams
) -> LrpResult:
    """LRP heatmaps for a batch of images ``(N, H, W, 3)`` in one forward/backward pass."""
    if len(targets) != images.shape[0]:
        raise ValueError("one target per image")
    module = backend.module
    x = backend.to_input(images)
    order = layer_order(module, x)
    lo, hi = zbox_bounds(backend, params.low, params.high)
    settings = RuleSettings(epsilon=params.epsilon, low=lo, high=hi)
    overrides = [RuleOverride(r.rule, r.layer_type, r.position, r.layer_name) for r in params.rules]
    composite = build_composite(
        module,
        order,
        params.composite,
        flat_layers=params.flat_layers,
        overrides=overrides,
        settings=settings,
        canonizers=canonizers_for(module, params.merge_batchnorm),
    )
    x = x.detach().requires_grad_(True)
    with composite.context(module) as hooked:
        out = hooked(x)
        num_classes = out.shape[1]
        for tg in targets:
            for k in (tg.index, tg.contrast):
                if k is not None and not 0 <= k < num_classes:
                    raise InvalidInput(f"class {k} is out of range (model has {num_classes})")
        init = initial_relevance(out, targets)
        (relevance,) = torch.autograd.grad(out, x, grad_outputs=init)
    return LrpResult(
        heatmaps=backend.to_heatmap(relevance),
        logits=out.detach().cpu().numpy().astype(np.float64),
        explained=init.sum(dim=1).cpu().numpy().astype(np.float64),
    )


def lrp_cost(params: LrpParams, size: tuple[int, int]) -> int:
    """Forward-pass equivalents: one forward, and a backward whose rules re-run each layer
    once (z, ε, flat), twice (z⁺) or four times (αβ)."""
    spec = COMPOSITES.get(params.composite)
    heavy = spec is not None and "alpha" in spec.conv
    return 5 if heavy else 3


@register_method("lrp", params=LrpParams, backend="whitebox", cost=lrp_cost, signed=True)
def explain(
    model: WhiteBoxModel, image: np.ndarray, target: Target, params: LrpParams
) -> Explanation:
    """LRP heatmap of ``target`` (Kohlbrenner et al.: composites; Samek et al. Eqs. 7–8)."""
    with model.torch_backend() as backend:
        result = lrp_attribute(backend, image[None], [target], params)
    heatmap = result.heatmaps[0]
    logits = result.logits[0]
    values = {
        "relevance_sum": float(heatmap.sum(dtype=np.float64)),
        "target_logit": float(logits[target.index]),
        "explained_output": float(result.explained[0]),
    }
    if target.contrast is not None:
        values["contrast_logit"] = float(logits[target.contrast])
    if model.output_kind == "logits":
        z = logits - logits.max()
        probability = float(np.exp(z[target.index]) / np.exp(z).sum())
    else:
        probability = float(logits[target.index])
    return Explanation(
        heatmap=heatmap.astype(np.float32),
        signed=True,
        values=values,
        target_probability=probability,
    )
