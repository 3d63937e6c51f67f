"""Image decoding: formats, conversions, limits checked before allocation."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from xaiserve.errors import InvalidInput
from xaiserve.imaging.decode import ImageLimits, decode_encoded, decode_heatmap, decode_tensor

LIMITS = ImageLimits(max_bytes=1 << 20, max_pixels=512 * 512, formats=("PNG", "JPEG"))


def encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares ``width × height`` (no real pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_rgb_png_roundtrip() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    out = decode_encoded(encode(Image.fromarray(arr)), LIMITS)
    assert out.dtype == np.float32 and out.shape == (7, 5, 3)
    np.testing.assert_array_equal(out, arr.astype(np.float32))


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_modes_become_rgb(mode: str) -> None:
    img = Image.new("RGB", (6, 4), (200, 100, 50)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = decode_encoded(encode(img, fmt), LIMITS)
    assert out.shape == (4, 6, 3) and np.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 255


def test_sixteen_bit_png_scales_to_8_bit_range() -> None:
    arr = np.full((3, 3), 65535, dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    out = decode_encoded(encode(img), LIMITS)
    assert np.allclose(out, 255.0)


def test_huge_declared_png_refused_from_header() -> None:
    data = png_header_only(30000, 30000)
    assert len(data) < 200
    with pytest.raises(InvalidInput, match="max_image_pixels"):
        decode_encoded(data, LIMITS)


@pytest.mark.parametrize("data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_garbage_refused(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        decode_encoded(data, LIMITS)


def test_truncated_png_and_jpeg_refused() -> None:
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for fmt in ("PNG", "JPEG"):
        data = encode(img, fmt)
        with pytest.raises(InvalidInput):
            decode_encoded(data[: len(data) // 2], LIMITS)


def test_format_allow_list() -> None:
    gif = encode(Image.new("RGB", (4, 4)), "GIF")
    with pytest.raises(InvalidInput, match="PNG, JPEG"):
        decode_encoded(gif, LIMITS)
    out = decode_encoded(gif, ImageLimits(formats=("GIF",)))
    assert out.shape == (4, 4, 3)


def test_byte_limit() -> None:
    with pytest.raises(InvalidInput, match="max_image_bytes"):
        decode_encoded(b"x" * (LIMITS.max_bytes + 1), LIMITS)


def test_tensor_paths() -> None:
    arr = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    np.testing.assert_array_equal(decode_tensor("uint8", [2, 2, 3], arr.tobytes(), LIMITS), arr)
    gray = decode_tensor("float32", [2, 3], np.full((2, 3), 7.5, "<f4").tobytes(), LIMITS)
    assert gray.shape == (2, 3, 3) and np.all(gray == 7.5)


@pytest.mark.parametrize(
    ("dtype", "shape", "nbytes", "message"),
    [
        ("float64", [2, 2, 3], 96, "dtype"),
        ("uint8", [2, 2, 2, 3], 24, "rank"),
        ("uint8", [2, 2, 4], 16, "last axis"),
        ("uint8", [2, 2, 3], 11, "needs 12"),
        ("uint8", [0, 2, 3], 0, "below 1"),
        ("uint8", [-1, 2, 3], 0, "below 1"),
        ("uint8", [2**40, 2**40, 3], 0, "max_image_pixels"),
    ],
)
def test_tensor_errors(dtype: str, shape: list[int], nbytes: int, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_tensor(dtype, shape, b"\x00" * nbytes, LIMITS)


def test_tensor_nan_and_range() -> None:
    nan = np.full((2, 2, 3), np.nan, "<f4")
    with pytest.raises(InvalidInput, match="NaN"):
        decode_tensor("float32", [2, 2, 3], nan.tobytes(), LIMITS)
    big = np.full((2, 2, 3), 300.0, "<f4")
    with pytest.raises(InvalidInput, match=r"0\.\.255"):
        decode_tensor("float32", [2, 2, 3], big.tobytes(), LIMITS)


def test_heatmap_must_match_grid() -> None:
    ok = decode_heatmap("float32", [2, 3], np.ones((2, 3), "<f4").tobytes(), 2, 3, "heatmap")
    assert ok.shape == (2, 3)
    with pytest.raises(InvalidInput, match=r"heatmap.shape \[3, 2\]"):
        decode_heatmap("float32", [3, 2], np.ones((3, 2), "<f4").tobytes(), 2, 3, "heatmap")
