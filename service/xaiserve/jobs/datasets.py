"""Data-set items for long-running operations: streamed from the client or read from a folder.

Server-side folder layout (``xaiserve.demo.shapes.save_folder`` writes it)::

    <datasets_dir>/<name>/labels.csv   header: file,label[,label_name][,box]
    <datasets_dir>/<name>/images/...   the files named in ``file`` (PNG/JPEG)
    <datasets_dir>/<name>/masks/...    optional ground-truth masks with the same file names

Items are produced lazily, one at a time, so memory does not grow with the data set. Paths in
``labels.csv`` must stay inside the folder.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xaiserve.contracts.names import validate_name
from xaiserve.errors import InvalidInput, NotFound
from xaiserve.imaging.decode import ImageLimits, decode_encoded


@dataclass
class DatasetItem:
    """One image to process: a loader (decoding is deferred), its label and optional mask."""

    name: str
    load: Callable[[], np.ndarray]  # image space at its own size, or reduced toward the model's
    label: int | None
    load_mask: Callable[[], np.ndarray] | None  # (h, w) bool at the image's own size


def dataset_folder(datasets_dir: str, name: str) -> Path:
    validate_name(name, "dataset")
    if not datasets_dir:
        raise NotFound("this server has no server-side data sets (datasets_dir is not set)")
    root = Path(datasets_dir).resolve()
    folder = (root / name).resolve()
    if root not in folder.parents or not (folder / "labels.csv").is_file():
        raise NotFound(f"data set {name!r} does not exist on this server")
    return folder


def folder_items(
    folder: Path,
    labels: tuple[str, ...],
    limits: ImageLimits,
    limit: int,
    grid: tuple[int, int] | None = None,
) -> tuple[list[DatasetItem], int]:
    """Items of a data-set folder (at most ``limit``) and the number of rows.

    With ``grid`` (the model's input ``(H, W)``) an image without a mask is decoded no larger
    than the model needs (JPEG ``draft``, Pillow ``reduce``: ``imaging.decode.decode_encoded``),
    as streamed items are; an image with a mask keeps its own size, the mask's grid. The pixel
    limit stays the one for any image (the operator's folder, not a client's upload)."""
    items: list[DatasetItem] = []
    with (folder / "labels.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if len(items) >= limit:
                break
            rel = row.get("file", "")
            path = (folder / rel).resolve()
            if folder not in path.parents:
                raise InvalidInput(f"data set {folder.name!r}: file {rel!r} leaves the folder")
            label = _label(row, labels, folder.name)
            mask_path = folder / "masks" / path.name
            items.append(
                DatasetItem(
                    name=rel,
                    load=_file_loader(path, limits, None if mask_path.is_file() else grid),
                    label=label,
                    load_mask=_mask_loader(mask_path, limits) if mask_path.is_file() else None,
                )
            )
    return items, len(items)


def _label(row: dict[str, str], labels: tuple[str, ...], dataset: str) -> int | None:
    raw = (row.get("label") or "").strip()
    if raw.isdigit() and int(raw) < len(labels):
        return int(raw)
    name = (row.get("label_name") or raw).strip()
    if name in labels:
        return labels.index(name)
    if not raw and not name:
        return None
    raise InvalidInput(f"data set {dataset!r}: label {raw or name!r} is not a label of the model")


def _file_loader(
    path: Path, limits: ImageLimits, grid: tuple[int, int] | None
) -> Callable[[], np.ndarray]:
    if grid is not None and limits.max_pixels == 0:  # keep the limit of an image of any use
        limits = dataclasses.replace(limits, max_pixels=limits.pixels_for(None))
    return lambda: decode_encoded(path.read_bytes(), limits, grid)


def _mask_loader(path: Path, limits: ImageLimits) -> Callable[[], np.ndarray]:
    return lambda: decode_encoded(path.read_bytes(), limits).mean(axis=2) > 127.5
