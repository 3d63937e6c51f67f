"""Region perturbation (MoRF / LeRF / random) and AOPC, after Samek et al.

"Evaluating the visualization of what a Deep Neural Network has learned", Section III:

* Eq. 9–10: the heatmap induces an ordering ``O = (r_1, …, r_L)`` of image locations, most
  relevant first. Our locations are the non-overlapping ``m × m`` windows tiling the image, and
  a window's score ``H(x, f, r_p)`` is the sum of the heatmap over it.
* Eq. 11: ``x^(0) = x`` and ``x^(k) = g(x^(k-1), r_k)``: the perturbation ``g`` replaces region
  ``r_k`` (cumulatively) — by default with per-pixel uniform noise on 0..255, as in the paper
  (Quantus 0.6 fills a patch with one value; we do not).
* Eq. 12: ``AOPC = 1/(L+1) Σ_{k=0}^{L} f(x^(0)) − f(x^(k))`` for one image; the data-set average
  ``⟨·⟩_{p(x)}`` is taken by :mod:`xaiserve.evaluation.aggregate`.

Besides MoRF we compute LeRF (least relevant first, the reversed score order) and a random
ordering baseline (Section IV-B). ``f`` is the model's probability of the target class.

Choices the paper leaves open (documented here, tested in ``tests/unit/test_morf.py``):

* **Border remainder.** When ``m`` does not divide ``H`` or ``W``, the last row/column of
  windows is narrower (``H mod m`` / ``W mod m`` pixels), so the regions tile every pixel exactly
  once. They are ranked by summed relevance like the others.
* **Ties** in window scores are broken by raster order (row-major window index) in both MoRF and
  LeRF, so the orderings are deterministic.
* **steps > number of regions** is clamped: ``L = min(steps, regions)``. The model's input grid is
  fixed by the model (not the client), and the default ``steps = 100`` would otherwise be refused
  for every image smaller than ~90×90; the curves have length ``L + 1`` and say what was used.
* **Repeats.** Every repeat draws a fresh replacement image for the fill (one full-size draw per
  sequence: regions never overlap, so each pixel is drawn once, i.e. per-pixel i.i.d. noise).
  Repeat ``r`` uses the same draw for MoRF, LeRF and random (common random numbers: the orderings
  differ, not the noise), and the random baseline draws a fresh permutation per repeat. With a
  deterministic fill (``black``, ``white``, ``mean``, ``blur``) repeats of MoRF/LeRF would be
  identical, so they run once; the random baseline still averages ``repeats`` permutations.
* ``f(x^(0))`` is the same image for every sequence and is evaluated once.
* Fills ``mean``/``blur``/``noise`` are computed from the unperturbed image ``x``.

All perturbed images stream lazily through ``model.predict`` in chunks of :data:`CHUNK_SIZE`; at
most one chunk is built at a time. A model that takes preprocessed input
(:class:`~xaiserve.contracts.models.NetworkInputModel`) gets them in its input format instead,
through ``predict_network_input``: the image and each sequence's replacement are converted once
and the windows copied between the converted arrays (the conversion is elementwise, so these
are bit for bit the converted image-space images, without converting every step).

``predict`` returns all ``(N, C)`` class scores of a call, so to keep peak memory flat in
``L × repeats`` for models with many classes the stream is cut, at whole-sequence boundaries,
into calls whose output stays under :data:`MAX_OUTPUT_BYTES` (one call for small ``N × C``:
e.g. 1000 classes, L = 100 → up to 2,000 images per call).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from xaiserve.contracts.footprint import Footprint
from xaiserve.contracts.input import Layout
from xaiserve.contracts.models import BlackBoxModel, NetworkInputModel
from xaiserve.errors import InvalidInput
from xaiserve.imaging.fills import Fill, check_fill, fill_image
from xaiserve.imaging.preprocess import pixel_grid, to_network_input

Ordering = Literal["morf", "lerf", "random"]

CHUNK_SIZE = 32
"""Images per chunk handed to ``model.predict`` (the batcher re-batches as it likes)."""

MAX_OUTPUT_BYTES = 8 * 2**20
"""Upper bound on the ``(n, C)`` float32 scores of one ``predict`` call (see module docstring)."""

RANDOM_FILLS: frozenset[str] = frozenset({"uniform", "noise"})
"""Fills that draw random values, so that repeats differ."""

MAX_WINDOW = 4096
"""Upper bound on ``morf.window`` (pixels; larger than any model grid we accept)."""

MAX_STEPS = 100_000
"""Upper bound on ``morf.steps`` (``L``; clamped to the number of regions anyway)."""

MAX_REPEATS = 1000
"""Upper bound on ``morf.repeats``: checked before anything is sized from it."""


@dataclass(frozen=True)
class MorfParams:
    """Region perturbation parameters; field names and defaults are those of the proto
    ``MorfParams`` message (``window`` = m, ``steps`` = L, ``fill`` = g, Samek et al. IV-A)."""

    window: int = 9
    steps: int = 100
    fill: Fill = "uniform"
    repeats: int = 10
    seed: int | None = None
    lerf: bool = True
    random_baseline: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.window <= MAX_WINDOW:
            raise InvalidInput(
                f"morf.window is {self.window}; it must be in 1..{MAX_WINDOW} (pixels)"
            )
        if not 1 <= self.steps <= MAX_STEPS:
            raise InvalidInput(f"morf.steps is {self.steps}; it must be in 1..{MAX_STEPS}")
        if not 1 <= self.repeats <= MAX_REPEATS:
            raise InvalidInput(f"morf.repeats is {self.repeats}; it must be in 1..{MAX_REPEATS}")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise InvalidInput(f"morf.seed is {self.seed}; it must be in 0..2**64-1")
        check_fill(self.fill, "morf.fill")


@dataclass(frozen=True)
class MorfResult:
    """Perturbation curves ``f(x^(k))``, ``k = 0..L`` (mean over repeats), and their AOPCs.

    ``aopc_*`` is Eq. 12 for one image. ``area_between_lerf_morf`` is
    ``1/(L+1) Σ_k f(x_LeRF^(k)) − f(x_MoRF^(k)) = aopc_morf − aopc_lerf``. Curves and AOPCs of
    orderings that were not requested are ``None``. ``forward_passes`` counts images sent through
    the model; ``seed`` is the seed used (drawn when the params had none), so a run can be
    repeated exactly.
    """

    morf_curve: np.ndarray
    lerf_curve: np.ndarray | None
    random_curve: np.ndarray | None
    aopc_morf: float
    aopc_lerf: float | None
    aopc_random: float | None
    aopc_morf_minus_random: float | None
    area_between_lerf_morf: float | None
    forward_passes: int
    steps: int
    seed: int


@dataclass(frozen=True)
class RegionGrid:
    """The non-overlapping ``m × m`` windows tiling an ``(H, W)`` grid, in raster order.

    Window ``p`` covers rows ``row_starts[p // cols] : row_ends[…]`` and the matching columns.
    """

    height: int
    width: int
    window: int

    @property
    def rows(self) -> int:
        return -(-self.height // self.window)

    @property
    def cols(self) -> int:
        return -(-self.width // self.window)

    def __len__(self) -> int:
        return self.rows * self.cols

    def slices(self, p: int) -> tuple[slice, slice]:
        """Row and column slices of window ``p`` (raster index)."""
        i, j = divmod(int(p), self.cols)
        m = self.window
        return slice(i * m, min((i + 1) * m, self.height)), slice(
            j * m, min((j + 1) * m, self.width)
        )

    def scores(self, heatmap: np.ndarray) -> np.ndarray:
        """``H(x, f, r_p)``: the heatmap summed over each window, flattened in raster order."""
        h = np.asarray(heatmap, dtype=np.float64)
        starts_r = np.arange(0, self.height, self.window)
        starts_c = np.arange(0, self.width, self.window)
        sums = np.add.reduceat(np.add.reduceat(h, starts_r, axis=0), starts_c, axis=1)
        return sums.ravel()


def region_order(scores: np.ndarray, ordering: Ordering, rng: np.random.Generator) -> np.ndarray:
    """The ordering ``O`` of Eq. 9–10: window indices, MoRF = descending score, LeRF = ascending
    score (ties in raster order for both), random = a permutation drawn from ``rng``."""
    if ordering == "morf":
        return np.argsort(-scores, kind="stable")
    if ordering == "lerf":
        return np.argsort(scores, kind="stable")
    return rng.permutation(scores.size)


def _steps_used(params: MorfParams, shape: tuple[int, int]) -> int:
    return min(params.steps, len(RegionGrid(shape[0], shape[1], params.window)))


def sequence_count(params: MorfParams) -> int:
    """How many perturbation sequences :func:`_sequences` yields, in O(1) (no list is built)."""
    orderings = 2 if params.lerf else 1
    fixed_runs = params.repeats if params.fill in RANDOM_FILLS else 1
    return orderings * fixed_runs + (params.repeats if params.random_baseline else 0)


def _sequences(params: MorfParams) -> list[tuple[Ordering, int]]:
    """The perturbation sequences to run: (ordering, repeat index)."""
    orderings: list[Ordering] = ["morf"]
    if params.lerf:
        orderings.append("lerf")
    fixed_runs = params.repeats if params.fill in RANDOM_FILLS else 1
    out: list[tuple[Ordering, int]] = [(o, r) for o in orderings for r in range(fixed_runs)]
    if params.random_baseline:
        out += [("random", r) for r in range(params.repeats)]
    return out


def morf_cost(params: MorfParams, shape: tuple[int, int]) -> int:
    """Exact forward passes :func:`region_perturbation` makes for an ``(H, W)`` image:
    ``1 + L × sequences`` (``f(x^(0))`` once, then ``L`` perturbed images per sequence).
    O(1) in every parameter: nothing is allocated per repeat or per step."""
    if shape[0] < 1 or shape[1] < 1:
        raise InvalidInput(f"image grid {shape} is empty")
    return 1 + _steps_used(params, shape) * sequence_count(params)


def morf_memory(params: MorfParams, shape: tuple[int, int], num_classes: int) -> Footprint:
    """Peak bytes of :func:`region_perturbation` beyond the model's own batches, in O(1).

    The working image, the fill's replacement image and the chunk being built (``CHUNK_SIZE``
    images) are float32 ``(H, W, 3)``; the scores of one ``predict`` call are capped at
    :data:`MAX_OUTPUT_BYTES`; the curves hold ``sequences × (L + 1)`` float64 values.
    """
    image = 4 * 3 * shape[0] * shape[1]
    steps = _steps_used(params, shape)
    curves = 8 * sequence_count(params) * (steps + 1) * 2  # per-sequence curves, then their stack
    scores = min(MAX_OUTPUT_BYTES, 4 * max(1, num_classes) * (1 + steps * sequence_count(params)))
    return Footprint(image * (3 + 2 * CHUNK_SIZE) + curves + scores, "morf.repeats or morf.steps")


def _sequence_rngs(seed: int, repeat: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent generators for repeat ``repeat``: (fill draws, random permutation)."""
    fill = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(repeat, 0))))
    perm = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(repeat, 1))))
    return fill, perm


