"""Turn request images (encoded bytes or raw tensors) into image-space arrays.

Output: ``(h, w, 3)`` float32 RGB on the 0..255 scale at the image's own size. Limits are
checked before any large allocation: encoded images by the dimensions in their header (a PNG
declaring 30000×30000 is refused before decoding), tensors by their declared shape.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from xaiserve.errors import InvalidInput

_TENSOR_DTYPES = {"uint8": np.uint8, "float32": np.float32}


AUTO_PIXELS_PER_MODEL_PIXEL = 256
"""With ``max_image_pixels = 0`` an image may have 256× the model's input pixels (16× per
side: a 224² model takes up to 3584², a 64² model up to 1024²), within the bounds below."""

AUTO_MIN_PIXELS = 1024 * 1024
AUTO_MAX_PIXELS = 4096 * 4096

REDUCING_GAP = 2.0
"""Decode-time downscaling stops while the image is still at least this many times the model's
grid per side, so the final (antialiased bilinear) resize sees enough pixels — the same rule as
Pillow's ``resize(reducing_gap=2.0)``."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_BASE_CHUNKS = 4096
PNG_BYTES_PER_CHUNK = 512
"""A PNG may hold at most ``4096 + size / 512`` chunks: encoders write image data in chunks of
8–64 KiB, while a file of millions of empty chunks takes seconds to walk."""

_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}
"""EXIF orientation → the transposition that shows the image upright (as ``ImageOps.exif_transpose``)."""


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 4096 * 4096  # 0 = sized to the model (see pixels_for)
    formats: tuple[str, ...] = ("PNG", "JPEG")

    def pixels_for(self, size: tuple[int, int] | None) -> int:
        """The pixel limit for images headed to a model of input ``size`` (``(H, W)``)."""
        if self.max_pixels > 0:
            return self.max_pixels
        if size is None:
            return AUTO_MAX_PIXELS
        auto = AUTO_PIXELS_PER_MODEL_PIXEL * size[0] * size[1]
        return min(AUTO_MAX_PIXELS, max(AUTO_MIN_PIXELS, auto))


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


