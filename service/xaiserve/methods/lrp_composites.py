"""LRP rules and composites (rule-per-layer assignments) on top of zennit.

Rules (Bach et al. 2015; Samek et al., Eqs. 7–8; Kohlbrenner et al., Sec. 2.1), each a zennit hook:

- ``z``: LRP_z, Kohlbrenner et al. Eq. (1), ``R_i = Σ_j z_ij / z_j R_j`` — zennit ``Epsilon`` with
  ε = 0 (a 1e-30 guard only turns ``0/0`` into ``0``; it is below float32 resolution of any
  non-zero ``z_j``).
- ``epsilon``: LRP_ε, Samek et al. Eq. (7) — zennit ``Epsilon(epsilon)``.
- ``zplus`` / ``alpha1beta0``: LRP_αβ with α=1, β=0 (Samek et al. Eq. 8; z⁺ rule of deep Taylor
  decomposition) — zennit ``ZPlus`` / ``AlphaBeta(1, 0)``.
- ``alpha2beta1``: LRP_αβ with α=2, β=1 (Samek et al. Eq. 8) — zennit ``AlphaBeta(2, 1)``.
- ``flat``: LRP_b ("flat"), Kohlbrenner et al. Sec. 2.1 — zennit ``Flat``.
- ``wsquare``: w² rule (Montavon et al. 2017) — zennit ``WSquare``.
- ``zbox``: DTD z^B rule for bounded input (Montavon et al. 2017) — zennit ``ZBox`` with the
  bounds of the image range mapped through the model's normalisation.
- ``pass`` / ``norm`` / ``gradient``: pass relevance through unchanged, normalise by the output
  (zennit ``Norm``, used for sums and average pooling), or leave the plain gradient.

Composites (Kohlbrenner et al., Sec. 2.2 and Table 1): LRP_CMP puts LRP_ε on dense layers and
LRP_αβ (α ∈ {1, 2}) on convolutions, optionally LRP_b on the first ``n`` layers; ``+b`` variants
use ``n = 1``. zennit's named composites ``EpsilonPlusFlat``, ``EpsilonAlpha2Beta1Flat``,
``EpsilonPlus`` and ``EpsilonAlpha2Beta1`` are LRP_CMP:α1+b, α2+b, α1, α2. Uniform single-rule
composites (``lrp_z``, ``lrp_epsilon``, ``lrp_alpha1beta0``, ``lrp_alpha2beta1``) are the paper's
comparison rows. Every composite maps activations and batch norms to ``pass`` and sums and
average pooling to ``norm``, as zennit's ``layer_map_base`` does.

"Layers" (for ``flat_layers``, ``position`` and ``first``/``last``) are the modules with weights
that LRP redistributes through (convolutions and dense layers), counted from the input in the
order the forward pass executes them.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from zennit.core import Composite, Hook
from zennit.layer import Sum
from zennit.rules import AlphaBeta, Epsilon, Flat, Norm, Pass, WSquare, ZBox, ZPlus
from zennit.types import Activation, AvgPool, BatchNorm, Convolution, Linear, MaxPool

from xaiserve.errors import InvalidInput

Z_GUARD = 1e-30
"""Stabiliser of the ``z`` rule: only turns ``0/0`` into ``0`` (Kohlbrenner et al. Eq. 1)."""

PARAM_RULES = ("z", "epsilon", "zplus", "alpha1beta0", "alpha2beta1", "flat", "wsquare", "zbox")
"""Rules that redistribute through a layer's weights (convolutions and dense layers only)."""
RULES = (*PARAM_RULES, "pass", "norm", "gradient")

LAYER_TYPES = (
    "conv", "linear", "dense", "first", "last", "activation", "batchnorm", "avgpool", "maxpool",
    "sum",
)  # fmt: skip


@dataclass(frozen=True)
class RuleSettings:
    """Numeric settings shared by the rules of one composite."""

    epsilon: float = 1e-6
    stabilizer: float = 1e-6
    low: torch.Tensor | float = 0.0
    high: torch.Tensor | float = 1.0


def make_rule(name: str, s: RuleSettings) -> Hook | None:
    """The zennit hook for rule ``name`` (``None`` for ``gradient``: no hook)."""
    if name == "z":
        return Epsilon(epsilon=Z_GUARD)
    if name == "epsilon":
        return Epsilon(epsilon=s.epsilon)
    if name == "zplus":
        return ZPlus(stabilizer=s.stabilizer)
    if name == "alpha1beta0":
        return AlphaBeta(alpha=1.0, beta=0.0, stabilizer=s.stabilizer)
    if name == "alpha2beta1":
        return AlphaBeta(alpha=2.0, beta=1.0, stabilizer=s.stabilizer)
    if name == "flat":
        return Flat(stabilizer=s.stabilizer)
    if name == "wsquare":
        return WSquare(stabilizer=s.stabilizer)
    if name == "zbox":
        return ZBox(low=s.low, high=s.high, stabilizer=s.stabilizer)
    if name == "pass":
        return Pass()
    if name == "norm":
        return Norm(stabilizer=s.stabilizer)
    if name == "gradient":
        return None
    raise InvalidInput(f"LRP rule {name!r} is unknown; choose one of {', '.join(RULES)}")


