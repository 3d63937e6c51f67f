"""The server-wide memory budget: declared request footprints held while requests run.

Each admitted request reserves its declared peak bytes (a method's
:class:`~xaiserve.contracts.footprint.Footprint`); a request that does not fit in what is left
of ``memory_budget_bytes`` is refused at once with RESOURCE_EXHAUSTED — it never waits, so a
burst of heavy requests turns into fast refusals instead of an out-of-memory kill.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from xaiserve.errors import Overloaded


class MemoryBudget:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    @contextlib.contextmanager
    def reserve(self, nbytes: int, knob: str) -> Iterator[None]:
        """Hold ``nbytes`` for the ``with`` block, or raise :class:`Overloaded`."""
        with self._lock:
            if self._used + nbytes > self.capacity and self._used > 0:
                raise Overloaded(
                    f"server memory budget busy: this request declares {_mib(nbytes)} and "
                    f"{_mib(self.capacity - self._used)} of memory_budget_bytes is free; retry "
                    f"later with backoff or lower {knob}",
                    reason="memory",
                )
            self._used += nbytes
        try:
            yield
        finally:
            with self._lock:
                self._used -= nbytes


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.0f} MiB"
