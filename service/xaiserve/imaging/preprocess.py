"""Bring images to the model's grid (image space) and into the network's input format."""

from __future__ import annotations

import numpy as np
from PIL import Image

from xaiserve.contracts.input import InputConfig, Layout, Preprocessing


def fit_to_input(image: np.ndarray, cfg: InputConfig) -> np.ndarray:
    """Resize an image-space image ``(h, w, 3)`` to ``(height, width, 3)`` by the config's policy.

    ``stretch`` resizes both sides; ``center_crop`` scales the shorter side to fit and crops
    the centre. Bilinear with antialiasing (Pillow), per channel in float32.
    """
    h, w = image.shape[:2]
    if (h, w) == (cfg.height, cfg.width):
        return image.astype(np.float32, copy=False)
    if cfg.resize == "center_crop":
        scale = max(cfg.height / h, cfg.width / w)
        nh, nw = max(cfg.height, round(h * scale)), max(cfg.width, round(w * scale))
        resized = _resize(image, nh, nw)
        top, left = (nh - cfg.height) // 2, (nw - cfg.width) // 2
        return np.ascontiguousarray(resized[top : top + cfg.height, left : left + cfg.width])
    return _resize(image, cfg.height, cfg.width)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    channels = [
        np.asarray(
            Image.fromarray(image[:, :, c].astype(np.float32), mode="F").resize(
                (width, height), Image.Resampling.BILINEAR
            )
        )
        for c in range(image.shape[2])
    ]
    return np.clip(np.stack(channels, axis=2), 0.0, 255.0).astype(np.float32)


def pixel_rows(x: np.ndarray, layout: Layout | None) -> np.ndarray:
    """A ``(…, H·W, 3)`` view of contiguous images: image-space ``(…, H, W, 3)`` (``layout``
    ``None``) or network inputs in ``layout`` (NCHW ``(…, 3, H, W)``: the channel axis moved
    last, no copy). Row ``p`` is pixel ``p`` (row-major) in every layout, so methods that
    perturb pixels by flat index write image space and network input alike (the channels in
    the network's order)."""
    if layout == "NCHW":
        *lead, c, h, w = x.shape
        return np.moveaxis(x.reshape(*lead, c, h * w), -2, -1)
    *lead, h, w, c = x.shape
    return x.reshape(*lead, h * w, c)


def pixel_grid(x: np.ndarray, layout: Layout | None) -> np.ndarray:
    """A ``(…, H, W, 3)`` view of image-space images (``layout`` ``None``) or network inputs in
    ``layout`` (NCHW: the channel axis moved last, no copy): ``view[…, rows, cols]`` is that
    window of the image in every layout."""
    return np.moveaxis(x, -3, -1) if layout == "NCHW" else x


def to_network_input(images: np.ndarray, cfg: Preprocessing) -> np.ndarray:
    """Image-space ``(N, H, W, 3)`` RGB 0..255 → the network's float32 input.

    ``x = (lo + pixel/255·(hi − lo) − mean) / std`` per channel in the model's channel order,
    then the model's layout (NCHW or NHWC). Computed as one affine map per channel,
    ``pixel · a + b`` with ``a = (hi − lo) / 255 / std`` and ``b = (lo − mean) / std``, written
    straight into the output layout: two passes over the pixels instead of five (a quarter of
    the time; on light networks this is a tenth of the forward pass per image).
    """
    lo, hi = cfg.value_range
    std = np.asarray(cfg.std, dtype=np.float64)
    a = ((hi - lo) / 255.0 / std).astype(np.float32)
    b = ((lo - np.asarray(cfg.mean, dtype=np.float64)) / std).astype(np.float32)
    x = np.asarray(images, dtype=np.float32)
    n, h, w, _ = x.shape
    source = (2, 1, 0) if cfg.channel_order == "BGR" else (0, 1, 2)
    if cfg.layout == "NCHW":
        out = np.empty((n, 3, h, w), dtype=np.float32)
        for c, src in enumerate(source):
            np.multiply(x[..., src], a[c], out=out[:, c])
            out[:, c] += b[c]
        return out
    out = np.empty((n, h, w, 3), dtype=np.float32)
    np.multiply(x[..., list(source)], a, out=out)
    out += b
    return out
