"""Turn request images (encoded bytes or raw tensors) into image-space arrays.

Output: ``(h, w, 3)`` float32 RGB on the 0..255 scale at the image's own size. Limits are
checked before any large allocation: encoded images by the dimensions in their header (a PNG
declaring 30000×30000 is refused before decoding), tensors by their declared shape.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from xaiserve.errors import InvalidInput

_TENSOR_DTYPES = {"uint8": np.uint8, "float32": np.float32}


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    formats: tuple[str, ...] = ("PNG", "JPEG")


@dataclass(frozen=True)
class RawTensor:
    """A tensor as a client sent it: dtype name, shape and little-endian bytes (not decoded)."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class ImageInput:
    """A request image before decoding: encoded file bytes, or a raw tensor (or neither, when
    the client sent none; :func:`decode_image` then names the missing field)."""

    encoded: bytes | None = None
    tensor: RawTensor | None = None


def decode_image(image: ImageInput, limits: ImageLimits, field: str = "image") -> np.ndarray:
    """Decode a request image to image space at its own size (the one decoding step)."""
    if image.encoded is not None:
        return decode_encoded(image.encoded, limits)
    if image.tensor is not None:
        t = image.tensor
        return decode_tensor(t.dtype, list(t.shape), t.data, limits)
    raise InvalidInput(
        f"{field} is missing: set {field}.encoded (PNG/JPEG bytes) or {field}.tensor"
    )


def decode_map(t: RawTensor, height: int, width: int, field: str) -> np.ndarray:
    """A client-supplied heatmap or mask on a ``(height, width)`` grid (see
    :func:`decode_heatmap`)."""
    return decode_heatmap(t.dtype, list(t.shape), t.data, height, width, field)


def decode_encoded(data: bytes, limits: ImageLimits) -> np.ndarray:
    """Decode PNG/JPEG bytes (allow-listed formats only) after checking the declared size."""
    if not data:
        raise InvalidInput("image.encoded is empty: send PNG or JPEG file bytes")
    if len(data) > limits.max_bytes:
        raise InvalidInput(
            f"image is {len(data)} bytes, over the limit of {limits.max_bytes} bytes "
            "(max_image_bytes): send a smaller image"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(limits.formats))
            width, height = img.size
            _check_pixels(height, width, limits)
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            oriented: Image.Image = ImageOps.exif_transpose(img) or img
            return _to_rgb_array(oriented)
    except InvalidInput:
        raise
    except UnidentifiedImageError:
        allowed = ", ".join(limits.formats)
        raise InvalidInput(
            f"image.encoded could not be decoded: send a valid image in one of {allowed}"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput(
            f"image declares too many pixels (limit {limits.max_pixels}, max_image_pixels)"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, IndexError, TypeError) as exc:
        raise InvalidInput(
            f"image.encoded is corrupt or truncated ({type(exc).__name__}): send a complete file"
        ) from None


def _check_pixels(height: int, width: int, limits: ImageLimits) -> None:
    if height < 1 or width < 1:
        raise InvalidInput(f"image is {width}×{height}: both sides must be at least 1 pixel")
    if height * width > limits.max_pixels:
        raise InvalidInput(
            f"image is {width}×{height} = {width * height} pixels, over the limit of "
            f"{limits.max_pixels} (max_image_pixels): downscale it before sending"
        )


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        gray = (arr / peak * 255.0).astype(np.float32)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "F":
        raise InvalidInput(
            "image has floating-point pixels: send 8-bit or 16-bit PNG/JPEG, or a tensor"
        )
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    rgb = img.convert("RGB")
    return np.asarray(rgb, dtype=np.float32).copy()


def decode_tensor(dtype: str, shape: list[int], data: bytes, limits: ImageLimits) -> np.ndarray:
    """Validate and convert a raw image tensor (H, W, 3), (H, W, 1) or (H, W)."""
    if dtype not in _TENSOR_DTYPES:
        raise InvalidInput(
            f"image.tensor.dtype {dtype!r} is not supported: use 'uint8' or 'float32'"
        )
    if len(shape) not in (2, 3):
        raise InvalidInput(
            f"image.tensor.shape {list(shape)} has rank {len(shape)}: use (H, W, 3), (H, W, 1) or (H, W)"
        )
    if any(d < 1 for d in shape):
        raise InvalidInput(f"image.tensor.shape {list(shape)} has a dimension below 1")
    if len(shape) == 3 and shape[2] not in (1, 3):
        raise InvalidInput(
            f"image.tensor.shape {list(shape)}: the last axis must be 3 (RGB) or 1 (gray)"
        )
    height, width = shape[0], shape[1]
    if height > limits.max_pixels or width > limits.max_pixels:
        raise InvalidInput(
            f"image.tensor.shape {list(shape)} is over max_image_pixels ({limits.max_pixels})"
        )
    _check_pixels(height, width, limits)
    itemsize = np.dtype(_TENSOR_DTYPES[dtype]).itemsize
    expected = math.prod(shape) * itemsize
    if expected != len(data):
        raise InvalidInput(
            f"image.tensor.data has {len(data)} bytes but shape {list(shape)} of {dtype} needs {expected}"
        )
    arr = np.frombuffer(data, dtype=np.dtype(_TENSOR_DTYPES[dtype]).newbyteorder("<")).reshape(
        shape
    )
    out = arr.astype(np.float32)
    if dtype == "float32":
        if not np.isfinite(out).all():
            raise InvalidInput("image.tensor has NaN or infinite values")
        if out.min() < 0.0 or out.max() > 255.0:
            raise InvalidInput(
                "image.tensor float32 values must lie in 0..255 (scale [0, 1] images by 255)"
            )
    if out.ndim == 2:
        out = out[:, :, None]
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out)


def decode_heatmap(
    dtype: str, shape: list[int], data: bytes, height: int, width: int, field: str
) -> np.ndarray:
    """A client-supplied heatmap/mask tensor: must be (height, width), finite."""
    if list(shape) != [height, width]:
        raise InvalidInput(
            f"{field}.shape {list(shape)} must be the model's input grid [{height}, {width}]"
        )
    if dtype not in _TENSOR_DTYPES:
        raise InvalidInput(f"{field}.dtype {dtype!r} is not supported: use 'float32' or 'uint8'")
    itemsize = np.dtype(_TENSOR_DTYPES[dtype]).itemsize
    if len(data) != height * width * itemsize:
        raise InvalidInput(
            f"{field}.data has {len(data)} bytes; shape {list(shape)} of {dtype} needs {height * width * itemsize}"
        )
    arr = np.frombuffer(data, dtype=np.dtype(_TENSOR_DTYPES[dtype]).newbyteorder("<")).reshape(
        height, width
    )
    out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise InvalidInput(f"{field} has NaN or infinite values")
    return out
