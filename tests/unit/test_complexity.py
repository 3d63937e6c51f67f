"""PNG size and entropy of a heatmap (Samek et al. Fig. 5) against hand-computed values."""

from __future__ import annotations

import struct
import zlib
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from xaiserve.errors import InvalidInput
from xaiserve.evaluation.complexity import complexity, entropy, png_bytes, to_uint8


def test_to_uint8_min_max() -> None:
    """(h + 1)/4 · 255 for h = −1, 0, 1, 3: 0, 63.75, 127.5, 255 → 0, 64, 128, 255."""
    out = to_uint8(np.array([[-1.0, 0.0], [1.0, 3.0]]))
    np.testing.assert_array_equal(out, [[0, 64], [128, 255]])
    np.testing.assert_array_equal(to_uint8(np.full((2, 2), 5.0)), np.zeros((2, 2)))


@pytest.mark.parametrize(
    ("values", "bits"),
    [
        ([0.0, 0.0, 1.0, 1.0], 1.0),
        ([0.0, 1.0, 2.0, 3.0], 2.0),
        ([0.0, 0.0, 0.0, 1.0], -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25))),
        ([2.0, 2.0, 2.0, 2.0], 0.0),
    ],
)
def test_entropy(values: list[float], bits: float) -> None:
    assert entropy(np.array(values).reshape(2, 2)) == pytest.approx(bits)


def _unfilter(raw: bytes, width: int, height: int) -> np.ndarray:
    """PNG filters 0–4 (None, Sub, Up, Average, Paeth) for 8-bit grey, one byte per pixel."""
    out = np.zeros((height, width), dtype=np.int64)
    stride = width + 1
    for y in range(height):
        ftype, line = raw[y * stride], raw[y * stride + 1 : (y + 1) * stride]
        prior = out[y - 1] if y else np.zeros(width, dtype=np.int64)
        for x in range(width):
            a = out[y, x - 1] if x else 0
            b, c = prior[x], (prior[x - 1] if x else 0)
            if ftype == 0:
                pred = 0
            elif ftype == 1:
                pred = a
            elif ftype == 2:
                pred = b
            elif ftype == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            out[y, x] = (line[x] + pred) % 256
    return out


def test_png_bytes_is_the_size_of_a_png_of_the_8bit_heatmap() -> None:
    """Parse the file by hand: signature + chunks (12 bytes each + data) add up to the size,
    IHDR says 8-bit greyscale, and the inflated, unfiltered IDAT is the 8-bit heatmap."""
    heatmap = np.add.outer(np.arange(7.0), np.arange(5.0)) ** 2
    buffer = BytesIO()
    Image.fromarray(to_uint8(heatmap)).save(buffer, format="PNG", compress_level=9)
    data = buffer.getvalue()
    assert png_bytes(heatmap) == len(data)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, dict[str, bytes]()
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8].decode()
        chunks[kind] = chunks.get(kind, b"") + data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    assert pos == len(data)
    width, height, depth, colour = struct.unpack(">IIBB", chunks["IHDR"][:10])
    assert (width, height, depth, colour) == (5, 7, 8, 0)
    raw = zlib.decompress(chunks["IDAT"])
    np.testing.assert_array_equal(_unfilter(raw, width, height), to_uint8(heatmap))


def test_noise_is_more_complex_than_a_blob() -> None:
    rng = np.random.default_rng(0)
    noise = rng.uniform(size=(32, 32))
    blob = np.zeros((32, 32))
    blob[10:20, 12:22] = 1.0
    assert png_bytes(noise) > 4 * png_bytes(blob)
    assert entropy(noise) > 7.0
    assert entropy(blob) < 1.0
    result = complexity(blob)
    assert result.png_bytes == png_bytes(blob) and result.entropy == entropy(blob)
    assert png_bytes(blob, compress_level=0) > png_bytes(blob)
    with pytest.raises(InvalidInput, match="NaN"):
        complexity(np.full((2, 2), np.nan))
