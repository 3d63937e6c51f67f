"""Image inputs and heatmap pictures.

Inputs: every SDK call that takes an image accepts

- a file path (``str`` or ``os.PathLike``): sent as the file's encoded bytes (PNG and JPEG as
  they are; other formats Pillow can read are converted to PNG first);
- a ``PIL.Image.Image``: sent as PNG bytes (RGB, or L for grayscale);
- encoded ``bytes``: sent as they are;
- a ``numpy`` array ``(H, W, 3)`` RGB or ``(H, W)`` grayscale, ``uint8`` or floating point on
  the 0..255 scale: sent as a raw tensor (floats as ``float32``). Channels-first ``(3, H, W)``
  and ``(1, H, W)`` arrays (PyTorch's layout) are transposed, and a leading batch axis of one,
  ``(1, 3, H, W)``, is dropped; where both readings fit (``(3, H, 3)``), channels-last wins;
- a ``torch.Tensor`` of any of those shapes (on any device; gradients are detached): converted
  as the numpy array would be. Values keep the 0..255 scale: multiply a ``ToTensor()`` image
  (0..1) by 255 first. torch is never imported here; a tensor can only come from a caller that
  already imported it;
- an ``xaiserve_client.v1.explain_pb2.Image`` message: sent as it is.

Outputs: :func:`colorize` turns a heatmap into colours (a diverging colormap centred at zero
for signed maps, a sequential one for unsigned maps) and :func:`overlay` lays it over the
input at the model's resolution; :func:`save_overlay` writes that as a PNG.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image as PILImage

from xaiserve_client.v1 import explain_pb2 as pb


class TensorLike(Protocol):
    """A ``torch.Tensor`` as far as typing goes (torch is never imported here)."""

    def detach(self) -> Any: ...


ImageInput = (
    str
    | os.PathLike[str]
    | bytes
    | bytearray
    | memoryview
    | PILImage.Image
    | np.ndarray
    | TensorLike
    | pb.Image
)
"""Anything the SDK accepts as an image (see the module docstring)."""

SIGNED_COLORMAP = "RdBu_r"
"""Diverging colormap for signed heatmaps: blue = evidence against, red = evidence for."""

UNSIGNED_COLORMAP = "inferno"
"""Sequential colormap for unsigned heatmaps: dark = irrelevant, bright = relevant."""

_DTYPES: dict[str, str] = {
    "uint8": "u1",
    "float32": "<f4",
    "float64": "<f8",
    "int32": "<i4",
    "int64": "<i8",
    "bool": "?",
}


# ---------------------------------------------------------------------------------------------
# Tensors


def array_to_tensor(array: NDArray[Any]) -> pb.Tensor:
    """A numpy array as a ``Tensor`` message (C order, little endian)."""
    arr = np.asarray(array)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    name = arr.dtype.name
    if name not in _DTYPES:
        raise ValueError(f"cannot send an array of dtype {name}; use uint8 or float32")
    data = np.ascontiguousarray(arr, dtype=np.dtype(_DTYPES[name])).tobytes()
    return pb.Tensor(dtype=name, shape=list(arr.shape), data=data)


def tensor_to_array(tensor: pb.Tensor) -> NDArray[Any]:
    """A ``Tensor`` message as a numpy array in native byte order (a writable copy)."""
    code = _DTYPES.get(tensor.dtype)
    if code is None:
        raise ValueError(f"unsupported tensor dtype {tensor.dtype!r}")
    dtype = np.dtype(code)
    shape = tuple(int(s) for s in tensor.shape)
    count = int(np.prod(shape)) if shape else 1
    if len(tensor.data) != count * dtype.itemsize:
        raise ValueError(
            f"tensor data holds {len(tensor.data)} bytes, shape {shape} {tensor.dtype} needs "
            f"{count * dtype.itemsize}"
        )
    flat = np.frombuffer(tensor.data, dtype=dtype, count=count)
    return flat.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Image inputs


def detect_format(data: bytes) -> str | None:
    """``"PNG"`` or ``"JPEG"`` from the file signature, else ``None``."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    return None


def _png_bytes(image: PILImage.Image) -> bytes:
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _encoded(data: bytes) -> bytes:
    """PNG/JPEG bytes as they are; other formats Pillow reads are converted to PNG."""
    if detect_format(data) is not None:
        return data
    try:
        with PILImage.open(io.BytesIO(data)) as img:
            img.load()
            return _png_bytes(img)
    except (OSError, ValueError):
        return data  # not an image Pillow knows: the server names the problem


