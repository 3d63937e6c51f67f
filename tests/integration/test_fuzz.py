"""Fuzzing the server (reliability checks I1, I3, I4, I6): every answer is OK or a contract
status — never INTERNAL or UNKNOWN — and the server stays up."""

from __future__ import annotations

import io
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.support import region_logit_model, write_model_folder
from xaiserve_client.v1 import explain_pb2 as pb
from xaiserve_client.v1 import explain_pb2_grpc as pb_grpc

CONTRACT = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
SIZE = 16
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.ExplainServiceStub]:
    from xaiserve.api.server import create_server
    from xaiserve.config import Settings

    root = tmp_path_factory.mktemp("fuzz") / "repo"
    a = np.zeros((SIZE, SIZE), bool)
    a[:8] = True
    write_model_folder(
        region_logit_model(SIZE, SIZE, [a, ~a], gain=0.05),
        root,
        height=SIZE,
        width=SIZE,
        name="m",
        labels=["top", "bottom"],
    )
    server, port = create_server(
        Settings(
            host="127.0.0.1",
            port=0,
            metrics_port=0,
            models_dir=str(root),
            log_format="text",
            max_forward_passes=3000,
            max_image_pixels=512 * 512,
            max_message_bytes=4 << 20,
        )
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.ExplainServiceStub(channel)
    channel.close()
    server.stop(grace=1.0)


def check(call, request) -> None:  # type: ignore[no-untyped-def]
    try:
        call(request, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() in CONTRACT, (exc.code(), exc.details())
        assert "Traceback" not in (exc.details() or "")


def encoded(arr: np.ndarray, mode: str, fmt: str) -> bytes:
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


image_arrays = st.builds(
    lambda h, w, seed: np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8),
    st.integers(1, 40),
    st.integers(1, 40),
    st.integers(0, 2**16),
)
MODES = [
    ("RGB", "PNG"),
    ("L", "PNG"),
    ("P", "PNG"),
    ("RGBA", "PNG"),
    ("LA", "PNG"),
    ("I;16", "PNG"),
    ("1", "PNG"),
    ("RGB", "JPEG"),
    ("CMYK", "JPEG"),
    ("L", "JPEG"),
    ("RGB", "GIF"),
    ("RGB", "BMP"),
    ("RGB", "TIFF"),
]


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["valid", "truncated", "random", "flipped"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    arr = draw(image_arrays)
    mode, fmt = draw(st.sampled_from(MODES))
    data = encoded(arr, mode, fmt)
    if kind == "truncated":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if kind == "flipped":
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
    return data


@st.composite
def tensors(draw: st.DrawFn) -> pb.Tensor:
    dtype = draw(st.sampled_from(["uint8", "float32", "float64", "int8", "", "uint8\x00"]))
    shape = draw(
        st.lists(st.integers(-5, 2**40), max_size=5)
        | st.lists(st.integers(1, 24), min_size=2, max_size=3)
    )
    n = 1
    for d in shape:
        n *= max(d, 0)
    if dtype == "float32" and 0 < n <= 4096 and draw(st.booleans()):
        values = draw(st.sampled_from([np.nan, np.inf, -1.0, 300.0, 12.5]))
        data = np.full(n, values, "<f4").tobytes()
    elif dtype == "uint8" and 0 < n <= 4096 and draw(st.booleans()):
        data = bytes(n)
    else:
        data = draw(st.binary(max_size=512))
    return pb.Tensor(dtype=dtype, shape=shape, data=data)


@given(data=image_bytes())
@FUZZ
def test_predict_with_any_image_bytes(stub: pb_grpc.ExplainServiceStub, data: bytes) -> None:
    check(stub.Predict, pb.PredictRequest(model="m", image=pb.Image(encoded=data)))


@given(tensor=tensors())
@FUZZ
def test_predict_with_any_tensor(stub: pb_grpc.ExplainServiceStub, tensor: pb.Tensor) -> None:
    check(stub.Predict, pb.PredictRequest(model="m", image=pb.Image(tensor=tensor)))


def _value_for(field, draw: st.DrawFn):  # type: ignore[no-untyped-def]
    t = field.type
    if t == field.TYPE_STRING:
        return draw(
            st.sampled_from(
                [
                    "",
                    "slic",
                    "quickshift",
                    "felzenszwalb",
                    "black",
                    "mean",
                    "uniform",
                    "difference",
                    "weight_of_evidence",
                    "epsilon_plus_flat",
                    "lrp_z",
                    "saliency",
                    "l2",
                    "bogus",
                    "../x",
                ]
            )
            | st.text(max_size=8)
        )
    if t in (field.TYPE_UINT32, field.TYPE_UINT64):
        return draw(st.integers(0, 2**31 - 1) | st.integers(0, 40))
    if t in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
        return draw(st.floats(allow_nan=True, allow_infinity=True) | st.floats(-2, 50))
    if t == field.TYPE_BOOL:
        return draw(st.booleans())
    return None


@st.composite
def method_params(draw: st.DrawFn) -> pb.MethodParams:
    oneof = pb.MethodParams.DESCRIPTOR.oneofs_by_name["method"]
    field = draw(st.sampled_from(list(oneof.fields)))
    params = pb.MethodParams()
    message = getattr(params, field.name)
    message.SetInParent()
    for sub in message.DESCRIPTOR.fields:
        if not draw(st.booleans()):
            continue
        if sub.message_type is not None and not sub.is_repeated:
            inner = getattr(message, sub.name)
            for f in inner.DESCRIPTOR.fields:
                value = _value_for(f, draw)
                if value is not None and draw(st.booleans()):
                    setattr(inner, f.name, value)
            inner.SetInParent()
        elif sub.is_repeated and sub.type == sub.TYPE_STRING:
            getattr(message, sub.name).extend(
                draw(st.lists(st.sampled_from(["black", "white", "mean", "x"]), max_size=4))
            )
        elif not sub.is_repeated:
            value = _value_for(sub, draw)
            if value is not None:
                setattr(message, sub.name, value)
    return params


@given(
    params=method_params(),
    target=st.integers(0, 3),
    contrast=st.booleans(),
    seed=st.integers(0, 1000),
)
@FUZZ
def test_explain_with_any_parameters(
    stub: pb_grpc.ExplainServiceStub,
    params: pb.MethodParams,
    target: int,
    contrast: bool,
    seed: int,
) -> None:
    arr = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    request = pb.ExplainRequest(
        model="m",
        image=pb.Image(tensor=pb.Tensor(dtype="uint8", shape=[SIZE, SIZE, 3], data=arr.tobytes())),
        target=pb.ClassRef(index=target),
        method=params,
    )
    if contrast:
        request.contrast.CopyFrom(pb.ClassRef(index=1 - target % 2))
    check(stub.Explain, request)


def test_server_alive_after_fuzzing(stub: pb_grpc.ExplainServiceStub) -> None:
    arr = np.zeros((SIZE, SIZE, 3), np.uint8)
    r = stub.Predict(
        pb.PredictRequest(model="m", image=pb.Image(encoded=encoded(arr, "RGB", "PNG"))), timeout=10
    )
    assert r.classes


def test_huge_declared_png_refused_fast(stub: pb_grpc.ExplainServiceStub) -> None:
    from tests.unit.test_decode import png_header_only

    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(
            pb.PredictRequest(model="m", image=pb.Image(encoded=png_header_only(30000, 30000))),
            timeout=10,
        )
    assert (
        info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "max_image_pixels" in info.value.details()
    )


# --- chunk-level PNG and segment-level JPEG mutations, EXIF included (finding 8 of #18) ----------


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """``(type, payload)`` of every chunk of a PNG file."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def png_chunk(kind: bytes, payload: bytes, good_crc: bool = True) -> bytes:
    import zlib

    crc = zlib.crc32(kind + payload) if good_crc else 0xDEADBEEF
    return len(payload).to_bytes(4, "big") + kind + payload + crc.to_bytes(4, "big")


def exif_block(draw: st.DrawFn) -> bytes:
    """A TIFF-structured EXIF block (orientation and more), then possibly cut or corrupted."""
    order = draw(st.sampled_from([b"II", b"MM"]))
    endian = "little" if order == b"II" else "big"
    entries = draw(
        st.lists(
            st.tuples(
                st.sampled_from([0x0112, 0x8769, 0x8825, 0x010F, 0x0132, 0xA005, 0xFFFF]),
                st.integers(0, 13),  # TIFF field type, including invalid ones
                st.integers(0, 2**32 - 1),  # count
                st.integers(0, 2**32 - 1),  # value / offset
            ),
            max_size=6,
        )
    )
    body = order + (42).to_bytes(2, endian) + (8).to_bytes(4, endian)
    body += len(entries).to_bytes(2, endian)
    for tag, kind, count, value in entries:
        body += tag.to_bytes(2, endian) + kind.to_bytes(2, endian)
        body += count.to_bytes(4, endian) + value.to_bytes(4, endian)
    body += draw(st.binary(max_size=24))
    cut = draw(st.integers(0, len(body)))
    return body[:cut] if draw(st.booleans()) else body


@st.composite
def mutated_pngs(draw: st.DrawFn) -> bytes:
    arr = draw(image_arrays)
    mode = draw(st.sampled_from(["RGB", "L", "P", "RGBA", "I;16"]))
    chunks = png_chunks(encoded(arr, mode, "PNG"))
    header, rest = chunks[0], chunks[1:]
    extra = [
        (b"eXIf", exif_block(draw)),
        (b"zTXt", draw(st.binary(max_size=64))),
        (b"iCCP", b"x\x00\x00" + draw(st.binary(max_size=64))),
        (b"tEXt", draw(st.binary(max_size=64))),
        (b"pHYs", draw(st.binary(max_size=12))),
        (b"acTL", draw(st.binary(max_size=12))),
        (b"IDAT", b""),
        (draw(st.binary(min_size=4, max_size=4)), draw(st.binary(max_size=32))),
    ]
    for _ in range(draw(st.integers(1, 4))):
        rest.insert(draw(st.integers(0, len(rest))), draw(st.sampled_from(extra)))
    if draw(st.booleans()) and len(rest) > 1:  # drop or duplicate a chunk
        i = draw(st.integers(0, len(rest) - 1))
        rest = rest[:i] + rest[i + 1 :] if draw(st.booleans()) else rest[: i + 1] + rest[i:]
    bad_crc = draw(st.sets(st.integers(0, len(rest)), max_size=2))
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(*header)
    out += b"".join(png_chunk(k, p, i not in bad_crc) for i, (k, p) in enumerate(rest))
    if draw(st.booleans()):
        out = out[: draw(st.integers(8, len(out)))]
    return out


@st.composite
def mutated_jpegs(draw: st.DrawFn) -> bytes:
    arr = draw(image_arrays)
    img = Image.fromarray(arr).convert(draw(st.sampled_from(["RGB", "L", "CMYK"])))
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = draw(st.integers(0, 12))
    img.save(buf, "JPEG", exif=exif.tobytes(), progressive=draw(st.booleans()))
    data = buf.getvalue()
    segment = b"Exif\x00\x00" + exif_block(draw)
    app1 = b"\xff\xe1" + (len(segment) + 2).to_bytes(2, "big") + segment
    if draw(st.booleans()):
        data = data[:2] + app1 + data[2:]  # a second, hostile EXIF segment first
    for _ in range(draw(st.integers(0, 3))):  # byte-level damage anywhere
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1 :]
    if draw(st.booleans()):
        data = data[: draw(st.integers(2, len(data)))]
    return data


@given(data=mutated_pngs() | mutated_jpegs())
@FUZZ
def test_predict_with_mutated_chunks_and_exif(
    stub: pb_grpc.ExplainServiceStub, data: bytes
) -> None:
    check(stub.Predict, pb.PredictRequest(model="m", image=pb.Image(encoded=data)))


def test_truncated_exif_png_and_fuzzed_jpeg_from_the_report(
    stub: pb_grpc.ExplainServiceStub,
) -> None:
    """An 87-byte PNG with a truncated eXIf chunk made ``exif_transpose`` raise struct.error."""
    png = b"\x89PNG\r\n\x1a\n" + png_chunk(
        b"IHDR", (1).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
    )
    png += png_chunk(b"eXIf", b"MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03")  # entry cut short
    raw = png_chunks(encoded(np.zeros((1, 1, 3), np.uint8), "RGB", "PNG"))
    png += b"".join(png_chunk(k, p) for k, p in raw[1:])
    response = stub.Predict(pb.PredictRequest(model="m", image=pb.Image(encoded=png)), timeout=10)
    assert response.classes  # the pixels are fine; the broken EXIF block is ignored


def test_png_of_many_empty_chunks_refused(stub: pb_grpc.ExplainServiceStub) -> None:
    raw = png_chunks(encoded(np.zeros((4, 4, 3), np.uint8), "RGB", "PNG"))
    filler = png_chunk(b"zzZz", b"") * 300_000  # 3.6 MB of empty ancillary chunks
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(*raw[0]) + filler
    data += b"".join(png_chunk(k, p) for k, p in raw[1:])
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(pb.PredictRequest(model="m", image=pb.Image(encoded=data)), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chunks" in info.value.details()  # refused by the chunk walk, before Pillow parses
