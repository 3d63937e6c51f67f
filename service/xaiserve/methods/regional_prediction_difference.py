"""Regional multi-scale prediction difference (Seo et al., Algorithm 3).

For scales ``j = 1 … r`` the image is cut into exactly ``2^j`` superpixels
(:func:`xaiserve.imaging.exact_regions.exact_superpixels`). Region ``i`` is excluded by replacing
each of its pixels with an independent sample of ``N(μ, σ²)`` (line 6), where ``μ`` comes from
the boundary prior at ``2^8`` regions (line 2, :func:`~xaiserve.imaging.exact_regions.
boundary_prior`) and ``σ² = 10`` on the 0..255 scale. Every pixel ``q`` of region ``i`` gets
``s_q^j = max(0, g(p(c|x), p(c|x∖i)))`` (line 9) and the map is ``s = (1/r) Σ_j s^j`` (line 13).

Segmentation: the prior and every scale are asked of the shared segmenter
(:mod:`xaiserve.imaging.segmenter`) before the first forward pass, so they come from its cache
when the image was segmented before (another target, method or request) and otherwise run in
its bounded worker pool while this request's earlier scales and other requests' batches go
through the model. By default every scale is its own exact-count segmentation, as in the paper;
with ``segmentation.nested`` the scales are merged from the prior's ``2^8`` regions
(:func:`~xaiserve.imaging.exact_regions.nested_scales`: one SLIC per image instead of six).

Forward passes: the original image and the ``2^1 + … + 2^r`` exclusions (63 at ``r = 5``) go
through ``model.predict`` as one lazily generated stream of chunks; scale ``j``'s exclusions
are generated as soon as its labels are ready. At most one chunk of perturbed images exists at
a time.

Sampling is reproducible and order-independent: the noise of region ``i`` at scale ``j`` is
drawn from ``numpy.random.default_rng([seed, j, i])`` as ``standard_normal((n_i, 3))`` for the
region's ``n_i`` pixels in row-major order, so a literal one-image-at-a-time implementation draws
identical images. Samples are clipped to 0..255 (image space; the paper does not say).

Since the draws are a pure function of the labels, ``μ``, ``σ²``, the seed and the scale, every
scale's draws (with its pixels grouped by region) are a product of the shared segmenter too
(:class:`ExclusionScatter`, kind ``noise``, keyed by a digest of the labels, those values and the
space they are written in): re-explaining an image for another target draws nothing again, and
gets the same float32 pixels a fresh draw gives.

The perturbed images are built where the network reads them. A model that takes preprocessed
input (:class:`~xaiserve.contracts.models.NetworkInputModel`: a served ``Model``) gets the
original converted once by :func:`~xaiserve.imaging.preprocess.to_network_input`, and each
exclusion is a copy of it with one flat scatter of the region's draws, converted by the same
function and cached that way (:class:`ScatterPlan`, with the flat indices for the network's
layout: ``c·H·W + p`` in NCHW, ``3p + c`` in NHWC). The conversion is elementwise (one float32
multiply and add per value), so these are bit for bit the inputs that converting the image-space
exclusions would give, without converting 62 images. Any other model gets image-space images
built the same way (a copy of the image, one scatter at ``3p + c`` per region).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from xaiserve.contracts.footprint import Footprint, image_bytes, scores_bytes
from xaiserve.contracts.input import Preprocessing
from xaiserve.contracts.models import NetworkInputModel
from xaiserve.errors import InvalidInput
from xaiserve.imaging.exact_regions import BoundaryPrior
from xaiserve.imaging.preprocess import to_network_input
from xaiserve.imaging.segmentation import SegmentationParams
from xaiserve.imaging.segmentation_cache import image_digest
from xaiserve.imaging.segmenter import (
    ExactRegions,
    NestedScales,
    Prior,
    SegImage,
    Segmenter,
    Ticket,
    shared_segmenter,
)
from xaiserve.methods.base import BlackBoxModel, Explanation, Target, register_method
from xaiserve.methods.prediction_difference import (
    DEFAULT_LAPLACE_TRAIN_SIZE,
    Evidence,
    evidence,
)

CHUNK_IMAGES = 16
"""Perturbed images per chunk handed to ``model.predict``."""

MAX_SCALES = 16

MAX_SIGMA_SQUARED = 255.0**2
"""Upper bound on ``sigma_squared`` (beyond it every sample is clipped to 0 or 255)."""

MAX_PRIOR_SEGMENTS = 4096
"""Upper bound on ``prior_segments`` (the boundary prior's regions, 2^8 in the paper)."""

MAX_BANDWIDTH = 1000.0
"""Upper bound on the mean-shift ``bandwidth`` (colour distance on the 0..255 scale)."""


@dataclass(frozen=True)
class RegionalPredictionDifferenceParams:
    """Parameters of Algorithm 3 (field names as in the proto message of the same name).

    ``scales`` is the paper's ``r`` (regions ``2^1 … 2^r``); ``segmentation.n_segments`` is
    ignored (set per scale); ``segmentation.nested`` derives the scales from the prior's
    ``prior_segments`` regions (which must then be at least ``2^r``). ``laplace_train_size`` is ``N`` of the Laplace correction of the
    logarithmic evidence functions (not in the proto yet).
    """

    scales: int = 5
    segmentation: SegmentationParams = field(default_factory=SegmentationParams)
    sigma_squared: float = 10.0
    prior_segments: int = 256
    evidence: Evidence = "difference"
    clip_negative: bool = True
    seed: int = 0
    return_scale_maps: bool = False
    bandwidth: float | None = None
    laplace_train_size: int = DEFAULT_LAPLACE_TRAIN_SIZE

    def __post_init__(self) -> None:
        if not 1 <= self.scales <= MAX_SCALES:
            raise InvalidInput(f"scales must be between 1 and {MAX_SCALES}")
        if not 0 <= self.sigma_squared <= MAX_SIGMA_SQUARED:
            raise InvalidInput(f"sigma_squared must be in 0..{MAX_SIGMA_SQUARED:g}")
        if not 1 <= self.prior_segments <= MAX_PRIOR_SEGMENTS:
            raise InvalidInput(f"prior_segments must be in 1..{MAX_PRIOR_SEGMENTS}")
        if self.bandwidth is not None and not 0 < self.bandwidth <= MAX_BANDWIDTH:
            raise InvalidInput(f"bandwidth must be in (0, {MAX_BANDWIDTH:g}]")
        if not 1 <= self.laplace_train_size <= 10**9:
            raise InvalidInput("laplace_train_size must be in 1..10**9")
        if not 0 <= self.seed < 2**63:
            raise InvalidInput("seed must be in 0..2**63-1")
        if self.segmentation.nested and self.prior_segments < 2**self.scales:
            raise InvalidInput(
                f"segmentation.nested merges the {self.prior_segments} prior regions into the "
                f"scales, so prior_segments must be at least 2^scales = {2**self.scales}"
            )


def cost(params: RegionalPredictionDifferenceParams, size: tuple[int, int]) -> int:
    """Images sent to ``predict``: the original plus ``2^1 + … + 2^r`` exclusions."""
    return 1 + sum(2**j for j in range(1, params.scales + 1))


def memory(
    params: RegionalPredictionDifferenceParams, size: tuple[int, int], num_classes: int
) -> Footprint:
    """A chunk of perturbed images, the label map of every scale (kept for the maps), the
    segmentation's working arrays, the noise of one region (at most the image), and the scores
    of every exclusion."""
    pixels = size[0] * size[1]
    chunk = (CHUNK_IMAGES + 8) * image_bytes(size)
    labels = 8 * pixels * (params.scales + 8)
    scores = scores_bytes(cost(params, size), num_classes)
    return Footprint(chunk + labels + scores, "regional_prediction_difference.scales")


def region_noise(
    seed: int, scale: int, region: int, n_pixels: int, mu: np.ndarray, sigma: float
) -> np.ndarray:
    """The ``N(μ, σ²)`` samples ``(n_pixels, 3)`` that replace region ``region`` at ``scale``.

    Drawn from ``default_rng([seed, scale, region])`` and clipped to 0..255 (Algorithm 3, line 6).
    """
    rng = np.random.default_rng([seed, scale, region])
    noise = rng.standard_normal((n_pixels, 3))
    noise *= sigma  # in place: the same values as ``mu + sigma * z``, without two temporaries
    noise += mu
    return np.clip(noise, 0.0, 255.0, out=noise)


@dataclass(frozen=True)
class ExclusionFills:
    """Scale ``scale``'s replacement pixels for every region (a segmenter product, kind ``noise``).

    The value is ``(order, bounds, fills)``: pixel indices grouped by region
    (:func:`region_order`), each region's bounds in them, and ``fills`` ``(H·W, 3)`` float32 with
    ``fills[bounds[i]:bounds[i + 1]]`` = :func:`region_noise` of region ``i`` (as the float32
    image receives it). The key is a digest of the labels and ``(scale, seed, σ², μ)``, which
    determine the value completely; the labels and ``μ`` ride along for :meth:`compute`.
    """

    labels_digest: bytes
    regions: int
    scale: int
    seed: int
    sigma_squared: float
    mu_bytes: bytes
    labels: np.ndarray = field(compare=False, hash=False, repr=False)
    mu: np.ndarray = field(compare=False, hash=False, repr=False)
    kind: str = "noise"

    @classmethod
    def of(
        cls,
        labels: np.ndarray,
        scale: int,
        params: RegionalPredictionDifferenceParams,
        mu: np.ndarray,
    ) -> ExclusionFills:
        """Scale ``scale`` (``2^scale`` regions) of ``labels`` with ``params``' seed and σ²."""
        top = int(labels.max())
        small = labels.astype(np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.int32)
        return cls(
            image_digest(small),
            2**scale,
            scale,
            params.seed,
            params.sigma_squared,
            np.asarray(mu, np.float64).tobytes(),
            labels,
            mu,
        )

    def key(self) -> Hashable:
        return (
            self.labels_digest,
            self.regions,
            self.scale,
            self.seed,
            self.sigma_squared,
            self.mu_bytes,
        )

    def compute(
        self, segmenter: Segmenter, image: SegImage
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.regions
        order, bounds = region_order(self.labels, n)
        sigma = float(np.sqrt(self.sigma_squared))
        noise = np.empty((order.size, 3), dtype=np.float64)
        for i in range(n):
            rng = np.random.default_rng([self.seed, self.scale, i])
            # the values of ``standard_normal((n_i, 3))``, written in place
            rng.standard_normal(out=noise[bounds[i] : bounds[i + 1]])
        noise *= sigma  # the operations of ``region_noise``, on every region at once
        noise += self.mu
        np.clip(noise, 0.0, 255.0, out=noise)
        return order, bounds, noise.astype(np.float32)


@dataclass(frozen=True)
class ScatterPlan:
    """One scale's exclusions as flat scatters into a flattened image (a segmenter value).

    Excluding region ``i`` writes ``values[3·bounds[i] : 3·bounds[i + 1]]`` (float32) at the same
    slice of ``index`` (``intp``) of the flattened image, in the space the plan was made for.
    """

    index: np.ndarray
    bounds: np.ndarray
    values: np.ndarray


def scatter_plan(
    order: np.ndarray, bounds: np.ndarray, fills: np.ndarray, space: Preprocessing | None
) -> ScatterPlan:
    """:class:`ExclusionFills`' value ready to scatter: into image space (``space`` ``None``,
    ``(H, W, 3)``: index ``3p + c``), or into the network input ``space`` describes, the fills
    converted by :func:`~xaiserve.imaging.preprocess.to_network_input` (the very arithmetic the
    model applies to whole images) at ``c·H·W + p`` (NCHW) or ``3p + c`` (NHWC), ``c`` the
    network's channel. Values are laid out ``[pixel, channel]`` in region order either way."""
    n = order.size
    pixels = order.astype(np.intp)[:, None]
    channels = np.arange(3, dtype=np.intp)
    if space is None:
        return ScatterPlan((3 * pixels + channels).reshape(-1), bounds, fills.reshape(-1))
    net = to_network_input(fills.reshape(1, n, 1, 3), space)
    if space.layout == "NCHW":  # net is (1, 3, n, 1): channel c of the k-th pixel at [0, c, k, 0]
        index = (pixels + n * channels).reshape(-1)
        values = np.ascontiguousarray(net.reshape(3, n).T).reshape(-1)
    else:
        index = (3 * pixels + channels).reshape(-1)
        values = net.reshape(-1)
    return ScatterPlan(index, bounds, values)


def space_key(space: Preprocessing | None) -> Hashable:
    """What of ``space`` determines the converted values and the indices (not its grid or
    input name: the image already has the model's grid)."""
    if space is None:
        return None
    return (space.layout, space.channel_order, space.value_range, space.mean, space.std)


@dataclass(frozen=True)
class ExclusionScatter:
    """A scale's :class:`ExclusionFills` as a :class:`ScatterPlan` into image space (``space``
    ``None``) or a network's input (a segmenter product, kind ``noise``: one per scale and
    explanation, like the draws it holds). Cached as a dataclass, so a hit copies nothing."""

    fills: ExclusionFills
    space: Preprocessing | None
    kind: str = "noise"

    def key(self) -> Hashable:
        return (self.fills.key(), "scatter", space_key(self.space))

    def compute(self, segmenter: Segmenter, image: SegImage) -> ScatterPlan:
        order, bounds, fills = self.fills.compute(segmenter, image)
        return scatter_plan(order, bounds, fills, self.space)


@dataclass
class _Stream:
    """What the perturbation generator learns while it runs (read after ``predict``)."""

    labels: list[np.ndarray] = field(default_factory=list)
    prior: BoundaryPrior | None = None


@dataclass
class _Segmentation:
    """The request's claims on the shared segmenter: the prior, then the scales."""

    prior: Ticket
    scales: Sequence[Ticket]
    nested: bool
    segmenter: Segmenter
    image: SegImage

    def scale(self, j: int) -> np.ndarray:
        if self.nested:
            return self.scales[0].result()[j - 1]  # type: ignore[no-any-return]
        return self.scales[j - 1].result()  # type: ignore[no-any-return]

    def ready(self, j: int) -> bool:
        """Whether scale ``j`` (and the prior) can be had without waiting."""
        ticket = self.scales[0] if self.nested else self.scales[j - 1]
        return self.prior.done() and ticket.done()

    def release(self) -> None:
        self.prior.release()
        for ticket in self.scales:
            ticket.release()


def _segment(image: np.ndarray, params: RegionalPredictionDifferenceParams) -> _Segmentation:
    """Ask the segmenter for the prior and every scale (cache hits, or queued in its pool)."""
    segmenter = shared_segmenter()
    img = segmenter.image(image)
    seg = params.segmentation
    prior = segmenter.request(img, Prior(params.prior_segments, seg, params.bandwidth))
    if seg.nested:
        scales = [segmenter.request(img, NestedScales(params.prior_segments, params.scales, seg))]
    else:
        scales = [
            segmenter.request(img, ExactRegions(2**j, seg)) for j in range(1, params.scales + 1)
        ]
    return _Segmentation(prior, scales, seg.nested, segmenter, img)


def _chunks(
    base: np.ndarray,
    space: Preprocessing | None,
    params: RegionalPredictionDifferenceParams,
    segmentation: _Segmentation,
    state: _Stream,
) -> Iterator[np.ndarray]:
    """The original image, then the exclusion of every region of every scale, in that order:
    ``base`` is the image in image space (``space`` ``None``) or converted to the network input
    ``space`` describes (:func:`scatter_plan`).

    Chunks hold at most ``CHUNK_IMAGES``. They are full whenever the labels are at hand (a
    warm cache: ``CHUNK_IMAGES``-image batches, the model's efficient size), and end early only
    where waiting would hold images back: the original goes to the model alone when the
    segmentation is not ready yet, and a scale's last chunk goes as soon as it is complete when
    the next scale's labels are still being computed.
    """
    pending: list[tuple[int, ScatterPlan]] = []  # (region, its scale's plan)
    first = True

    def fill() -> np.ndarray:
        chunk = np.empty((len(pending) + int(first), *base.shape), dtype=base.dtype)
        chunk[:] = base
        for row, (i, plan) in enumerate(pending, start=int(first)):
            # one flat scatter of the region's 3·n_i values (several times faster than rows)
            lo, hi = 3 * int(plan.bounds[i]), 3 * int(plan.bounds[i + 1])
            chunk[row].reshape(-1)[plan.index[lo:hi]] = plan.values[lo:hi]
        pending.clear()
        return chunk

    if not segmentation.ready(1):
        yield base[None]
        first = False
    state.prior = segmentation.prior.result()
    segmenter, img = segmentation.segmenter, segmentation.image
    for j in range(1, params.scales + 1):
        labels = segmentation.scale(j)
        state.labels.append(labels)
        fills = ExclusionFills.of(labels, j, params, state.prior.mu)
        plan: ScatterPlan = segmenter.inline(img, ExclusionScatter(fills, space))
        for i in range(len(plan.bounds) - 1):
            pending.append((i, plan))
            if len(pending) + int(first) == CHUNK_IMAGES:
                yield fill()
                first = False
        if pending and (j == params.scales or not segmentation.ready(j + 1)):
            yield fill()
            first = False


def region_order(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel indices grouped by region (row-major within each) and each region's bounds.

    Region ``i``'s pixels are ``order[bounds[i]:bounds[i + 1]]``. Labels below 256 are sorted as
    ``uint8`` (numpy's stable sort is then a radix sort, several times faster than on int32).
    """
    flat = labels.ravel()
    keys = flat.astype(np.uint8) if n <= 256 else flat
    order = np.argsort(keys, kind="stable")
    bounds = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(flat, minlength=n), out=bounds[1:])
    return order, bounds


def scale_maps(
    probabilities: np.ndarray,
    labels: list[np.ndarray],
    cls: int,
    params: RegionalPredictionDifferenceParams,
    num_classes: int,
) -> list[np.ndarray]:
    """``s^j`` (float64) for every scale (Algorithm 3, lines 8–10) from the stacked predictions.

    ``probabilities`` is ``(1 + Σ 2^j, K)``: row 0 the original, then the scales' regions in
    order.
    """
    p = probabilities[0, cls]
    maps = []
    offset = 1
    for lab in labels:
        k = int(lab.max()) + 1
        g = evidence(
            params.evidence,
            p,
            probabilities[offset : offset + k, cls],
            num_classes=num_classes,
            train_size=params.laplace_train_size,
        )
        if params.clip_negative:
            g = np.maximum(0.0, g)
        maps.append(np.asarray(g, dtype=np.float64)[lab])
        offset += k
    return maps


@register_method(
    "regional_prediction_difference",
    params=RegionalPredictionDifferenceParams,
    backend="blackbox",
    cost=cost,
    memory=memory,
    signed=False,
)
def explain(
    model: BlackBoxModel,
    image: np.ndarray,
    target: Target,
    params: RegionalPredictionDifferenceParams,
) -> Explanation:
    """Seo et al., Algorithm 3: the regional multi-scale prediction difference map of ``image``.

    ``heatmap`` is ``s`` (line 13). ``maps`` holds ``"contrast"`` (the same map for
    ``target.contrast``, from the same forward passes) and, with ``return_scale_maps``, every
    ``s^j`` as ``"scale_{2^j}"`` and its label map as ``"labels_{2^j}"`` (float32). ``values``
    holds ``μ`` (``mu_r``, ``mu_g``, ``mu_b``), the mean-shift bandwidth and ``forward_passes``.
    """
    image = np.asarray(image, dtype=np.float32)
    h, w = image.shape[:2]
    classes = [target.index] + ([target.contrast] if target.contrast is not None else [])
    for cls in classes:
        if not 0 <= cls < model.num_classes:
            raise InvalidInput(f"class {cls} is out of range 0..{model.num_classes - 1}")
    if 2**params.scales > h * w or params.prior_segments > h * w:
        raise InvalidInput(f"a {h}×{w} image has too few pixels for the requested scales")
    state = _Stream()
    segmentation = _segment(image, params)
    try:
        if isinstance(model, NetworkInputModel):  # perturb the converted image (module doc)
            space = model.preprocessing
            base = to_network_input(image[None], space)[0]
            probabilities = model.predict_network_input(
                _chunks(base, space, params, segmentation, state), output="probabilities"
            )
        else:
            probabilities = model.predict(
                _chunks(image, None, params, segmentation, state), output="probabilities"
            )
    finally:
        segmentation.release()
    expected = cost(params, (h, w))
    if probabilities.shape[0] != expected:
        raise RuntimeError(f"model returned {probabilities.shape[0]} rows for {expected} images")
    per_scale = scale_maps(probabilities, state.labels, target.index, params, model.num_classes)
    heatmap = np.mean(per_scale, axis=0).astype(np.float32)
    maps: dict[str, np.ndarray] = {}
    values: dict[str, float] = {}
    if target.contrast is not None:
        contrast = scale_maps(
            probabilities, state.labels, target.contrast, params, model.num_classes
        )
        maps["contrast"] = np.mean(contrast, axis=0).astype(np.float32)
        values["contrast_probability"] = float(probabilities[0, target.contrast])
    if params.return_scale_maps:
        for lab, s_j in zip(state.labels, per_scale, strict=True):
            n = int(lab.max()) + 1
            maps[f"scale_{n}"] = s_j.astype(np.float32)
            maps[f"labels_{n}"] = lab.astype(np.float32)
    assert state.prior is not None
    values.update(
        mu_r=float(state.prior.mu[0]),
        mu_g=float(state.prior.mu[1]),
        mu_b=float(state.prior.mu[2]),
        bandwidth=state.prior.bandwidth,
        forward_passes=float(expected),
    )
    return Explanation(
        heatmap=heatmap,
        signed=not params.clip_negative,
        maps=maps,
        values=values,
        target_probability=float(probabilities[0, target.index]),
    )