def _perturbed_images(
    image: np.ndarray,
    grid: RegionGrid,
    order: np.ndarray,
    replacement: np.ndarray,
    layout: Layout | None = None,
) -> Iterator[np.ndarray]:
    """``x^(1), …, x^(L)`` of Eq. 11 for one ordering (``L = len(order)``), as views of one
    working image that is modified in place: copy each before the next is produced. ``image``
    and ``replacement`` are in image space (``layout`` ``None``) or both network inputs in
    ``layout``."""
    x = image.copy()
    target, source = pixel_grid(x, layout), pixel_grid(replacement, layout)
    for p in order:
        rows, cols = grid.slices(p)
        target[rows, cols] = source[rows, cols]
        yield x


def _chunks(
    images: Iterator[np.ndarray], total: int, shape: tuple[int, ...], chunk_size: int
) -> Iterator[np.ndarray]:
    """Group ``total`` images of ``shape`` from ``images`` into ``(n ≤ chunk_size, *shape)``
    float32 chunks, lazily. Only the chunk being filled is held; a fresh array is allocated per
    chunk because the consumer may still hold (or run) the previous one."""
    done = 0
    while done < total:
        chunk = np.empty((min(chunk_size, total - done), *shape), dtype=np.float32)
        for i in range(chunk.shape[0]):
            chunk[i] = next(images)
        done += chunk.shape[0]
        yield chunk


