"""Synthetic coloured shapes on cluttered backgrounds, with ground-truth object masks.

Every image holds exactly one object: a solid-coloured shape of one of :data:`CLASS_NAMES`,
drawn on a textured background (smooth colour noise blended with a gradient or stripes, plus
fine grain) that carries distractor clutter which is never a class shape (small blobs, thin
lines, speckle). Classes differ only by shape: colour, size, position and rotation are drawn
independently of the class, so a classifier has to look at the object's outline.

Facts the generator guarantees (and the tests check):

- The object is drawn last and is never occluded, so ``masks[i]`` is exactly the set of pixels
  showing the object, and every one of them has the colour ``colors[i]``. It is one
  8-connected region. Outside the mask the image equals :func:`backgrounds` exactly.
- The object lies fully inside the image, and ``boxes[i] = (y0, x0, y1, x1)`` is its tight
  bounding box with exclusive ends: ``masks[i][y0:y1, x0:x1]`` holds every object pixel.
- The object covers a fraction of the image inside :data:`COVERAGE_RANGE`.
- Labels cycle through the classes (``label = index % len(CLASS_NAMES)``), so any run of
  consecutive indices is balanced.
- Sample ``index`` of ``seed`` is drawn from ``numpy.random.default_rng([seed, index])`` alone:
  it is the same whatever ``n`` or ``start`` it was generated with.

Splits: the training script draws from :data:`TRAIN_SEED`; the held-out split
(:func:`heldout`) is :data:`HELDOUT_SEED`, never used for training.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage
from skimage.draw import ellipse, line, polygon

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
"""Class names, in label order."""

IMAGE_SIZE = 64
"""Default side length of the square images, in pixels."""

TRAIN_SEED = 1
"""Seed of the training split (the training script uses indices 0, 1, 2, ...)."""

HELDOUT_SEED = 2
"""Seed of the held-out split: used for evaluation only, never for training."""

COVERAGE_RANGE: tuple[float, float] = (0.05, 0.40)
"""Guaranteed range of the object's area as a fraction of the image area."""

_TARGET_COVERAGE = (0.06, 0.30)  # sampled uniformly; rasterisation stays inside COVERAGE_RANGE
_MIN_CONTRAST = 70.0  # mean RGB distance between object colour and the background under it
_NEAR = 40.0  # an object pixel whose background is nearer than this is "camouflaged"
_MAX_CAMOUFLAGED = 0.05  # allowed fraction of camouflaged object pixels
_COLOUR_TRIES = 32
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class ShapesDataset:
    """A batch of shapes images with their labels and ground truth.

    Attributes:
        images: ``uint8 (N, H, W, 3)`` RGB images.
        labels: ``int64 (N,)`` class indices into ``class_names``.
        masks: ``bool (N, H, W)`` true on exactly the object's pixels.
        boxes: ``int64 (N, 4)`` tight object boxes ``(y0, x0, y1, x1)``, ends exclusive.
        colors: ``uint8 (N, 3)`` the object's RGB colour (every masked pixel has it).
        class_names: the class names, in label order.
    """

    images: NDArray[np.uint8]
    labels: NDArray[np.int64]
    masks: NDArray[np.bool_]
    boxes: NDArray[np.int64]
    colors: NDArray[np.uint8]
    class_names: tuple[str, ...] = CLASS_NAMES

    def __len__(self) -> int:
        """Return the number of samples."""
        return int(self.labels.shape[0])

    @property
    def coverage(self) -> FloatArray:
        """Fraction of each image covered by its object, ``float64 (N,)``."""
        return self.masks.mean(axis=(1, 2), dtype=np.float64)


@dataclass(frozen=True)
class Sample:
    """One rendered image with its ground truth (see :class:`ShapesDataset`)."""

    image: NDArray[np.uint8]
    label: int
    mask: NDArray[np.bool_]
    box: tuple[int, int, int, int]
    color: NDArray[np.uint8]
    background: NDArray[np.uint8]
    """The same image without its object (background and clutter only)."""


