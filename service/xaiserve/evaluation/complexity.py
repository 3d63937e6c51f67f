"""Heatmap complexity (Samek et al., Section IV-B, Fig. 5): "good heatmaps should be better
compressible than noisy ones", measured as the size of the heatmap's PNG file and as the
Shannon entropy of the image (MATLAB's ``entropy``: the 256-bin histogram of the 8-bit image,
``−Σ p log2 p`` over non-empty bins).

Both work on the same 8-bit grey image: the heatmap min-max normalised to 0..1, then scaled to
0..255 and rounded (a constant heatmap becomes all zeros). PNG files are written by Pillow with a
fixed ``compress_level`` (default 9) and no optimiser pass, so sizes compare across heatmaps.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from xaiserve.errors import InvalidInput

PNG_COMPRESS_LEVEL = 9


@dataclass(frozen=True)
class ComplexityResult:
    """Field names follow the proto ``Complexity`` message."""

    png_bytes: int
    entropy: float


def to_uint8(heatmap: np.ndarray) -> np.ndarray:
    """The heatmap as an 8-bit grey image: ``round(255 · (h − min) / (max − min))``."""
    hm = np.asarray(heatmap, dtype=np.float64)
    if hm.ndim != 2 or hm.size == 0:
        raise InvalidInput(f"heatmap has shape {hm.shape}; it must be a non-empty (H, W)")
    if not np.all(np.isfinite(hm)):
        raise InvalidInput("heatmap contains NaN or infinite values; send finite relevances")
    lo, hi = hm.min(), hm.max()
    if hi <= lo:
        return np.zeros(hm.shape, dtype=np.uint8)
    return np.rint((hm - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def png_bytes(heatmap: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL) -> int:
    """Size in bytes of the 8-bit heatmap saved as a greyscale PNG (Samek et al. Fig. 5, top)."""
    if not 0 <= compress_level <= 9:
        raise InvalidInput(f"compress_level is {compress_level}; it must be in 0..9")
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(heatmap)).save(
        buffer, format="PNG", compress_level=compress_level, optimize=False
    )
    return buffer.getbuffer().nbytes


def entropy(heatmap: np.ndarray) -> float:
    """Shannon entropy in bits of the 8-bit heatmap's histogram (Samek et al. Fig. 5, bottom)."""
    counts = np.bincount(to_uint8(heatmap).ravel(), minlength=256)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0


def complexity(heatmap: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL) -> ComplexityResult:
    """PNG size and entropy of one heatmap (proto ``Complexity``)."""
    return ComplexityResult(png_bytes=png_bytes(heatmap, compress_level), entropy=entropy(heatmap))