def _torch_to_numpy(image: Any) -> np.ndarray | None:
    """A torch tensor as a numpy array, or None for anything else. Never imports torch: if the
    caller has a tensor, torch is already in ``sys.modules``."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(image, torch.Tensor):
        return None
    tensor = image.detach().cpu()
    if tensor.dtype == torch.bfloat16 or tensor.dtype == torch.float16:
        tensor = tensor.float()
    return np.asarray(tensor.numpy())


def _check_array(array: np.ndarray) -> np.ndarray:
    """An image array as ``(H, W)`` or ``(H, W, 3)``, uint8 or float32 (see the module doc)."""
    arr = np.asarray(array)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]  # a batch of one
    if arr.ndim == 3 and arr.shape[2] not in (1, 3) and arr.shape[0] in (1, 3):
        arr = np.moveaxis(arr, 0, -1)  # channels first (C, H, W)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(
            f"image arrays must be (H, W, 3) or (3, H, W) RGB, or (H, W) gray, got {arr.shape}"
        )
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32)
    raise ValueError(f"image arrays must be uint8 or float on 0..255, got dtype {arr.dtype}")


def to_image_proto(image: ImageInput) -> pb.Image:
    """The ``Image`` message for any accepted input (see the module docstring)."""
    if isinstance(image, pb.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        return pb.Image(encoded=_encoded(path.read_bytes()))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return pb.Image(encoded=_encoded(bytes(image)))
    if isinstance(image, PILImage.Image):
        return pb.Image(encoded=_png_bytes(image))
    if isinstance(image, np.ndarray):
        return pb.Image(tensor=array_to_tensor(_check_array(image)))
    array = _torch_to_numpy(image)
    if array is not None:
        return pb.Image(tensor=array_to_tensor(_check_array(array)))
    raise TypeError(
        f"unsupported image type {type(image).__name__}: pass a path, PIL image, bytes, "
        "numpy array or torch tensor"
    )


def load_rgb(image: ImageInput) -> NDArray[np.uint8]:
    """Any accepted input as a ``uint8 (H, W, 3)`` RGB array (for drawing overlays)."""
    tensor_array = _torch_to_numpy(image)
    if tensor_array is not None:
        image = tensor_array
    if isinstance(image, np.ndarray):
        arr = _check_array(image)
        if arr.dtype != np.uint8:
            arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else arr
    if isinstance(image, PILImage.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    message = to_image_proto(image)
    if message.WhichOneof("data") == "tensor":
        return load_rgb(tensor_to_array(message.tensor))
    with PILImage.open(io.BytesIO(message.encoded)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def fit_to_grid(
    rgb: NDArray[np.uint8], size: tuple[int, int], resize: str = "stretch"
) -> NDArray[np.uint8]:
    """Resize an RGB image to ``size = (H, W)`` the way the model does.

    ``resize="stretch"`` scales to the grid; ``"center_crop"`` first crops the central region
    with the grid's aspect ratio.
    """
    height, width = size
    img = PILImage.fromarray(rgb)
    if resize == "center_crop":
        src_w, src_h = img.size
        scale = min(src_w / width, src_h / height)
        crop_w, crop_h = round(width * scale), round(height * scale)
        left, top = (src_w - crop_w) // 2, (src_h - crop_h) // 2
        img = img.crop((left, top, left + crop_w, top + crop_h))
    if img.size != (width, height):
        img = img.resize((width, height), PILImage.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def load_mask(path: str | os.PathLike[str]) -> NDArray[np.bool_]:
    """A ground-truth mask from a ``.npy`` file or an image (non-zero pixels are the object)."""
    p = Path(path)
    if p.suffix.lower() == ".npy":
        arr = np.load(p)
    else:
        with PILImage.open(p) as img:
            arr = np.asarray(img.convert("L"))
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return np.asarray(arr) != 0


# ---------------------------------------------------------------------------------------------
# Heatmap pictures

PLOT_EXTRA_HINT = "pip install 'xaiserve-client[plot]'"


class PlotExtraMissing(ImportError):
    """Drawing was asked for, but matplotlib (the ``plot`` extra) is not installed."""


def plotting_available() -> bool:
    """Whether matplotlib, which every picture and figure needs, can be imported."""
    import importlib.util

    if "matplotlib" in sys.modules:  # imported, or blocked with None
        return sys.modules["matplotlib"] is not None
    return importlib.util.find_spec("matplotlib") is not None


def require_plot(what: str) -> None:
    """Raise :class:`PlotExtraMissing`, naming the extra to install, if matplotlib is absent."""
    if not plotting_available():
        raise PlotExtraMissing(
            f"{what} needs matplotlib, which is not installed: {PLOT_EXTRA_HINT}",
            name="matplotlib",
        )


def colormap_name(signed: bool) -> str:
    """The colormap used for a heatmap: diverging if ``signed``, else sequential."""
    return SIGNED_COLORMAP if signed else UNSIGNED_COLORMAP


def normalize(heatmap: NDArray[Any], signed: bool, percentile: float = 99.5) -> NDArray[Any]:
    """Heatmap values on ``[-1, 1]`` (signed, zero stays zero) or ``[0, 1]`` (unsigned).

    The scale is the ``percentile`` of the magnitudes, so a few outliers do not wash the rest
    out; values beyond it are clipped. Non-finite values count as zero.
    """
    h = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if signed:
        scale = float(np.percentile(np.abs(h), percentile)) if h.size else 0.0
        return np.clip(h / scale, -1.0, 1.0) if scale > 0 else np.zeros_like(h)
    low = float(h.min()) if h.size else 0.0
    shifted = h - low if low < 0 else h  # unsigned maps should not go negative; shift if so
    scale = float(np.percentile(shifted, percentile)) if h.size else 0.0
    return np.clip(shifted / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(h)


def colorize(heatmap: NDArray[Any], signed: bool) -> NDArray[np.uint8]:
    """The heatmap as a ``uint8 (H, W, 3)`` picture (colormap from :func:`colormap_name`)."""
    require_plot("drawing a heatmap")
    from matplotlib import colormaps  # imported lazily: only drawing needs it

    if np.ndim(heatmap) != 2:
        raise ValueError(f"heatmaps are (H, W), got shape {np.shape(heatmap)}")
    norm = normalize(heatmap, signed)
    position = (norm + 1.0) / 2.0 if signed else norm
    rgba = colormaps[colormap_name(signed)](position)
    return np.asarray(np.rint(rgba[..., :3] * 255), dtype=np.uint8)


def overlay(
    heatmap: NDArray[Any],
    image: ImageInput | None = None,
    *,
    signed: bool,
    alpha: float = 0.7,
    resize: str = "stretch",
    scale: int = 1,
    grayscale: bool = True,
) -> PILImage.Image:
    """The heatmap drawn over ``image`` at the heatmap's (the model's) resolution.

    Each pixel blends towards the heatmap colour in proportion to its relevance (``alpha`` at
    the strongest), so irrelevant regions show the input — in gray by default, so the input's
    own colours cannot be mistaken for relevance. Without ``image`` the result is the coloured
    heatmap alone. ``scale`` enlarges the picture by pixel repetition.
    """
    colours = colorize(heatmap, signed).astype(np.float64)
    if image is None:
        picture = colours
    else:
        base = fit_to_grid(load_rgb(image), colours.shape[:2], resize).astype(np.float64)
        if grayscale:
            base = np.repeat(base @ np.array([[0.299], [0.587], [0.114]]), 3, axis=2)
        weight = alpha * np.abs(normalize(heatmap, signed))[..., None]
        picture = base * (1.0 - weight) + colours * weight
    out = np.asarray(np.clip(np.rint(picture), 0, 255), dtype=np.uint8)
    if scale > 1:
        out = np.repeat(np.repeat(out, scale, axis=0), scale, axis=1)
    return PILImage.fromarray(out, mode="RGB")


def save_overlay(
    path: str | os.PathLike[str],
    heatmap: NDArray[Any],
    image: ImageInput | None = None,
    *,
    signed: bool,
    alpha: float = 0.7,
    resize: str = "stretch",
    scale: int = 1,
    grayscale: bool = True,
) -> Path:
    """Write :func:`overlay` as a PNG file (parent folders are created); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    picture = overlay(
        heatmap, image, signed=signed, alpha=alpha, resize=resize, scale=scale,
        grayscale=grayscale,
    )  # fmt: skip
    picture.save(target, format="PNG")
    return target


__all__ = [
    "PLOT_EXTRA_HINT",
    "SIGNED_COLORMAP",
    "UNSIGNED_COLORMAP",
    "ImageInput",
    "PlotExtraMissing",
    "TensorLike",
    "array_to_tensor",
    "colorize",
    "colormap_name",
    "detect_format",
    "fit_to_grid",
    "load_mask",
    "load_rgb",
    "normalize",
    "overlay",
    "plotting_available",
    "require_plot",
    "save_overlay",
    "tensor_to_array",
    "to_image_proto",
]
