"""A bounded, least-recently-used cache of segmentation results, keyed by image content.

Superpixels, exact-count labels and boundary priors are pure functions of (image pixels,
algorithm and parameters, scale): the same image explained again (another target, another
method, ``compare``, a data-set evaluation running several methods per image) needs the same
labels. :class:`SegmentationCache` keeps them under ``(image digest, device, product key)``,
where the digest is BLAKE2b-128 of the image's shape, dtype and bytes (:func:`image_digest`,
≈ 1 ms for a 224² float32 image).

Memory is bounded by ``max_bytes`` (the ``segmentation_cache_bytes`` setting): label maps are
stored in the smallest unsigned dtype that holds their labels (``uint8`` up to 256 regions, a
quarter of ``int32``) and handed out as fresh ``int32`` copies, so a caller can neither see a
different dtype from a hit than from a miss nor change what the next caller gets. Inserting past
the bound evicts least-recently-used entries; an entry larger than the bound is not stored.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import fields, is_dataclass, replace
from typing import Any

import numpy as np

ENTRY_OVERHEAD = 256
"""Bytes charged per entry on top of its arrays (key, bookkeeping)."""


def image_digest(image: np.ndarray) -> bytes:
    """BLAKE2b-128 of ``image``'s shape, dtype and pixel bytes (the cache's image key)."""
    arr = np.ascontiguousarray(image)
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((arr.shape, arr.dtype.str)).encode())
    h.update(arr.reshape(-1).view(np.uint8).data)
    return h.digest()


def pack(value: Any) -> Any:
    """``value`` as stored: integer label maps in the smallest unsigned dtype, read-only."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "iu" and value.size and value.min() >= 0:
            top = int(value.max())
            dtype = np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.int32
            stored = value.astype(dtype)
        else:
            stored = value.copy()
        stored.flags.writeable = False
        return stored
    if isinstance(value, tuple):
        return tuple(pack(v) for v in value)
    if is_dataclass(value) and not isinstance(value, type):
        return replace(value, **{f.name: _freeze(getattr(value, f.name)) for f in fields(value)})
    return value


def unpack(value: Any) -> Any:
    """What a caller gets: integer label maps as fresh ``int32`` arrays (as computed)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "iu":
            return value.astype(np.int32)
        return value.copy()
    if isinstance(value, tuple):
        return tuple(unpack(v) for v in value)
    return value


def _freeze(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        frozen = value.copy()
        frozen.flags.writeable = False
        return frozen
    return value


def stored_bytes(value: Any) -> int:
    """Bytes a stored value holds in arrays, plus :data:`ENTRY_OVERHEAD`."""
    return ENTRY_OVERHEAD + _array_bytes(value)


def _array_bytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, tuple):
        return sum(_array_bytes(v) for v in value)
    if is_dataclass(value) and not isinstance(value, type):
        return sum(_array_bytes(getattr(value, f.name)) for f in fields(value))
    return 0


class SegmentationCache:
    """Thread-safe LRU map from keys to packed values, bounded by ``max_bytes`` in total.

    ``on_evict(n)`` is called (outside no lock of the caller's) with the number of entries
    evicted by an insertion; ``max_bytes = 0`` disables storing altogether.
    """

    def __init__(self, max_bytes: int, on_evict: Callable[[int], None] | None = None) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._on_evict = on_evict

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> tuple[bool, Any]:
        """``(True, stored value)`` and mark it most recently used, or ``(False, None)``."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False, None
            self._entries.move_to_end(key)
            return True, entry[0]

    def put(self, key: Hashable, value: Any) -> Any:
        """Store ``pack(value)`` (evicting LRU entries to fit) and return the stored value."""
        stored = pack(value)
        size = stored_bytes(stored)
        evicted = 0
        with self._lock:
            if size > self.max_bytes:
                return stored
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            while self._entries and self._bytes + size > self.max_bytes:
                _, (_, freed) = self._entries.popitem(last=False)
                self._bytes -= freed
                evicted += 1
            self._entries[key] = (stored, size)
            self._bytes += size
        if evicted and self._on_evict is not None:
            self._on_evict(evicted)
        return stored

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