@dataclass(frozen=True)
class CompositeSpec:
    """A named composite: rule for convolutions, for dense layers, and default flat layers."""

    conv: str
    dense: str
    flat_layers: int
    description: str
    exact: bool = False  # LRP_z: no stabiliser anywhere (sums and pooling get Z_GUARD too)


COMPOSITES: dict[str, CompositeSpec] = {
    "epsilon_plus_flat": CompositeSpec(
        "zplus", "epsilon", 1, "LRP_CMP:α1+b (zennit EpsilonPlusFlat)"
    ),
    "epsilon_alpha2beta1_flat": CompositeSpec(
        "alpha2beta1", "epsilon", 1, "LRP_CMP:α2+b (zennit EpsilonAlpha2Beta1Flat)"
    ),
    "epsilon_plus": CompositeSpec("zplus", "epsilon", 0, "LRP_CMP:α1 (zennit EpsilonPlus)"),
    "epsilon_alpha2beta1": CompositeSpec(
        "alpha2beta1", "epsilon", 0, "LRP_CMP:α2 (zennit EpsilonAlpha2Beta1)"
    ),
    "lrp_cmp_alpha1beta0": CompositeSpec("alpha1beta0", "epsilon", 0, "LRP_CMP:α1"),
    "lrp_cmp_alpha2beta1": CompositeSpec("alpha2beta1", "epsilon", 0, "LRP_CMP:α2"),
    "lrp_cmp_alpha1beta0_flat": CompositeSpec("alpha1beta0", "epsilon", 1, "LRP_CMP:α1+b"),
    "lrp_cmp_alpha2beta1_flat": CompositeSpec("alpha2beta1", "epsilon", 1, "LRP_CMP:α2+b"),
    "lrp_z": CompositeSpec("z", "z", 0, "LRP_z uniformly (Kohlbrenner et al. Eq. 1)", exact=True),
    "lrp_epsilon": CompositeSpec("epsilon", "epsilon", 0, "LRP_ε uniformly (Samek et al. Eq. 7)"),
    "lrp_alpha1beta0": CompositeSpec("alpha1beta0", "alpha1beta0", 0, "LRP_α1β0 uniformly"),
    "lrp_alpha2beta1": CompositeSpec("alpha2beta1", "alpha2beta1", 0, "LRP_α2β1 uniformly"),
}
"""Named composites (Kohlbrenner et al. Table 1 rows), by the name clients use."""


@dataclass(frozen=True)
class RuleOverride:
    """One override of a custom composite: where (exactly one of three) and which rule."""

    rule: str
    layer_type: str | None = None
    position: int | None = None
    layer_name: str | None = None


# ---------------------------------------------------------------------------------------------
# layer order


_ORDER_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[str, ...]] = weakref.WeakKeyDictionary()


