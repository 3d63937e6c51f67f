"""``gad``: gradient artificial distancing (Mazini Rodrigues et al.), Sections 4.3 and 5.

GAD filters a gradient-based attribution map with a *support set*: the support regression
networks fitted by ``FitGad`` (:mod:`xaiserve.jobs.gad_fitting`, Sections 4.1–4.2), one per
distance α. The base method runs on the original model and on every support model; "the final
attribution map includes only features present in all [...] attribution maps, the initial one
(classification model analyzed), and the [...] support regression models" (Fig. 3).

Feature importance. A pixel's importance in a map is the magnitude of its attribution,
``|h_p|``: the channel-pooled ℓ2 norm for saliency and deconvolution (already ≥ 0), the absolute
channel sum for gradient × input, guided backpropagation and integrated gradients (as the
paper's white-to-black importance maps, Fig. 2). "Present" means among the ``keep_fraction``
most important pixels of that map (:func:`xaiserve.evaluation.convex_hull.important_pixels`;
the paper keeps 50 %, Section 6). The GAD heatmap is the original map's importance on the
pixels kept by every map and 0 elsewhere (unsigned).

Evaluation (Section 5), for the target class ``a`` (``values``):

* ``rc``: Eq. 1, ``A(CH_GAD) / A(CH_Orig)``, ``CH_GAD`` the convex hull of the kept pixels,
  ``CH_Orig`` the convex hull of the original map's ``keep_fraction`` most important pixels.
  ``rc < 1``: GAD's region is smaller (Table 1). ``rc_original`` is ``A(CH_Orig)`` over the
  image area and ``hull_area`` is ``A(CH_GAD)`` over the image area. Every kept pixel is among
  the original map's most important ones, so ``CH_GAD ⊆ CH_Orig`` and ``rc ≤ 1`` always;
  ``rc = 1`` when the support maps remove none of the hull's extreme pixels.
* ``rs``, ``rs_original``, ``rs_supplementary``: Eq. 2, ``|N_a(I) − N_a(I × (1 − M))| / ΣM``
  for ``M = M_GAD``, ``M_Orig`` and the supplementary mask ``M_Orig − M_GAD`` (Table 2); ``N_a``
  is the original network's pre-softmax output (Section 4.1; for a probability model, its
  linear-output copy). A value is left out when its mask is empty.

Support models come from the model facade (``model.support_set(id)``, see
:mod:`xaiserve.models.support_models`): loaded once per (model version, support set), each
behind its own pool of module copies, so a base method's hooks sit on a copy leased to one
request only and are checked on release.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from xaiserve.contracts.footprint import Footprint, image_bytes
from xaiserve.contracts.names import validate_name
from xaiserve.errors import FailedPrecondition, InvalidInput
from xaiserve.evaluation.convex_hull import convex_hull_mask, hull_sensitivity, important_pixels
from xaiserve.methods import gradients as _gradients
from xaiserve.methods.base import (
    Explanation,
    Target,
    WhiteBoxModel,
    get_method,
    register_method,
)

GadBaseMethod = Literal[
    "saliency", "deconvolution", "gradient_times_input", "guided_backprop", "integrated_gradients"
]
DEFAULT_ALPHAS: tuple[float, ...] = (2.0, 4.0, 6.0, 8.0)
"""The support models' α schedule when ``FitGad`` names none (Section 6)."""
_RS_PASSES = 6  # three occlusions (M_GAD, M_Orig, M_Orig − M_GAD), two images each


@dataclass
class GadParams:
    """``GadParams``: the support set (an id returned by ``FitGad``), the gradient-based base
    method (Section 2), the fraction of most important pixels kept per map (Section 6: 0.5) and
    the integration steps when the base is integrated gradients."""

    support_set: str = ""
    base_method: GadBaseMethod = "saliency"
    keep_fraction: float = 0.5
    steps: int = 50

    def __post_init__(self) -> None:
        if not self.support_set:
            raise InvalidInput("gad.support_set is required: the id returned by FitGad")
        validate_name(self.support_set, "gad.support_set")
        if not 0.0 < self.keep_fraction <= 1.0:
            raise InvalidInput(f"gad.keep_fraction is {self.keep_fraction}; it must be in (0, 1]")
        if not 1 <= self.steps <= _gradients.MAX_GAUSS_LEGENDRE_STEPS:
            raise InvalidInput(
                f"gad.steps is {self.steps}; it must be in 1..{_gradients.MAX_GAUSS_LEGENDRE_STEPS} "
                "(the integrated-gradients base integrates with Gauss–Legendre)"
            )


def base_params(params: GadParams) -> Any:
    """The base method's own parameters, built from its registered parameter type: its
    defaults, with ``steps`` passed on to a base that has it (integrated gradients)."""
    spec = get_method(params.base_method)
    names = {f.name for f in dataclasses.fields(spec.params_type)}
    return spec.params_type(**({"steps": params.steps} if "steps" in names else {}))


