"""Method resolution: registered name → spec, parameters parsed, seed drawn, cost checked."""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

from xaiserve import tracing
from xaiserve.config import Settings
from xaiserve.contracts.footprint import Footprint, check_footprint
from xaiserve.core.services import Services
from xaiserve.core.types import MethodChoice
from xaiserve.errors import InvalidInput, LimitExceeded
from xaiserve.methods import catalog as _catalog  # noqa: F401 - registers the methods
from xaiserve.methods import get_method, registered_methods
from xaiserve.methods.base import Explanation, MethodSpec, Target
from xaiserve.methods.params import params_from_mapping, params_to_dict
from xaiserve.models.model import Model


@dataclasses.dataclass
class ResolvedMethod:
    """A method ready to run: its spec, parsed parameters (seed filled in), those parameters as
    a plain dict (for provenance) and the seed (``None`` for deterministic methods)."""

    spec: MethodSpec
    params: Any
    params_dict: dict[str, Any]
    seed: int | None
    footprint: Footprint = dataclasses.field(default_factory=lambda: Footprint(0, "image"))
    """Declared peak memory (``MethodSpec.memory``, plus one torch batch for white-box)."""


def with_seed(params: Any) -> tuple[Any, int | None]:
    """Fill in a random seed where the parameters have a ``seed`` field the client left unset,
    so that every result can be reproduced from its provenance."""
    if "seed" not in {f.name for f in dataclasses.fields(params)}:
        return params, None
    seed = params.seed if params.seed is not None else secrets.randbits(32)
    return dataclasses.replace(params, seed=seed), seed


def check_cost(settings: Settings, cost: int, what: str, remedy: str) -> None:
    """Refuse work over ``max_forward_passes`` before any of it runs."""
    if cost > settings.max_forward_passes:
        raise LimitExceeded(
            f"{what} needs {cost} forward passes, over the per-request limit of "
            f"{settings.max_forward_passes} (max_forward_passes): {remedy}"
        )


def resolve_method(services: Services, model: Model, choice: MethodChoice) -> ResolvedMethod:
    """The registered method ``choice`` names, for ``model``, its cost checked."""
    if choice.name is None:
        names = ", ".join(registered_methods())
        raise InvalidInput(f"{choice.field} is missing: set one of {names}")
    services.observe_method(choice.name)
    spec = get_method(choice.name)
    if not model.supports(spec.model_backend):
        raise model.unsupported(spec.name)
    parsed = params_from_mapping(spec.params_type, dict(choice.params), f"{spec.name}.")
    parsed, seed = with_seed(parsed)
    check_cost(
        services.settings,
        int(spec.cost(parsed, model.input_size)),
        f"method {spec.name!r} with these parameters",
        "use a larger stride, fewer samples or fewer steps",
    )
    footprint = spec.memory(parsed, model.input_size, model.num_classes)
    if spec.backend == "whitebox":  # plus one batch through the torch module
        footprint = Footprint(footprint.bytes + services.settings.torch_batch_bytes, footprint.knob)
    check_footprint(
        footprint,
        services.settings.max_request_bytes,
        f"method {spec.name!r} with these parameters",
    )
    return ResolvedMethod(spec, parsed, params_to_dict(parsed), seed, footprint)


def run_method(model: Model, image: Any, target: Target, method: ResolvedMethod) -> Explanation:
    """Run the resolved method inside a ``method <name>`` trace span (no-op with tracing off)."""
    with tracing.span(f"method {method.spec.name}", {"xaiserve.method": method.spec.name}):
        return method.spec.explain(model, image, target, method.params)