def layer_order(module: nn.Module, example: torch.Tensor) -> tuple[str, ...]:
    """Names of the weighted layers (``zennit.types.Linear``) in forward-execution order.

    Found once per module object with one forward pass of ``example[:1]`` (cached).
    """
    cached = _ORDER_CACHE.get(module)
    if cached is not None:
        return cached
    seen: list[str] = []
    handles = []
    for name, sub in module.named_modules():
        if isinstance(sub, Linear):

            def record(_m: nn.Module, _i: Any, name: str = name) -> None:
                if name not in seen:
                    seen.append(name)

            handles.append(sub.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            module(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    order = tuple(seen)
    _ORDER_CACHE[module] = order
    return order


# ---------------------------------------------------------------------------------------------
# composite


def _type_matches(layer_type: str, module: nn.Module, name: str, order: Sequence[str]) -> bool:
    if layer_type == "conv":
        return isinstance(module, Convolution)
    if layer_type in ("linear", "dense"):
        return isinstance(module, nn.Linear)
    if layer_type == "first":
        return bool(order) and name == order[0]
    if layer_type == "last":
        return bool(order) and name == order[-1]
    if layer_type == "activation":
        return isinstance(module, Activation)
    if layer_type == "batchnorm":
        return isinstance(module, BatchNorm)
    if layer_type == "avgpool":
        return isinstance(module, AvgPool)
    if layer_type == "maxpool":
        return isinstance(module, MaxPool)
    if layer_type == "sum":
        return isinstance(module, Sum)
    raise InvalidInput(
        f"layer_type {layer_type!r} is unknown; choose one of {', '.join(LAYER_TYPES)}"
    )


def check_overrides(overrides: Sequence[RuleOverride]) -> None:
    """Validate the overrides' shape (names of rules and layer types, one location each)."""
    for i, o in enumerate(overrides):
        where = [w for w in (o.layer_type, o.position, o.layer_name) if w is not None]
        if len(where) != 1:
            raise InvalidInput(f"rules[{i}]: set exactly one of layer_type, position or layer_name")
        if o.rule not in RULES:
            raise InvalidInput(
                f"rules[{i}].rule {o.rule!r} is unknown; choose one of {', '.join(RULES)}"
            )
        if o.layer_type is not None and o.layer_type not in LAYER_TYPES:
            raise InvalidInput(
                f"rules[{i}].layer_type {o.layer_type!r} is unknown; "
                f"choose one of {', '.join(LAYER_TYPES)}"
            )
        if o.position is not None and o.position < 0:
            raise InvalidInput(f"rules[{i}].position must be ≥ 0")


def resolve_rules(
    module: nn.Module,
    order: Sequence[str],
    spec: CompositeSpec,
    flat_layers: int,
    overrides: Sequence[RuleOverride],
) -> Callable[[str, nn.Module], str | None]:
    """The rule name for each ``(name, module)`` (called at registration, after canonizers).

    Base composite first (Kohlbrenner et al. Sec. 2.2: dense → ``spec.dense``, convolutions →
    ``spec.conv``, the first ``flat_layers`` layers → flat), then ``overrides`` in order, later
    ones winning.
    """
    check_overrides(overrides)
    index = {name: i for i, name in enumerate(order)}
    names = dict(module.named_modules())
    for i, o in enumerate(overrides):
        if o.layer_name is not None and o.layer_name not in names:
            raise InvalidInput(
                f"rules[{i}].layer_name {o.layer_name!r} is not a module of the model"
            )
        if o.position is not None and o.position >= len(order):
            raise InvalidInput(
                f"rules[{i}].position {o.position} is out of range: the model has {len(order)} layers"
            )
        targets = [n for n, m in names.items() if _override_hits(o, n, m, index, order)]
        if o.rule in PARAM_RULES and (
            bad := [n for n in targets if not isinstance(names[n], Linear)]
        ):
            raise InvalidInput(
                f"rules[{i}]: rule {o.rule!r} needs a convolution or dense layer, not {bad[0]!r}"
            )
        if o.rule == "pass" and (bad := [n for n in targets if isinstance(names[n], Linear)]):
            raise InvalidInput(
                f"rules[{i}]: rule 'pass' keeps the shape; it cannot replace layer {bad[0]!r}"
            )

    def rule_for(name: str, sub: nn.Module) -> str | None:
        rule: str | None = None
        if name in index:
            rule = (
                "flat"
                if index[name] < flat_layers
                else (spec.conv if isinstance(sub, Convolution) else spec.dense)
            )
        elif isinstance(sub, (Activation, BatchNorm)):
            rule = "pass"
        elif isinstance(sub, (Sum, AvgPool)):
            rule = "norm"
        for o in overrides:
            if _override_hits(o, name, sub, index, order):
                rule = o.rule
        return rule

    return rule_for


def _override_hits(
    o: RuleOverride, name: str, sub: nn.Module, index: Mapping[str, int], order: Sequence[str]
) -> bool:
    if o.layer_name is not None:
        return name == o.layer_name
    if o.position is not None:
        return index.get(name) == o.position
    assert o.layer_type is not None
    return _type_matches(o.layer_type, sub, name, order)


class RuleComposite(Composite):  # type: ignore[misc]
    """A zennit ``Composite`` whose module map is :func:`resolve_rules` (names and types)."""

    def __init__(
        self,
        rule_for: Callable[[str, nn.Module], str | None],
        settings: RuleSettings,
        canonizers: Sequence[Any] = (),
    ) -> None:
        self._rule_for = rule_for
        self._settings = settings
        super().__init__(module_map=self._map, canonizers=list(canonizers))

    def _map(self, ctx: dict[str, Any], name: str, module: nn.Module) -> Hook | None:
        rule = self._rule_for(name, module)
        if rule is None:
            return None
        settings = self._settings
        if rule == "zbox" and isinstance(module, nn.Linear):  # flat input: scalar bounds
            low, high = torch.as_tensor(settings.low), torch.as_tensor(settings.high)
            settings = RuleSettings(
                settings.epsilon, settings.stabilizer, float(low.min()), float(high.max())
            )
        return make_rule(rule, settings)


def build_composite(
    module: nn.Module,
    order: Sequence[str],
    composite: str,
    *,
    flat_layers: int | None,
    overrides: Sequence[RuleOverride],
    settings: RuleSettings,
    canonizers: Sequence[Any],
) -> RuleComposite:
    """The composite named ``composite`` with optional ``flat_layers`` and overrides."""
    try:
        spec = COMPOSITES[composite]
    except KeyError:
        raise InvalidInput(
            f"composite {composite!r} is unknown; choose one of {', '.join(COMPOSITES)}"
        ) from None
    n_flat = spec.flat_layers if flat_layers is None else flat_layers
    rule_for = resolve_rules(module, order, spec, n_flat, overrides)
    if spec.exact:
        settings = dataclasses.replace(settings, stabilizer=Z_GUARD)
    return RuleComposite(rule_for, settings, canonizers)