def _regular_polygon(n: int, radii: tuple[float, ...], phase: float) -> FloatArray:
    """Vertices ``(n*len(radii), 2)`` as (x, y) of a star-like polygon with circumradius 1."""
    k = n * len(radii)
    angles = phase + 2.0 * np.pi * np.arange(k) / k
    r = np.resize(np.asarray(radii, dtype=np.float64), k)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


def _cross(arm: float) -> FloatArray:
    """Vertices (x, y) of a plus sign with arm length 1 and arm half-width ``arm``."""
    a = arm
    return np.array(
        [
            (a, 1), (a, a), (1, a), (1, -a), (a, -a), (a, -1),
            (-a, -1), (-a, -a), (-1, -a), (-1, a), (-a, a), (-a, 1),
        ],
        dtype=np.float64,
    )  # fmt: skip


def unit_shape(label: int, rng: np.random.Generator) -> FloatArray:
    """Outline (x, y) of class ``label`` centred on 0, before scaling and rotation.

    Star points and cross arm widths vary a little so the classes are not single templates.
    """
    name = CLASS_NAMES[label]
    if name == "circle":
        return _regular_polygon(48, (1.0,), 0.0)
    if name == "square":
        return _regular_polygon(4, (1.0,), np.pi / 4)
    if name == "triangle":
        return _regular_polygon(3, (1.0,), -np.pi / 2)
    if name == "star":
        return _regular_polygon(5, (1.0, float(rng.uniform(0.38, 0.5))), -np.pi / 2)
    if name == "cross":
        return _cross(float(rng.uniform(0.25, 0.38)))
    raise ValueError(f"unknown class index {label}")