def aopc(curve: np.ndarray) -> float:
    """Eq. 12 for one image: ``1/(L+1) Σ_{k=0}^{L} f(x^(0)) − f(x^(k))`` of a curve ``f(x^(k))``."""
    return float(curve[0] - np.mean(curve))


def aopc_curve(curve: np.ndarray) -> np.ndarray:
    """AOPC as a function of the number of perturbation steps (Samek et al. Fig. 4): entry ``l``
    is Eq. 12 with ``L = l``, i.e. ``1/(l+1) Σ_{k=0}^{l} f(x^(0)) − f(x^(k))``."""
    c = np.asarray(curve, dtype=np.float64)
    return np.cumsum(c[0] - c) / np.arange(1, c.size + 1)


def _check_inputs(
    model: BlackBoxModel, image: np.ndarray, heatmap: np.ndarray, target_index: int
) -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise InvalidInput(f"image has shape {img.shape}; it must be (H, W, 3) RGB")
    hm = np.asarray(heatmap)
    if hm.shape != img.shape[:2]:
        raise InvalidInput(
            f"heatmap has shape {hm.shape} but the image grid is {img.shape[:2]}; "
            "send the heatmap on the model's input grid (H, W)"
        )
    if not np.all(np.isfinite(hm)):
        raise InvalidInput("heatmap contains NaN or infinite values; send finite relevances")
    if tuple(model.input_size) != img.shape[:2]:
        raise InvalidInput(
            f"image is {img.shape[:2]} but the model takes {tuple(model.input_size)}; "
            "resize it to the model's input size"
        )
    if not 0 <= target_index < model.num_classes:
        raise InvalidInput(
            f"target index {target_index} is out of range; the model has {model.num_classes} classes"
        )
    return img.astype(np.float32, copy=False), hm


