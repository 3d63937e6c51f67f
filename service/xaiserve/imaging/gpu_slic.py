"""SLIC superpixels on a CUDA device, with PyTorch: the GPU side of ``segmentation_device``.

No well-kept library ships SLIC for CUDA: cuCIM's ``cucim.skimage.segmentation`` (26.10) has
chan-vese, random walker, morphological snakes and label utilities but no ``slic``, and the
PyPI CUDA SLIC packages (``cuda-slic``/``gpu-slic`` 0.0.1a3) are unmaintained alphas from 2020
that compile kernels with nvcc at run time. PyTorch is already a dependency of the service, so
this module runs scikit-image's SLIC (``skimage.segmentation.slic``, Achanta et al. 2012, with
SLIC-zero) step for step as tensor operations:

1. rescale the image to 0..1 by its global minimum and maximum, convert it to CIE Lab (D65, 2°
   observer; scikit-image's ``rgb2lab``), smooth each Lab channel with a Gaussian of ``sigma``
   pixels (truncated at 4σ, mirrored borders: ``scipy.ndimage`` mode ``reflect``), scale the
   colours by ``1 / compactness``;
2. seed the centres on scikit-image's regular grid (``skimage.util.regular_grid``) with colour 0;
3. ``max_num_iter = 10`` times: assign every pixel to the centre minimising
   ``‖Δyx‖² / step² + ‖Δlab‖² / m_k`` among the centres whose window ``±2·step`` covers it
   (``m_k = 1``, or with SLIC-zero the largest colour distance seen in segment ``k``; ties go
   to the lowest centre index, as in scikit-image's loop), stop when no pixel changes, move
   each centre to the mean position and colour of its pixels, update ``m_k``;
4. enforce connectivity exactly as scikit-image does (its own routine, on the CPU: a
   breadth-first pass that absorbs fragments below half the mean segment size).

The distance step is computed for blocks of centres against all pixels, so memory stays below
``BLOCK_ELEMENTS`` floats whatever the image. On the CPU the same code runs with torch's CPU
tensors, which is how the unit tests measure its agreement with scikit-image (adjusted Rand
index) on machines without a GPU.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import numpy as np

from xaiserve.imaging.segmentation import SegmentationParams, relabel_contiguous

if TYPE_CHECKING:
    import torch

MAX_NUM_ITER = 10
"""scikit-image's default ``max_num_iter``."""

MIN_SIZE_FACTOR = 0.5
MAX_SIZE_FACTOR = 3.0
"""scikit-image's defaults for the connectivity step."""

BLOCK_ELEMENTS = 1 << 24
"""Centre-by-pixel distances computed at once (64 MiB of float32)."""

_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_D65_2DEG = (0.95047, 1.0, 1.08883)