def _cost(params: GadParams, size: tuple[int, int]) -> int:
    """Forward passes: the base method's registered cost on the original and on the support
    models (assumed to be the default schedule's four; the parameters do not say how many the
    set holds), plus the occlusions of Eq. 2."""
    base = int(get_method(params.base_method).cost(base_params(params), size))
    return (1 + len(DEFAULT_ALPHAS)) * base + _RS_PASSES


def _memory(params: GadParams, size: tuple[int, int], num_classes: int) -> Footprint:
    """The base method's footprint (its runs are sequential), plus the maps of the original and
    every support model and the hull masks."""
    base = get_method(params.base_method).memory(base_params(params), size, num_classes)
    maps = (2 + len(DEFAULT_ALPHAS)) * 2 * image_bytes(size)
    return Footprint(base.bytes + maps, base.knob)


# ---------------------------------------------------------------------------------------------
# Section 4.3: the intersection of the important features


def importance(attribution: np.ndarray) -> np.ndarray:
    """A pixel's importance: the magnitude of its attribution, ``|h_p|`` (see module docs)."""
    return np.abs(np.asarray(attribution, dtype=np.float32))


def gad_filter(maps: Sequence[np.ndarray], keep_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Section 4.3 / Fig. 3: ``(heatmap, kept)`` where ``kept`` marks the pixels among the
    ``keep_fraction`` most important of *every* map (``maps[0]`` is the original model's) and
    ``heatmap`` is ``|maps[0]|`` on ``kept``, 0 elsewhere."""
    if not maps:
        raise InvalidInput("GAD needs at least the original model's map")
    weights = [importance(m) for m in maps]
    kept = np.ones(weights[0].shape, dtype=bool)
    for w in weights:
        if w.shape != kept.shape:
            raise InvalidInput(f"maps have different shapes: {w.shape} and {kept.shape}")
        kept &= important_pixels(w, keep_fraction)
    return np.where(kept, weights[0], 0.0).astype(np.float32), kept


# ---------------------------------------------------------------------------------------------
# the method


@register_method(
    "gad", params=GadParams, backend="whitebox", cost=_cost, memory=_memory, signed=False
)
def gad(model: WhiteBoxModel, image: np.ndarray, target: Target, params: GadParams) -> Explanation:
    """GAD (Section 4.3) over ``params.base_method``, with RC/RS of Section 5 (see module docs).

    ``maps``: ``original`` (the base method's map on the original model, as that method returns
    it), ``kept`` (uint8 mask of the features important in every map), ``hull`` and
    ``hull_original`` (uint8 convex-hull masks ``M_GAD`` and ``M_Orig``).
    """
    support_set = getattr(model, "support_set", None)
    if support_set is None:
        raise FailedPrecondition("gad needs a model from the repository (support sets live there)")
    loaded = support_set(params.support_set)
    spec = get_method(params.base_method)
    bp = base_params(params)
    explained: WhiteBoxModel = model if loaded.original is None else loaded.original
    original = spec.explain(explained, image, target, bp)
    maps = [np.asarray(original.heatmap, np.float32)]
    for support in loaded.supports:
        maps.append(np.asarray(spec.explain(support, image, target, bp).heatmap, np.float32))
    heatmap, kept = gad_filter(maps, params.keep_fraction)

    hull_orig = convex_hull_mask(important_pixels(importance(maps[0]), params.keep_fraction))
    hull_gad = convex_hull_mask(kept) if kept.any() else np.zeros_like(kept)
    supplementary = hull_orig & ~hull_gad
    size = float(kept.size)
    values = {
        "rc": float(hull_gad.sum() / hull_orig.sum()),
        "rc_original": float(hull_orig.sum() / size),
        "hull_area": float(hull_gad.sum() / size),
        "kept_fraction": float(kept.sum() / size),
        "support_models": float(len(loaded.supports)),
        "rs_original": hull_sensitivity(explained, image, hull_orig, target.index),
    }
    if hull_gad.any():
        values["rs"] = hull_sensitivity(explained, image, hull_gad, target.index)
    if supplementary.any():
        values["rs_supplementary"] = hull_sensitivity(explained, image, supplementary, target.index)
    return Explanation(
        heatmap=heatmap,
        signed=False,
        maps={
            "original": maps[0],
            "kept": kept.astype(np.uint8),
            "hull": hull_gad.astype(np.uint8),
            "hull_original": hull_orig.astype(np.uint8),
        },
        values=values,
    )


__all__ = ["DEFAULT_ALPHAS", "GadParams", "base_params", "gad", "gad_filter", "importance"]
