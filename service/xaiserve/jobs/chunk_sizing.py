"""How many images a data-set evaluation chunk carries: enough compute to dwarf coordination.

Each chunk costs the fleet a claim, heartbeats and a completion in the state store (a few
milliseconds on PostgreSQL). A fixed item count makes that cost a large share of a chunk on a
fast model and needlessly small on a slow one, so chunks are sized from the work's *cost
estimate* instead: the forward passes one image needs (the method's ``cost`` plus MoRF's
``1 + L × sequences``, the same figures the per-request limit checks) times the seconds a
forward pass takes on that model, aiming at :attr:`ChunkSizer.target_seconds` of compute per
chunk (``chunk_seconds``, 2 s by default: the store's share stays well under 1 %).

The seconds per forward pass are *measured*: every chunk a replica's worker runs reports its
compute time and passes (:meth:`ChunkSizer.observe`), kept per model version as an
exponentially weighted mean of the effective time per pass (network, heatmap and perturbation
work together). Until a model has run a chunk here, :data:`DEFAULT_PASS_SECONDS` stands in.
``chunk_items`` > 0 pins a fixed count instead (tests, or a deliberate choice).

Bigger chunks spread less: an evaluation has about ``compute / target_seconds`` chunks, so one
shorter than a few targets runs on few workers. That is the trade: it is short anyway.
"""

from __future__ import annotations

import math
import threading

DEFAULT_PASS_SECONDS = 0.002
"""Effective seconds per forward pass assumed before a model has run a chunk here."""
MAX_CHUNK_ITEMS = 256
"""Upper bound whatever the estimate: a chunk's results travel in one completion."""
SMOOTHING = 0.3
"""Weight of the newest chunk in the running estimate."""


class ChunkSizer:
    """Images per chunk from the cost estimate and the measured seconds per pass. Thread-safe."""

    def __init__(self, target_seconds: float = 2.0, fixed_items: int = 0) -> None:
        if target_seconds <= 0:
            raise ValueError("chunk_seconds must be > 0")
        self.target_seconds = target_seconds
        self.fixed_items = max(0, fixed_items)
        self._pass_seconds: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def pass_seconds(self, model: str, version: str) -> float:
        """The effective seconds per forward pass on this model (measured, or the default)."""
        with self._lock:
            return self._pass_seconds.get((model, version), DEFAULT_PASS_SECONDS)

    def observe(self, model: str, version: str, passes: int, seconds: float) -> None:
        """A chunk ran ``passes`` forward passes' worth of work in ``seconds`` of compute."""
        if passes <= 0 or seconds <= 0:
            return
        per_pass = seconds / passes
        key = (model, version)
        with self._lock:
            old = self._pass_seconds.get(key)
            self._pass_seconds[key] = (
                per_pass if old is None else (1 - SMOOTHING) * old + SMOOTHING * per_pass
            )

    def items(self, model: str, version: str, passes_per_image: int, total: int) -> int:
        """Images per chunk for ``total`` images of ``passes_per_image`` forward passes each."""
        if self.fixed_items:
            return max(1, min(self.fixed_items, max(total, 1)))
        per_image = max(1, passes_per_image) * self.pass_seconds(model, version)
        size = math.ceil(self.target_seconds / per_image)
        return max(1, min(size, MAX_CHUNK_ITEMS, max(total, 1)))
