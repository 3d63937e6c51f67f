"""Pixel-wise prediction difference with conditional sampling and multivariate analysis.

Zintgraf et al. (2017), as restated by Seo et al., Algorithm 2. For every ``k × k`` inner patch
``x_in`` with its ``l × l`` outer patch ``x_out`` (same centre):

- line 7: ``x_in`` is replaced ``r`` times by a sample of ``p(x_in | x_out∖x_in)``, a normal
  distribution whose per-channel mean and variance are those of the ring ``x_out∖x_in`` (Seo et
  al., Sec. 3.2: "the mean and variance of a normal distribution are calculated from the pixels
  in x_out∖x_in"); every pixel and channel of the patch is an independent draw, clipped to
  0..255;
- line 11: ``p(c|x∖i)`` is the average prediction over the ``r`` samples;
- lines 12–16: ``g(p(c|x), p(c|x∖i))`` is added to every pixel of ``x_in`` and the map is
  divided element-wise by the number of patches covering each pixel.

Patch positions follow Zintgraf et al.'s code: inner patches lie fully inside the image (top-left
corners ``0 … n − k``), here every ``stride`` pixels with the last position always included so
every pixel is covered (``stride = 1`` is the paper). The outer patch extends the inner one by
``⌊(l − k)/2⌋`` pixels before and ``⌈(l − k)/2⌉`` after, clipped to the image.

The ``(n − k + 1)² · r`` perturbed images are generated lazily and streamed through
``model.predict`` in chunks; the stream is cut into calls of at most ``max(r, 2^24 / K)``
images (a bounded ``(N, K)`` result per call). The noise of the patch with top-left ``(y, x)``
comes from ``numpy.random.default_rng([seed, y, x])`` as ``standard_normal((r, k, k, 3))``,
independent of the stride and of the streaming.

A model that takes its network input directly (:class:`~xaiserve.contracts.models.
NetworkInputModel`: a served ``Model``) gets the perturbed images in that format: the original
is converted once by :func:`~xaiserve.imaging.preprocess.to_network_input`, each sample patch
alone (the conversion is per pixel, so the result is the converted perturbed image bit for bit),
and each chunk is the converted original repeated with the patches written where the layout
keeps them (``pixel_grid``). On a light network the conversion of every whole image cost about
a tenth of its forward pass.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from xaiserve.contracts.footprint import FLOAT64, Footprint, image_bytes, scores_bytes
from xaiserve.contracts.input import Preprocessing
from xaiserve.contracts.models import NetworkInputModel
from xaiserve.errors import InvalidInput
from xaiserve.imaging.preprocess import pixel_grid, to_network_input
from xaiserve.methods.base import BlackBoxModel, Explanation, Target, chunked, register_method
from xaiserve.methods.prediction_difference import (
    DEFAULT_LAPLACE_TRAIN_SIZE,
    Evidence,
    evidence,
)

CHUNK_IMAGES = 32
"""Perturbed images per chunk handed to ``model.predict``."""

MAX_OUTPUT_VALUES = 2**24
"""Bound on ``images × classes`` of one ``predict`` call (64 MiB of float32 scores)."""


MAX_SIDE = 4096
"""Upper bound on ``inner_size`` and ``stride`` (pixels; larger than any accepted model grid)."""

MAX_SAMPLES = 10_000
"""Upper bound on ``samples`` (``r``)."""

MAX_TRAIN_SIZE = 10**9


@dataclass(frozen=True)
class PixelwisePredictionDifferenceParams:
    """Parameters of Algorithm 2 (field names as in the proto message of the same name).

    ``inner_size`` is ``k``, ``outer_size`` is ``l`` (``l > k``), ``samples`` is ``r``.
    ``laplace_train_size`` is ``N`` of the Laplace correction (not in the proto yet).
    """

    inner_size: int = 10
    outer_size: int = 14
    samples: int = 10
    stride: int = 1
    evidence: Evidence = "weight_of_evidence"
    clip_negative: bool = False
    seed: int = 0
    laplace_train_size: int = DEFAULT_LAPLACE_TRAIN_SIZE

    def __post_init__(self) -> None:
        if not 1 <= self.inner_size <= MAX_SIDE:
            raise InvalidInput(f"inner_size must be in 1..{MAX_SIDE}")
        if not self.inner_size < self.outer_size <= 2 * MAX_SIDE:
            raise InvalidInput(
                f"outer_size must be larger than inner_size (l > k) and at most {2 * MAX_SIDE}"
            )
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise InvalidInput(f"samples must be in 1..{MAX_SAMPLES}")
        if not 1 <= self.stride <= MAX_SIDE:
            raise InvalidInput(f"stride must be in 1..{MAX_SIDE}")
        if not 1 <= self.laplace_train_size <= MAX_TRAIN_SIZE:
            raise InvalidInput(f"laplace_train_size must be in 1..{MAX_TRAIN_SIZE}")
        if not 0 <= self.seed < 2**63:
            raise InvalidInput("seed must be in 0..2**63-1")


def patch_positions(n: int, k: int, stride: int) -> list[int]:
    """Top-left coordinates ``0, stride, …`` of the ``k``-wide patches along a side of ``n``,
    with the last position ``n − k`` always included."""
    if k > n:
        raise InvalidInput(f"inner_size {k} is larger than the image side {n}")
    positions = list(range(0, n - k + 1, stride))
    if positions[-1] != n - k:
        positions.append(n - k)
    return positions


def cost(params: PixelwisePredictionDifferenceParams, size: tuple[int, int]) -> int:
    """Images sent to ``predict``: the original plus ``r`` per patch position."""
    h, w = size
    k = params.inner_size
    windows = len(patch_positions(h, k, params.stride)) * len(patch_positions(w, k, params.stride))
    return 1 + windows * params.samples


def memory(
    params: PixelwisePredictionDifferenceParams, size: tuple[int, int], num_classes: int
) -> Footprint:
    """The ``r`` replacement patches of one window (``r·k²·3`` float64, and their clipped copy),
    a chunk of perturbed images, and one call's scores (capped at :data:`MAX_OUTPUT_VALUES`)."""
    k = min(params.inner_size, max(size))
    patches = 2 * FLOAT64 * params.samples * k * k * 3
    chunk = (CHUNK_IMAGES + 4) * image_bytes(size)
    scores = scores_bytes(
        min(cost(params, size), MAX_OUTPUT_VALUES // max(1, num_classes)), num_classes
    )
    knob = (
        "pixelwise_prediction_difference.samples"
        if patches >= scores
        else "pixelwise_prediction_difference.stride"
    )
    return Footprint(patches + chunk + scores, knob)


def outer_bounds(y: int, n: int, k: int, l: int) -> tuple[int, int]:  # noqa: E741
    """Rows (or columns) ``[start, stop)`` of the outer patch of the inner patch at ``y``."""
    before = (l - k) // 2
    after = (l - k) - before
    return max(0, y - before), min(n, y + k + after)


def ring_statistics(
    image: np.ndarray,
    y: int,
    x: int,
    k: int,
    l: int,  # noqa: E741
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation ``(3,)`` of the ring ``x_out∖x_in``."""
    h, w = image.shape[:2]
    y0, y1 = outer_bounds(y, h, k, l)
    x0, x1 = outer_bounds(x, w, k, l)
    ring = np.ones((y1 - y0, x1 - x0), dtype=bool)
    ring[y - y0 : y - y0 + k, x - x0 : x - x0 + k] = False
    pixels = image[y0:y1, x0:x1][ring].astype(np.float64)
    if len(pixels) == 0:  # the outer patch is the inner one (image as small as the patch)
        pixels = image[y : y + k, x : x + k].reshape(-1, 3).astype(np.float64)
    return pixels.mean(axis=0), pixels.std(axis=0)


def patch_samples(
    image: np.ndarray, y: int, x: int, params: PixelwisePredictionDifferenceParams
) -> np.ndarray:
    """The ``r`` replacement patches ``(r, k, k, 3)`` for the inner patch at ``(y, x)``
    (Algorithm 2, line 7)."""
    k = params.inner_size
    mean, std = ring_statistics(image, y, x, k, params.outer_size)
    rng = np.random.default_rng([params.seed, y, x])
    z = rng.standard_normal((params.samples, k, k, 3))
    return np.clip(mean + std * z, 0.0, 255.0)


def _perturbations(
    image: np.ndarray,
    windows: Sequence[tuple[int, int]],
    params: PixelwisePredictionDifferenceParams,
    with_original: bool,
) -> Iterator[np.ndarray]:
    if with_original:
        yield image
    k = params.inner_size
    for y, x in windows:
        for patch in patch_samples(image, y, x, params):
            perturbed = image.copy()
            perturbed[y : y + k, x : x + k] = patch
            yield perturbed


_Sample = tuple[int, int, np.ndarray] | None
"""One perturbed image of a chunk in network space: the patch's top-left corner and its
converted ``(k, k, 3)`` values (channels last), or None for the original."""


def _network_chunks(
    base: np.ndarray,
    image: np.ndarray,
    windows: Sequence[tuple[int, int]],
    params: PixelwisePredictionDifferenceParams,
    with_original: bool,
    space: Preprocessing,
) -> Iterator[np.ndarray]:
    """The stream of :func:`_perturbations`, converted, in chunks of ``CHUNK_IMAGES``: ``base``
    (the converted original) repeated, each sample patch converted alone and written in place."""

    def samples() -> Iterator[_Sample]:
        if with_original:
            yield None
        for y, x in windows:
            patches = patch_samples(image, y, x, params)
            for patch in pixel_grid(to_network_input(patches, space), space.layout):
                yield (y, x, patch)

    def fill(items: list[_Sample]) -> np.ndarray:
        chunk = np.repeat(base[None], len(items), axis=0)
        grid = pixel_grid(chunk, space.layout)
        for i, item in enumerate(items):
            if item is not None:
                y, x, patch = item
                grid[i, y : y + k, x : x + k] = patch
        return chunk

    k = params.inner_size
    stream = samples()
    while items := list(itertools.islice(stream, CHUNK_IMAGES)):
        yield fill(items)


def warmup_params(
    params: PixelwisePredictionDifferenceParams, size: tuple[int, int]
) -> PixelwisePredictionDifferenceParams:
    """The load-time warm-up's parameters: the corner patches only (a stride as long as the
    image side), ``1 + 4r`` forward passes instead of one window per pixel."""
    stride = max(1, min(MAX_SIDE, max(size)))
    return dataclasses.replace(params, stride=stride)


@register_method(
    "pixelwise_prediction_difference",
    params=PixelwisePredictionDifferenceParams,
    backend="blackbox",
    cost=cost,
    memory=memory,
    signed=True,
    warmup=warmup_params,
)
def explain(
    model: BlackBoxModel,
    image: np.ndarray,
    target: Target,
    params: PixelwisePredictionDifferenceParams,
) -> Explanation:
    """Zintgraf et al.'s prediction difference map (Seo et al., Algorithm 2) of ``image``.

    ``heatmap`` is ``s/c`` (line 16); pixels no patch covers (none unless ``stride > k``)
    are 0. ``maps["contrast"]`` is the same map for ``target.contrast`` if given.
    """
    image = np.asarray(image, dtype=np.float32)
    h, w = image.shape[:2]
    classes = [target.index] + ([target.contrast] if target.contrast is not None else [])
    for cls in classes:
        if not 0 <= cls < model.num_classes:
            raise InvalidInput(f"class {cls} is out of range 0..{model.num_classes - 1}")
    k, r = params.inner_size, params.samples
    windows = [
        (y, x)
        for y in patch_positions(h, k, params.stride)
        for x in patch_positions(w, k, params.stride)
    ]
    per_call = max(1, max(r, MAX_OUTPUT_VALUES // max(1, model.num_classes)) // r)
    net = model if isinstance(model, NetworkInputModel) else None
    base = None if net is None else to_network_input(image[None], net.preprocessing)[0]
    p_original: np.ndarray | None = None
    p_without = np.empty((len(windows), len(classes)), dtype=np.float64)
    for start in range(0, len(windows), per_call):
        block = windows[start : start + per_call]
        first = start == 0
        if net is not None and base is not None:  # perturb the converted image (module doc)
            scores = net.predict_network_input(
                _network_chunks(base, image, block, params, first, net.preprocessing),
                output="probabilities",
            )
        else:
            scores = model.predict(
                chunked(_perturbations(image, block, params, first), CHUNK_IMAGES),
                output="probabilities",
            )
        if scores.shape[0] != len(block) * r + first:
            raise RuntimeError(f"model returned {scores.shape[0]} rows for a block")
        if first:
            p_original = scores[0, classes].astype(np.float64)
            scores = scores[1:]
        per_sample = scores[:, classes].astype(np.float64).reshape(len(block), r, len(classes))
        total = np.zeros((len(block), len(classes)))
        for j in range(r):  # line 9, in sample order
            total += per_sample[:, j]
        p_without[start : start + len(block)] = total / r  # line 11
    assert p_original is not None
    g = evidence(
        params.evidence,
        p_original[None, :],
        p_without,
        num_classes=model.num_classes,
        train_size=params.laplace_train_size,
    )
    if params.clip_negative:
        g = np.maximum(0.0, g)
    sums = np.zeros((len(classes), h, w), dtype=np.float64)
    counts = np.zeros((h, w), dtype=np.float64)
    for (y, x), g_w in zip(windows, g, strict=True):
        sums[:, y : y + k, x : x + k] += g_w[:, None, None]
        counts[y : y + k, x : x + k] += 1.0
    maps_all = np.where(counts > 0, sums / np.maximum(counts, 1.0), 0.0).astype(np.float32)
    maps: dict[str, np.ndarray] = {}
    values: dict[str, float] = {
        "patches": float(len(windows)),
        "forward_passes": float(1 + len(windows) * r),
    }
    if target.contrast is not None:
        maps["contrast"] = maps_all[1]
        values["contrast_probability"] = float(p_original[1])
    return Explanation(
        heatmap=maps_all[0],
        signed=not params.clip_negative,
        maps=maps,
        values=values,
        target_probability=float(p_original[0]),
    )
