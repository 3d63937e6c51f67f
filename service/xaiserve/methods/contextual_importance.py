"""Contextual importance (CI) and contextual utility (CU) over superpixels.

Anjomshoae, Jiang & Främling, "Visual Explanations for DNNs with Contextual Importance".
The image (the context ``C``) is over-segmented into interpretable regions; each region ``i``
is removed in turn (its pixels replaced by a *fill*), giving the perturbed samples ``(C, {i})``
of Algorithm 1, and

    Eq. 2:  CI_j(C, {i}) = (out_j(C) − out_j(C, {i})) / (absmax_j − absmin_j)

is the heatmap (per pixel, the CI of its region). Beyond the paper's on/off perturbation, each
region is also replaced by every fill in ``utility_fills``; with the removal fill and the
unperturbed value these are the observed outputs of Eq. 1:

    Eq. 1:  CI_j(C, {i}) = (Cmax_j(C, {i}) − Cmin_j(C, {i})) / (absmax_j − absmin_j)
            CU_j(C, {i}) = (out_j(C) − Cmin_j(C, {i})) / (Cmax_j(C, {i}) − Cmin_j(C, {i}))

returned as ``maps["ci_range"]`` and ``maps["cu"]``. CU is the contextual utility of Främling's
CIU (Anjomshoae et al. 2019, the paper's ref. [3]); where ``Cmax = Cmin`` (no replacement moved
the output) it is undefined and set to :data:`NEUTRAL_CU` = 0.5 (the current value is neither
better nor worse than any alternative observed).

Regions with Eq. 2 CI above ``threshold`` (default 0.01, Section 3.2) form ``maps["mask"]``;
the image keeping only them (every other region replaced by the removal fill) gives the
"explanation score" of Section 4 (``values["explanation_score"]``). With a contrast class
``c`` (Section 4.2/4.4), ``maps["ci_contrast"]`` is CI_c from the same forward passes and
``maps["ci_difference"]`` = CI_j − CI_c ("why j and not c"); for a misclassified image ask
for the true class with the predicted class as contrast.

Fills (``xaiserve.imaging.fills``): one replacement image per fill and request (random fills
drawn once from ``seed``) serves every region and the explanation-score image.

Sign: Eq. 2 is negative where removing a region *raises* out_j (the region is evidence against
j). The map keeps that sign, so the method is registered ``signed=True`` and each
:class:`Explanation` has ``signed`` true exactly when one of its regions has CI < 0.

Forward passes: every perturbation of a request goes through ONE ``model.predict`` call as a
lazily generated stream of chunks (out(C) first, then the K removals, then K per extra utility
fill); the explanation-score image needs the CI values, so it is a second call of one image.
Total: ``2 + K · F`` with F the number of distinct fills (removal fill ∪ utility_fills).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from xaiserve.contracts.footprint import Footprint, image_bytes, scores_bytes
from xaiserve.contracts.input import Layout
from xaiserve.contracts.models import NetworkInputModel
from xaiserve.errors import InvalidInput
from xaiserve.imaging.fills import MAX_BLUR_SIGMA, Fill, check_fill, fill_image
from xaiserve.imaging.preprocess import pixel_rows, to_network_input
from xaiserve.imaging.segmentation import SegmentationParams, relabel_contiguous
from xaiserve.imaging.segmenter import Superpixels, shared_segmenter
from xaiserve.methods.base import (
    BlackBoxModel,
    Explanation,
    OutputSpace,
    Target,
    register_method,
)

CHUNK_BYTES = 16 << 20
"""Memory per chunk of the perturbation stream (the model re-batches whatever it receives)."""

MAX_CHUNK = 64
"""At most this many images per chunk, however small they are."""

NEUTRAL_CU = 0.5
"""CU where Cmax = Cmin (Eq. 1's range is empty, the utility undefined)."""

_FLAT_RANGE = 1e-9
"""Cmax − Cmin at or below this fraction of (absmax − absmin) counts as Cmax = Cmin."""


@dataclass(frozen=True)
class ContextualImportanceParams:
    """Parameters of contextual importance (proto ``ContextualImportanceParams``).

    ``fill`` removes a region for Eq. 2 (default ``"black"``: the paper's MNIST digits are
    removed to the black background); ``utility_fills`` are the further replacement values of
    Eq. 1; ``absmin``/``absmax`` bound output j (0 and 1 for probabilities; set them for
    ``output="raw"`` logits); ``threshold`` selects the explanation regions (Section 3.2);
    ``seed`` drives the random fills (``noise``, ``uniform``), drawn once per fill per request;
    ``blur_sigma`` is the Gaussian σ (pixels) of the ``blur`` fill.
    """

    segmentation: SegmentationParams = field(default_factory=SegmentationParams)
    fill: Fill = "black"
    utility_fills: tuple[Fill, ...] = ()
    absmin: float = 0.0
    absmax: float = 1.0
    threshold: float = 0.01
    output: OutputSpace = "probabilities"
    seed: int = 0
    blur_sigma: float = 5.0

    def __post_init__(self) -> None:
        check_fill(self.fill, "fill")
        object.__setattr__(self, "utility_fills", tuple(self.utility_fills))
        for name in self.utility_fills:
            check_fill(name, "utility_fills")
        if not (math.isfinite(self.absmin) and math.isfinite(self.absmax)):
            raise InvalidInput("absmin and absmax must be finite")
        if self.absmax <= self.absmin:
            raise InvalidInput(
                f"absmax ({self.absmax}) must be greater than absmin ({self.absmin})"
            )
        if not math.isfinite(self.threshold):
            raise InvalidInput("threshold must be finite")
        if self.output not in ("probabilities", "raw"):
            raise InvalidInput(f"output {self.output!r} is unknown; choose probabilities or raw")
        if not 0 <= self.seed < 2**64:
            raise InvalidInput(f"seed is {self.seed}; it must be in 0..2**64-1")
        if not (math.isfinite(self.blur_sigma) and 0 <= self.blur_sigma <= MAX_BLUR_SIGMA):
            raise InvalidInput(f"blur_sigma must be in 0..{MAX_BLUR_SIGMA:g} (pixels)")

    @property
    def perturbation_fills(self) -> tuple[Fill, ...]:
        """The removal fill, then the utility fills not already listed (Eq. 1's values)."""
        return tuple(dict.fromkeys((self.fill, *self.utility_fills)))


def forward_passes(n_regions: int, params: ContextualImportanceParams) -> int:
    """Images sent to ``predict`` for ``n_regions`` regions: out(C), K·F perturbations, and
    the explanation-score image."""
    return 2 + n_regions * len(params.perturbation_fills)


def cost(params: ContextualImportanceParams, size: tuple[int, int]) -> int:
    """Forward passes of a request, taking ``segmentation.n_segments`` as the region count K.

    Exact for precomputed segments and whenever the segmentation returns ``n_segments``
    regions; SLIC usually returns somewhat fewer (sometimes a few more), and Felzenszwalb and
    quickshift ignore ``n_segments``, so for them it is only an estimate.
    """
    h, w = size
    return forward_passes(min(params.segmentation.n_segments, h * w), params)


def memory(
    params: ContextualImportanceParams, size: tuple[int, int], num_classes: int
) -> Footprint:
    """One replacement image per fill, a chunk of perturbed images (:data:`CHUNK_BYTES`), the
    region pixel lists and label map, the output maps, and the scores of every perturbation."""
    fills = len(params.perturbation_fills)
    images = (fills + 12) * image_bytes(size) + CHUNK_BYTES
    scores = scores_bytes(cost(params, size), num_classes)
    knob = "contextual_importance.segmentation.n_segments" if scores > images else "image"
    return Footprint(images + 16 * size[0] * size[1] + scores, knob)


@register_method(
    "contextual_importance",
    params=ContextualImportanceParams,
    backend="blackbox",
    cost=cost,
    memory=memory,
    signed=True,
)
def contextual_importance(
    model: BlackBoxModel, image: np.ndarray, target: Target, params: ContextualImportanceParams
) -> Explanation:
    """Algorithm 1 over superpixels of ``image`` (see the module docstring for the outputs).

    The superpixels come from the shared segmenter (:mod:`xaiserve.imaging.segmenter`): cached
    by image content and parameters, computed in its bounded worker pool on a miss.
    """
    segmenter = shared_segmenter()
    segments = segmenter.get(segmenter.image(image), Superpixels(params.segmentation))
    return contextual_importance_from_segments(model, image, segments, target, params)


def contextual_importance_from_segments(
    model: BlackBoxModel,
    image: np.ndarray,
    segments: np.ndarray,
    target: Target,
    params: ContextualImportanceParams,
) -> Explanation:
    """Algorithm 1 with given regions: ``segments`` is an integer label map ``(H, W)``.

    Labels need not be contiguous; they are renumbered ``0..K-1`` in sorted order. Returns
    (every map ``(H, W)`` and constant on each region; float32 except the bool ``mask``):

    - ``heatmap``: CI_j(C, {i}) of Eq. 2; ``signed`` when some region's CI is negative.
    - ``maps``: ``segments`` (the renumbered labels), ``mask`` (1 on regions with CI_j above
      ``threshold``), ``ci_range`` and ``cu`` (Eq. 1 and CU), and with a contrast class c
      ``ci_contrast`` (CI_c of Eq. 2) and ``ci_difference`` (CI_j − CI_c).
    - ``values``: ``n_regions``, ``n_regions_above_threshold``, ``target_output`` (out_j(C)),
      ``explanation_score`` (out_j of the image keeping only the masked regions),
      ``forward_passes``, and with a contrast ``contrast_output`` (out_c(C)) and
      ``explanation_score_contrast`` (out_c of that same image).
    - ``target_probability``: p(j | C), from out(C) (softmax of logits for ``output="raw"``).
    """
    image = np.asarray(image, dtype=np.float32)
    _check_inputs(model, image, segments, target)
    labels = _contiguous(np.asarray(segments))
    n_regions = int(labels.max()) + 1
    j, c = target.index, target.contrast
    fills = params.perturbation_fills
    rng = np.random.default_rng(params.seed)
    replacements = [fill_image(image, name, rng, params.blur_sigma) for name in fills]
    regions = _region_pixels(labels, n_regions)

    # Algorithm 1, lines 1–2: out(C) and every (C, {i}) in one lazily consumed stream; in the
    # network's input format when the model takes it (the image and each fill converted once,
    # bit for bit the converted perturbed images: the conversion is elementwise).
    if isinstance(model, NetworkInputModel):
        pre = model.preprocessing
        net = [to_network_input(x[None], pre)[0] for x in (image, *replacements)]
        stream = _perturbations(net[0], regions, net[1:], layout=pre.layout)
        raw = model.predict_network_input(stream, output=params.output)
    else:
        raw = model.predict(_perturbations(image, regions, replacements), output=params.output)
    outputs = np.asarray(raw, dtype=np.float64)
    expected = 1 + n_regions * len(fills)
    if outputs.shape[0] != expected:
        raise RuntimeError(f"model returned {outputs.shape[0]} rows for {expected} images")
    out_c = outputs[0]  # out(C), every class
    out_removed = outputs[1:].reshape(len(fills), n_regions, -1)  # [fill, region, class]
    span = params.absmax - params.absmin

    # Line 3: Eq. 2 for every class at once (the contrast class costs no extra pass).
    ci_all = (out_c[None, :] - out_removed[0]) / span  # [region, class]
    ci = ci_all[:, j]

    # Eq. 1 over {out_j(C)} ∪ {out_j(C, {i}) with region i replaced by each fill}, and CU.
    observed = np.vstack([np.full(n_regions, out_c[j]), out_removed[:, :, j]])  # [value, region]
    cmax, cmin = observed.max(axis=0), observed.min(axis=0)
    ci_range = (cmax - cmin) / span
    flat = (cmax - cmin) <= _FLAT_RANGE * span
    cu = np.where(flat, NEUTRAL_CU, (out_c[j] - cmin) / np.where(flat, 1.0, cmax - cmin))

    # Section 3.2/4: regions above the threshold, and the score of the image keeping only them.
    keep = ci > params.threshold
    kept_image = image.copy()
    dropped = ~keep[labels]
    kept_image[dropped] = replacements[0][dropped]
    out_kept = np.asarray(model.predict(kept_image[None], output=params.output), np.float64)[0]

    def per_pixel(values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float32)[labels]

    maps = {
        "segments": labels.astype(np.float32),
        "mask": keep[labels],  # bool: travels as a uint8 tensor
        "ci_range": per_pixel(ci_range),
        "cu": per_pixel(cu),
    }
    values = {
        "n_regions": float(n_regions),
        "n_regions_above_threshold": float(keep.sum()),
        "explanation_score": float(out_kept[j]),
        "target_output": float(out_c[j]),
        "forward_passes": float(forward_passes(n_regions, params)),
    }
    if c is not None:
        ci_contrast = ci_all[:, c]
        maps["ci_contrast"] = per_pixel(ci_contrast)
        maps["ci_difference"] = per_pixel(ci - ci_contrast)
        values["contrast_output"] = float(out_c[c])
        values["explanation_score_contrast"] = float(out_kept[c])
    return Explanation(
        heatmap=per_pixel(ci),
        signed=bool((ci < 0).any()),
        maps=maps,
        values=values,
        target_probability=_probability(model, out_c, j, params.output),
    )


def _check_inputs(
    model: BlackBoxModel, image: np.ndarray, segments: np.ndarray, target: Target
) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInput(f"image must be (H, W, 3), got {image.shape}")
    if tuple(image.shape[:2]) != tuple(model.input_size):
        raise InvalidInput(f"image is {image.shape[:2]}, the model takes {model.input_size}")
    if np.shape(segments) != image.shape[:2]:
        raise InvalidInput(f"segments {np.shape(segments)} do not match image {image.shape[:2]}")
    if not np.issubdtype(np.asarray(segments).dtype, np.integer):
        raise InvalidInput("segments must be an integer label map")
    for name, index in (("target", target.index), ("contrast", target.contrast)):
        if index is not None and not 0 <= index < model.num_classes:
            raise InvalidInput(f"{name} class {index} is outside 0..{model.num_classes - 1}")


def _contiguous(segments: np.ndarray) -> np.ndarray:
    """``segments`` as int32 labels 0..K-1 (renumbered only when they are not already)."""
    if (
        segments.min() >= 0
        and segments.max() < segments.size
        and np.bincount(segments.ravel()).all()
    ):
        return segments.astype(np.int32, copy=False)
    return relabel_contiguous(segments)


def _region_pixels(labels: np.ndarray, n_regions: int) -> list[np.ndarray]:
    """Flat pixel indices of each region (one sort instead of K full-image comparisons)."""
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.cumsum(np.bincount(flat, minlength=n_regions))[:-1]
    return np.split(order, bounds)


def _perturbations(
    image: np.ndarray,
    regions: Sequence[np.ndarray],
    replacements: Sequence[np.ndarray],
    chunk_size: int | None = None,
    layout: Layout | None = None,
) -> Iterator[np.ndarray]:
    """Chunks ``(n, H, W, 3)`` of: C itself, then (C, {i}) for every fill (outer) and region
    i (inner), region i's pixels taken from the fill's replacement image. A chunk holds about
    :data:`CHUNK_BYTES` (at most :data:`MAX_CHUNK` images) unless ``chunk_size`` is given.
    With ``layout``, ``image`` and ``replacements`` are network inputs in that layout, and so
    are the chunks."""
    if chunk_size is None:
        chunk_size = max(1, min(MAX_CHUNK, CHUNK_BYTES // (image.size * 4)))
    jobs: list[tuple[np.ndarray, np.ndarray] | None] = [None]
    jobs += [(pixel_rows(r, layout), idx) for r in replacements for idx in regions]
    for start in range(0, len(jobs), chunk_size):
        part = jobs[start : start + chunk_size]
        chunk = np.empty((len(part), *image.shape), dtype=np.float32)
        chunk[:] = image
        pixels = pixel_rows(chunk, layout)
        for n, job in enumerate(part):
            if job is not None:
                source, idx = job
                pixels[n, idx] = source[idx]
        yield chunk


def _probability(model: BlackBoxModel, out_c: np.ndarray, j: int, output: OutputSpace) -> float:
    """p(j | C) from the outputs already computed (softmax of raw logits)."""
    if output == "probabilities" or model.output_kind == "probabilities":
        return float(out_c[j])
    shifted = np.exp(out_c - out_c.max())
    return float(shifted[j] / shifted.sum())