def decode_image(
    image: ImageInput,
    limits: ImageLimits,
    field: str = "image",
    fit_within: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode a request image to image space (the one decoding step): at its own size, or
    decode-time downscaled toward ``fit_within`` (the model's grid, see :func:`decode_encoded`)."""
    if image.encoded is not None:
        return decode_encoded(image.encoded, limits, fit_within)
    if image.tensor is not None:
        t = image.tensor
        return decode_tensor(t.dtype, list(t.shape), t.data, limits, fit_within)
    raise InvalidInput(
        f"{field} is missing: set {field}.encoded (PNG/JPEG bytes) or {field}.tensor"
    )


def decode_map(t: RawTensor, height: int, width: int, field: str) -> np.ndarray:
    """A client-supplied heatmap or mask on a ``(height, width)`` grid (see
    :func:`decode_heatmap`)."""
    return decode_heatmap(t.dtype, list(t.shape), t.data, height, width, field)


def decode_encoded(
    data: bytes, limits: ImageLimits, fit_within: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode PNG/JPEG bytes (allow-listed formats only) after checking the declared size.

    With ``fit_within = (H, W)`` (the model's grid) the image is decoded no larger than it
    needs to be: JPEG through its DCT scaling (``draft``), anything else through Pillow's box
    ``reduce``, both stopping at :data:`REDUCING_GAP` × the grid per side, and always as 8-bit
    pixels; only the reduced image becomes float32. A broken EXIF block is ignored (the image
    is shown as stored) rather than failing the request.
    """
    if not data:
        raise InvalidInput("image.encoded is empty: send PNG or JPEG file bytes")
    if len(data) > limits.max_bytes:
        raise InvalidInput(
            f"image is {len(data)} bytes, over the limit of {limits.max_bytes} bytes "
            "(max_image_bytes): send a smaller image"
        )
    max_pixels = limits.pixels_for(fit_within)
    try:
        if data.startswith(PNG_SIGNATURE):
            _check_png_chunks(data)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=list(limits.formats))
            width, height = opened.size
            _check_pixels(height, width, max_pixels)
            if getattr(opened, "n_frames", 1) > 1:
                opened.seek(0)
            orientation = _orientation(opened)
            img: Image.Image = opened
            if fit_within is not None:
                img = _reduced(img, fit_within, orientation)
            for step in _TRANSPOSE.get(orientation, ()):
                img = img.transpose(step)
            return _to_rgb_array(img)
    except InvalidInput:
        raise
    except UnidentifiedImageError:
        allowed = ", ".join(limits.formats)
        raise InvalidInput(
            f"image.encoded could not be decoded: send a valid image in one of {allowed}"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput(
            f"image declares too many pixels (limit {max_pixels}, max_image_pixels)"
        ) from None
    except Exception as exc:
        # Pillow's plugins raise OSError, ValueError, SyntaxError, EOFError, struct.error,
        # IndexError, TypeError, ZeroDivisionError ... on malformed files; none is our fault.
        raise InvalidInput(
            f"image.encoded is corrupt or truncated ({type(exc).__name__}): send a complete file"
        ) from None


def _check_png_chunks(data: bytes) -> None:
    """Walk the PNG chunk list (lengths only) and refuse files with absurdly many chunks."""
    limit = PNG_BASE_CHUNKS + len(data) // PNG_BYTES_PER_CHUNK
    pos, count, end = len(PNG_SIGNATURE), 0, len(data)
    while pos + 8 <= end:
        (length,) = struct.unpack_from(">I", data, pos)
        count += 1
        if count > limit:
            raise InvalidInput(
                f"PNG has more than {limit} chunks for {len(data)} bytes: re-encode the image"
            )
        if data[pos + 4 : pos + 8] == b"IEND":
            return
        pos += 12 + length


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 when absent, unreadable or out of range)."""
    try:
        value = img.getexif().get(_ORIENTATION, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _reduced(img: Image.Image, grid: tuple[int, int], orientation: int) -> Image.Image:
    """``img`` decoded at the smallest size still ≥ ``REDUCING_GAP`` × ``grid`` per side."""
    th, tw = grid
    if orientation in (5, 6, 7, 8):  # stored sideways: the grid's sides swap
        th, tw = tw, th
    width, height = img.size
    want = (math.ceil(tw * REDUCING_GAP), math.ceil(th * REDUCING_GAP))
    if img.format == "JPEG" and (width > want[0] or height > want[1]):
        img.draft("RGB", want)
    img.load()
    width, height = img.size
    factor = int(min(width / (tw * REDUCING_GAP), height / (th * REDUCING_GAP)))
    if factor < 2:
        return img
    if img.mode in ("I;16", "I;16B", "I;16L"):
        img = img.convert("I")
    elif img.mode in ("P", "PA", "1"):
        alpha = img.mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if alpha else "RGB")
    return img.reduce(factor)


def _check_pixels(height: int, width: int, max_pixels: int) -> None:
    if height < 1 or width < 1:
        raise InvalidInput(f"image is {width}×{height}: both sides must be at least 1 pixel")
    if height * width > max_pixels:
        raise InvalidInput(
            f"image is {width}×{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} (max_image_pixels): downscale it before sending"
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


def decode_tensor(
    dtype: str,
    shape: list[int],
    data: bytes,
    limits: ImageLimits,
    fit_within: tuple[int, int] | None = None,
) -> np.ndarray:
    """Validate and convert a raw image tensor (H, W, 3), (H, W, 1) or (H, W)."""
    max_pixels = limits.pixels_for(fit_within)
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
    if height > max_pixels or width > max_pixels:
        raise InvalidInput(
            f"image.tensor.shape {list(shape)} is over max_image_pixels ({max_pixels})"
        )
    _check_pixels(height, width, max_pixels)
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