@functools.cache
def unavailable_reason() -> str | None:
    """Why SLIC cannot run on a GPU here (``None`` when it can): torch or CUDA missing."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    try:
        if not torch.cuda.is_available():
            return "no CUDA device is visible to PyTorch"
    except Exception as exc:  # a broken driver raises instead of answering False
        return f"CUDA could not be initialised ({type(exc).__name__})"
    return None


SELF_CHECK_COUNTS = (16, 64)
"""Segment counts of the start-up agreement check (:func:`self_check`)."""

SELF_CHECK_MIN_ARI = 0.9
"""Least adjusted Rand index with scikit-image for the GPU path to be used (float32 on CUDA
may flip boundary pixels; ``bench/segmentation_device.py`` uses the same bound)."""


def self_check(device: str = "cuda", size: int = 64) -> str | None:
    """Why the torch SLIC on ``device`` must not be used (``None``: it agrees with scikit-image).

    Segments scikit-image's astronaut photograph resized to ``size``² at
    :data:`SELF_CHECK_COUNTS` with this module (float32) and with ``skimage.segmentation.slic``
    (the CPU path) and requires an adjusted Rand index of at least :data:`SELF_CHECK_MIN_ARI`
    for each; any exception is a reason too. The segmenter runs it once before it segments on a
    GPU, so a CUDA path that was never verified on that machine cannot be taken silently.
    """
    try:
        from skimage import data
        from skimage.transform import resize
        from sklearn.metrics import adjusted_rand_score

        from xaiserve.imaging.segmentation import superpixels as cpu_superpixels

        image = (255.0 * resize(data.astronaut(), (size, size), anti_aliasing=True)).astype(
            np.float32
        )
        for n in SELF_CHECK_COUNTS:
            params = SegmentationParams(n_segments=n)
            want = cpu_superpixels(image, params)
            got = superpixels(image, params, device, "float32")
            ari = float(adjusted_rand_score(want.ravel(), got.ravel()))
            if not ari >= SELF_CHECK_MIN_ARI:
                return (
                    f"SLIC on {device} disagrees with scikit-image at {n} segments "
                    f"(adjusted Rand index {ari:.3f} < {SELF_CHECK_MIN_ARI})"
                )
    except Exception as exc:  # any failure of the unverified path is a reason not to use it
        return f"SLIC on {device} failed its check against scikit-image ({type(exc).__name__}: {exc})"
    return None


def superpixels(
    image: np.ndarray, params: SegmentationParams, device: str = "cuda", precision: str = ""
) -> np.ndarray:
    """SLIC labels of ``image`` ``(H, W, 3)`` on 0..255, contiguous from 0 (int32)."""
    if params.algorithm != "slic":
        raise ValueError("only SLIC runs on the GPU")
    return relabel_contiguous(slic(image, params, device, precision))


def slic(
    image: np.ndarray, params: SegmentationParams, device: str = "cuda", precision: str = ""
) -> np.ndarray:
    """scikit-image's ``slic(image, n_segments, compactness, sigma, slic_zero,
    start_label=0, channel_axis=-1)`` computed with torch on ``device`` (module docstring).

    ``precision`` is ``float32`` or ``float64``; empty means float32 on CUDA (what the service
    uses) and float64 elsewhere (scikit-image's own precision).
    """
    import torch
    from skimage.segmentation._slic import _enforce_label_connectivity_cython
    from skimage.util import regular_grid

    dev = torch.device(device)
    if precision not in ("", "float32", "float64"):
        raise ValueError(f"precision {precision!r}: choose float32 or float64")
    chosen = precision or ("float32" if dev.type == "cuda" else "float64")
    dtype = torch.float32 if chosen == "float32" else torch.float64
    h, w = image.shape[:2]
    rgb = np.clip(np.asarray(image, dtype=np.float64), 0.0, 255.0) / 255.0
    x = torch.as_tensor(rgb, device=dev).to(dtype)
    lo, hi = x.min(), x.max()
    x = x - lo
    if hi > lo:
        x = x / (hi - lo)
    lab = _rgb2lab(x)
    if params.sigma > 0:
        lab = _gaussian(lab, float(params.sigma))
    lab = (lab / params.compactness).reshape(-1, 3)

    slices = regular_grid((1, h, w), params.n_segments)
    step = max(float(s.step) if s.step is not None else 1.0 for s in slices)
    gy, gx = np.mgrid[:h, :w]
    cy = torch.as_tensor(gy[slices[1:]].ravel(), device=dev, dtype=dtype)
    cx = torch.as_tensor(gx[slices[1:]].ravel(), device=dev, dtype=dtype)
    k = cy.numel()
    # _slic_cython recomputes the grid steps for the centres it got (they bound the windows)
    win = regular_grid((1, h, w), k)
    win_y, win_x = (int(s.step) if s.step is not None else 1 for s in win[1:])
    colour = torch.zeros((k, 3), device=dev, dtype=dtype)
    max_colour = torch.ones(k, device=dev, dtype=dtype)
    py = torch.arange(h, device=dev, dtype=dtype).repeat_interleave(w)
    px = torch.arange(w, device=dev, dtype=dtype).repeat(h)
    labels = torch.full((h * w,), -1, device=dev, dtype=torch.long)
    block = max(1, BLOCK_ELEMENTS // (h * w))
    for _ in range(MAX_NUM_ITER):
        best = torch.full((h * w,), math.inf, device=dev, dtype=dtype)
        new = torch.full((h * w,), -1, device=dev, dtype=torch.long)
        for start in range(0, k, block):
            sl = slice(start, min(k, start + block))
            dy = cy[sl, None] - py[None, :]
            dx = cx[sl, None] - px[None, :]
            inside = (
                (py[None, :] >= torch.clamp(torch.trunc(cy[sl] - 2 * win_y), min=0)[:, None])
                & (py[None, :] < torch.clamp(torch.trunc(cy[sl] + 2 * win_y + 1), max=h)[:, None])
                & (px[None, :] >= torch.clamp(torch.trunc(cx[sl] - 2 * win_x), min=0)[:, None])
                & (px[None, :] < torch.clamp(torch.trunc(cx[sl] + 2 * win_x + 1), max=w)[:, None])
            )
            d = (dy * dy + dx * dx) / (step * step)
            diff = colour[sl, None, :] - lab[None, :, :]
            dc = (diff * diff).sum(-1)
            if params.slic_zero:
                dc = dc / max_colour[sl, None]
            d = torch.where(inside & ~torch.isnan(d + dc), d + dc, math.inf)
            value, index = d.min(dim=0)  # first minimum: the lowest centre wins ties
            better = value < best
            best = torch.where(better, value, best)
            new = torch.where(better, index + start, new)
        if torch.equal(new, labels):
            break
        labels = new
        assigned = labels >= 0
        idx = labels[assigned]
        n = torch.zeros(k, device=dev, dtype=dtype).index_add_(
            0, idx, torch.ones_like(idx, dtype=dtype)
        )
        cy = torch.zeros(k, device=dev, dtype=dtype).index_add_(0, idx, py[assigned]) / n
        cx = torch.zeros(k, device=dev, dtype=dtype).index_add_(0, idx, px[assigned]) / n
        colour = (
            torch.zeros((k, 3), device=dev, dtype=dtype).index_add_(0, idx, lab[assigned])
            / n[:, None]
        )
        if params.slic_zero:
            diff = lab[assigned] - colour[idx]
            seen = torch.zeros(k, device=dev, dtype=dtype).scatter_reduce_(
                0, idx, (diff * diff).sum(-1), reduce="amax", include_self=False
            )
            max_colour = torch.maximum(max_colour, torch.nan_to_num(seen, nan=0.0))
    out = labels.reshape(1, h, w).cpu().numpy().astype(np.intp)
    segment_size = h * w / k
    out = _enforce_label_connectivity_cython(
        np.ascontiguousarray(out),
        int(MIN_SIZE_FACTOR * segment_size),
        int(MAX_SIZE_FACTOR * segment_size),
        start_label=0,
    )
    return np.asarray(out)[0]


def _rgb2lab(rgb: torch.Tensor) -> torch.Tensor:
    """scikit-image's ``rgb2lab`` (sRGB → XYZ → CIE Lab, D65, 2°) on an ``(H, W, 3)`` tensor."""
    import torch

    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = torch.tensor(_XYZ_FROM_RGB, device=rgb.device, dtype=rgb.dtype)
    xyz = linear @ m.T
    xyz = xyz / torch.tensor(_D65_2DEG, device=rgb.device, dtype=rgb.dtype)
    f = torch.where(
        xyz > 0.008856, torch.pow(xyz.clamp(min=0), 1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0
    )
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=-1)


def _gaussian(lab: torch.Tensor, sigma: float) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter(lab, (σ, σ, 0), mode="reflect", truncate=4)``."""
    import torch

    radius = int(4.0 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, device=lab.device, dtype=lab.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = lab.permute(2, 0, 1)  # (3, H, W)
    for axis in (1, 2):
        x = _reflect_pad(x, radius, axis)
        x = x.unfold(axis, 2 * radius + 1, 1) @ kernel
    return x.permute(1, 2, 0)


def _reflect_pad(x: torch.Tensor, radius: int, axis: int) -> torch.Tensor:
    """Pad ``radius`` values on both ends of ``axis``, mirrored including the edge
    (``d c b a | a b c d``); repeats the mirror for axes shorter than ``radius``."""
    import torch

    n = x.shape[axis]
    idx = torch.arange(-radius, n + radius, device=x.device)
    period = 2 * n
    idx = torch.remainder(idx, period)
    idx = torch.where(idx >= n, period - 1 - idx, idx)
    return x.index_select(axis, idx)