def _polygon_area(xy: FloatArray) -> float:
    """Area of a simple polygon (shoelace formula)."""
    x, y = xy[:, 0], xy[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _upsample(grid: FloatArray, size: int) -> FloatArray:
    """Bilinearly stretch a ``(k, k, C)`` grid to ``(size, size, C)``."""
    k = grid.shape[0]
    t = np.linspace(0.0, k - 1.0, size)
    i0 = np.minimum(np.floor(t).astype(np.int64), k - 2)
    w = (t - i0)[:, None]
    rows = grid[i0] * (1 - w[:, :, None]) + grid[i0 + 1] * w[:, :, None]
    return rows[:, i0] * (1 - w[None, :, :]) + rows[:, i0 + 1] * w[None, :, :]


def _background(rng: np.random.Generator, size: int) -> FloatArray:
    """Draw a textured background ``float (size, size, 3)`` in 0..255."""
    k = int(rng.integers(3, 10))
    noise = _upsample(rng.uniform(0, 255, (k, k, 3)), size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    theta = rng.uniform(0, 2 * np.pi)
    proj = xx * np.cos(theta) + yy * np.sin(theta)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    if rng.random() < 0.5:  # linear gradient
        t = (proj - proj.min()) / (proj.max() - proj.min())
    else:  # stripes, soft or hard
        t = 0.5 + 0.5 * np.sin(2 * np.pi * proj / rng.uniform(4, 16))
        if rng.random() < 0.5:
            t = (t > 0.5).astype(np.float64)
    pattern = c0 * (1 - t[..., None]) + c1 * t[..., None]
    alpha = rng.uniform(0.2, 0.8)
    bg = alpha * noise + (1 - alpha) * pattern
    bg += rng.normal(0, rng.uniform(2, 10), bg.shape)  # grain
    return bg


def _clutter(img: FloatArray, rng: np.random.Generator) -> None:
    """Draw distractors in place: small blobs, thin lines and speckle (never class shapes)."""
    size = img.shape[0]
    for _ in range(int(rng.integers(2, 9))):  # small elliptical blobs, radius <= 3 px
        rr, cc = ellipse(
            rng.uniform(0, size), rng.uniform(0, size),
            rng.uniform(1, 3.5), rng.uniform(1, 3.5),
            shape=(size, size), rotation=rng.uniform(0, np.pi),
        )  # fmt: skip
        img[rr, cc] = rng.uniform(0, 255, 3)
    for _ in range(int(rng.integers(1, 6))):  # thin straight lines
        r0, c0, r1, c1 = rng.integers(0, size, 4)
        rr, cc = line(int(r0), int(c0), int(r1), int(c1))
        img[rr, cc] = rng.uniform(0, 255, 3)
    speck = rng.random((size, size)) < rng.uniform(0.005, 0.03)  # speckle
    img[speck] = rng.uniform(0, 255, (int(speck.sum()), 3))


def _object_mask(label: int, rng: np.random.Generator, size: int) -> NDArray[np.bool_]:
    """Rasterise a randomly scaled, rotated and placed shape of class ``label``."""
    xy = unit_shape(label, rng)
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    xy = xy @ rot.T
    target = rng.uniform(*_TARGET_COVERAGE) * size * size
    scale = np.sqrt(target / _polygon_area(xy))
    extent = float((xy.max(axis=0) - xy.min(axis=0)).max())
    scale = min(scale, (size - 3.5) / extent)  # must fit, with a 1 px margin
    xy = xy * scale
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    cx = rng.uniform(1 - lo[0], size - 2 - hi[0])
    cy = rng.uniform(1 - lo[1], size - 2 - hi[1])
    rr, cc = polygon(xy[:, 1] + cy, xy[:, 0] + cx, shape=(size, size))
    mask = np.zeros((size, size), dtype=bool)
    mask[rr, cc] = True
    parts, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count > 1:  # a thin star tip can rasterise to a stray pixel: keep the shape itself
        sizes = np.bincount(parts.ravel())[1:]
        mask = parts == 1 + int(np.argmax(sizes))
    return mask


def _object_colour(bg: NDArray[np.uint8], rng: np.random.Generator) -> NDArray[np.uint8]:
    """Pick a random colour that stands out from the background pixels ``bg (M, 3)``."""
    best, best_score = np.zeros(3, dtype=np.uint8), -np.inf
    for _ in range(_COLOUR_TRIES):
        colour = rng.integers(0, 256, 3).astype(np.uint8)
        dist = np.linalg.norm(bg.astype(np.float64) - colour, axis=1)
        camouflaged = float((dist < _NEAR).mean())
        if dist.mean() >= _MIN_CONTRAST and camouflaged <= _MAX_CAMOUFLAGED:
            return colour
        score = dist.mean() - 1000.0 * camouflaged
        if score > best_score:
            best, best_score = colour, score
    return best


def render_sample(seed: int, index: int, size: int = IMAGE_SIZE) -> Sample:
    """Render sample ``index`` of the stream ``seed`` (depends on nothing else)."""
    rng = np.random.default_rng([seed, index])
    label = index % len(CLASS_NAMES)
    img = _background(rng, size)
    _clutter(img, rng)
    background = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    mask = _object_mask(label, rng, size)
    colour = _object_colour(background[mask], rng)
    image = background.copy()
    image[mask] = colour
    ys, xs = np.nonzero(mask)
    box = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)
    return Sample(image=image, label=label, mask=mask, box=box, color=colour, background=background)


def _check(n: int, start: int, size: int) -> None:
    """Validate the arguments shared by :func:`generate` and :func:`backgrounds`."""
    if n < 0 or start < 0:
        raise ValueError("n and start must be non-negative")
    if size < 32:
        raise ValueError("size must be at least 32")


def generate(n: int, seed: int, size: int = IMAGE_SIZE, start: int = 0) -> ShapesDataset:
    """Generate samples ``start .. start+n-1`` of the stream ``seed``.

    Args:
        n: number of samples.
        seed: stream seed, e.g. :data:`TRAIN_SEED` or :data:`HELDOUT_SEED`.
        size: image side length in pixels (at least 32).
        start: index of the first sample.
    """
    _check(n, start, size)
    samples = [render_sample(seed, start + i, size) for i in range(n)]
    return ShapesDataset(
        images=np.array([s.image for s in samples], dtype=np.uint8).reshape(n, size, size, 3),
        labels=np.array([s.label for s in samples], dtype=np.int64),
        masks=np.array([s.mask for s in samples], dtype=bool).reshape(n, size, size),
        boxes=np.array([s.box for s in samples], dtype=np.int64).reshape(n, 4),
        colors=np.array([s.color for s in samples], dtype=np.uint8).reshape(n, 3),
    )


def backgrounds(n: int, seed: int, size: int = IMAGE_SIZE, start: int = 0) -> NDArray[np.uint8]:
    """``uint8 (n, size, size, 3)``: samples ``start .. start+n-1`` of ``seed`` without objects.

    Outside its mask each image of :func:`generate` equals its background exactly, so these
    are object-free counterfactuals (e.g. baselines, or "object removed" checks).
    """
    _check(n, start, size)
    images = [render_sample(seed, start + i, size).background for i in range(n)]
    return np.array(images, dtype=np.uint8).reshape(n, size, size, 3)


def heldout(n: int = 1000, size: int = IMAGE_SIZE) -> ShapesDataset:
    """Return the fixed held-out split: the first ``n`` samples of :data:`HELDOUT_SEED`."""
    return generate(n, HELDOUT_SEED, size)


def save_folder(dataset: ShapesDataset, path: str | Path) -> Path:
    """Write ``dataset`` as a data-set folder (the layout server-side data-set folders use).

    Layout::

        path/
          images/00000.png   RGB image, 8 bit
          masks/00000.png    object mask, 8-bit greyscale: 255 object, 0 background
          labels.csv         header: file,label,label_name,box

    ``labels.csv`` has one row per sample: ``file`` is the image path relative to ``path``
    (``images/00000.png``; its mask has the same name under ``masks/``), ``label`` the class
    index, ``label_name`` its name and ``box`` the object box as ``"y0 x0 y1 x1"`` (pixels,
    ends exclusive). File names are zero-padded sample positions, 5 digits or more.

    Returns:
        The folder path.
    """
    root = Path(path)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(max(len(dataset) - 1, 0))))
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "label_name", "box"])
        for i in range(len(dataset)):
            name = f"{i:0{width}d}.png"
            Image.fromarray(dataset.images[i], mode="RGB").save(root / "images" / name)
            mask = dataset.masks[i].astype(np.uint8) * 255
            Image.fromarray(mask, mode="L").save(root / "masks" / name)
            label = int(dataset.labels[i])
            box = " ".join(str(int(v)) for v in dataset.boxes[i])
            writer.writerow([f"images/{name}", label, dataset.class_names[label], box])
    return root


def load_folder(path: str | Path) -> ShapesDataset:
    """Read a folder written by :func:`save_folder` back (object colours are recomputed)."""
    root = Path(path)
    images, labels, masks, boxes, colours = [], [], [], [], []
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            image = np.asarray(Image.open(root / row["file"]).convert("RGB"), dtype=np.uint8)
            mask_path = root / "masks" / Path(row["file"]).name
            mask = np.asarray(Image.open(mask_path).convert("L")) > 127
            images.append(image)
            masks.append(mask)
            labels.append(int(row["label"]))
            boxes.append([int(v) for v in row["box"].split()])
            colours.append(image[mask][0] if mask.any() else np.zeros(3, np.uint8))
    n = len(labels)
    return ShapesDataset(
        images=np.stack(images) if n else np.zeros((0, 0, 0, 3), np.uint8),
        labels=np.array(labels, dtype=np.int64),
        masks=np.stack(masks) if n else np.zeros((0, 0, 0), bool),
        boxes=np.array(boxes, dtype=np.int64).reshape(n, 4),
        colors=np.array(colours, dtype=np.uint8).reshape(n, 3),
    )