def region_perturbation(
    model: BlackBoxModel,
    image: np.ndarray,
    heatmap: np.ndarray,
    target_index: int,
    params: MorfParams,
) -> MorfResult:
    """MoRF (and LeRF, random) region perturbation curves and AOPC of ``heatmap`` (Eq. 9–12).

    ``image`` is ``(H, W, 3)`` float32 on 0..255 at the model's input size, ``heatmap`` ``(H, W)``.
    ``f(x^(k))`` is ``model.predict(…)[:, target_index]`` (probabilities). See the module
    docstring for the border, tie, clamping and repeat conventions. Deterministic for a seed.
    """
    img, hm = _check_inputs(model, image, heatmap, target_index)
    grid = RegionGrid(img.shape[0], img.shape[1], params.window)
    steps = _steps_used(params, img.shape[:2])
    seed = (
        params.seed
        if params.seed is not None
        else int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
    )
    scores = grid.scores(hm)
    sequences = _sequences(params)
    # In the network's input format when the model takes it (module docstring).
    net = model if isinstance(model, NetworkInputModel) else None
    layout = net.preprocessing.layout if net is not None else None

    def space(x: np.ndarray) -> np.ndarray:
        return x if net is None else to_network_input(x[None], net.preprocessing)[0]

    base = space(img)

    def images(batch: list[tuple[Ordering, int]], first: bool) -> Iterator[np.ndarray]:
        if first:
            yield base
        for ordering, repeat in batch:
            fill_rng, perm_rng = _sequence_rngs(seed, repeat)
            order = region_order(scores, ordering, perm_rng)[:steps]
            replacement = space(fill_image(img, params.fill, fill_rng))
            yield from _perturbed_images(base, grid, order, replacement, layout)

    # Cut the stream into predict calls of whole sequences, bounded in output size.
    per_call = max(1, MAX_OUTPUT_BYTES // (4 * max(1, model.num_classes) * steps))
    f_by_sequence: list[np.ndarray] = []
    f0 = float("nan")
    for start in range(0, len(sequences), per_call):
        batch = sequences[start : start + per_call]
        first = start == 0
        total = int(first) + steps * len(batch)
        chunks = _chunks(images(batch, first), total, base.shape, CHUNK_SIZE)
        if net is not None:
            out = np.asarray(net.predict_network_input(chunks, output="probabilities"))
        else:
            out = np.asarray(model.predict(chunks, output="probabilities"))
        if out.shape[0] != total:
            raise RuntimeError(f"model returned {out.shape[0]} score rows for {total} images")
        f = out[:, target_index].astype(np.float64)
        del out
        if first:
            f0 = float(f[0])
            f = f[1:]
        f_by_sequence.extend(f.reshape(len(batch), steps))

    curves: dict[Ordering, list[np.ndarray]] = {"morf": [], "lerf": [], "random": []}
    for (ordering, _), f in zip(sequences, f_by_sequence, strict=True):
        curves[ordering].append(np.concatenate([[f0], f]))
    morf = np.mean(curves["morf"], axis=0)
    lerf = np.mean(curves["lerf"], axis=0) if curves["lerf"] else None
    rnd = np.mean(curves["random"], axis=0) if curves["random"] else None
    a_morf = aopc(morf)
    a_lerf = aopc(lerf) if lerf is not None else None
    a_rnd = aopc(rnd) if rnd is not None else None
    return MorfResult(
        morf_curve=morf,
        lerf_curve=lerf,
        random_curve=rnd,
        aopc_morf=a_morf,
        aopc_lerf=a_lerf,
        aopc_random=a_rnd,
        aopc_morf_minus_random=None if a_rnd is None else a_morf - a_rnd,
        area_between_lerf_morf=None if a_lerf is None else a_morf - a_lerf,
        forward_passes=1 + steps * len(sequences),
        steps=steps,
        seed=seed,
    )
