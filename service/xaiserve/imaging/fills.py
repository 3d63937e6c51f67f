"""Perturbation fills: what a removed region is replaced with.

``black``/``white`` are constants (0 / 255), ``mean`` the image's per-channel mean, ``blur`` a
Gaussian-blurred copy of the image, ``noise`` Gaussian noise around the image mean (σ = image
std), ``uniform`` per-pixel uniform noise on 0..255 (Samek et al.'s MoRF perturbation).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
from scipy.ndimage import gaussian_filter

from xaiserve.errors import InvalidInput

Fill = Literal["black", "white", "mean", "blur", "noise", "uniform"]
FILLS: tuple[str, ...] = get_args(Fill)

MAX_BLUR_SIGMA = 64.0
"""Upper bound on the ``blur`` fill's σ (pixels): the filter touches ~8σ pixels per pixel and
axis, and beyond ~a quarter of the image side a blur is the image mean anyway."""


def check_fill(name: str, field: str = "fill") -> Fill:
    if name not in FILLS:
        raise InvalidInput(f"{field} {name!r} is unknown; choose one of {', '.join(FILLS)}")
    return name  # type: ignore[return-value]


def fill_image(
    image: np.ndarray, fill: Fill, rng: np.random.Generator, blur_sigma: float = 5.0
) -> np.ndarray:
    """A full-size replacement image ``(H, W, 3)`` float32 for ``fill``.

    A region is removed by copying the replacement's pixels inside the region's mask
    (see :func:`replace`). Random fills draw fresh values from ``rng`` on every call.
    """
    h, w, c = image.shape
    if fill == "black":
        return np.zeros_like(image, dtype=np.float32)
    if fill == "white":
        return np.full_like(image, 255.0, dtype=np.float32)
    if fill == "mean":
        return np.broadcast_to(image.mean(axis=(0, 1), dtype=np.float64), image.shape).astype(
            np.float32
        )
    if fill == "blur":
        if not 0 <= blur_sigma <= MAX_BLUR_SIGMA:
            raise InvalidInput(f"blur_sigma is {blur_sigma:g}; it must be in 0..{MAX_BLUR_SIGMA:g}")
        return gaussian_filter(image.astype(np.float32), sigma=(blur_sigma, blur_sigma, 0))
    if fill == "noise":
        mean = image.mean(axis=(0, 1))
        std = image.std(axis=(0, 1)) + 1e-6
        noise = rng.normal(mean, std, size=(h, w, c))
        return np.clip(noise, 0, 255).astype(np.float32)
    if fill == "uniform":
        return rng.uniform(0.0, 255.0, size=(h, w, c)).astype(np.float32)
    raise InvalidInput(f"fill {fill!r} is unknown; choose one of {', '.join(FILLS)}")


def replace(image: np.ndarray, mask: np.ndarray, replacement: np.ndarray) -> np.ndarray:
    """A copy of ``image`` with the pixels under ``mask`` (H, W) taken from ``replacement``."""
    out = image.copy()
    out[mask] = replacement[mask]
    return out
