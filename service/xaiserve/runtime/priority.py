"""CPU priority of expensive work: explanation batches run at a lower scheduling priority.

On a busy machine the cheap calls (Predict) share the cores with explanation work: onnxruntime's
intra-op threads running 64-image perturbation batches, segmentation. Those threads run at
``nice`` :data:`BACKGROUND_NICE`, so the kernel gives the cores to a Predict (and to the gRPC
threads serving it) whenever it needs them, and to explanation work the rest of the time.
Raising one's own nice value needs no privilege; lowering it again would, so a thread that is
lowered stays lowered (only threads made for expensive work are). Threads inherit the nice value
of the thread that creates them, which is how an onnxruntime session's thread pool is lowered:
the session is created in a lowered thread (:func:`in_background_thread`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

BACKGROUND_NICE = 10
"""A nice-10 thread gets ~1/9 of a core that a nice-0 thread also wants (CFS weights 110 : 1024)."""

T = TypeVar("T")


def lower_current_thread(nice: int = BACKGROUND_NICE) -> bool:
    """Raise this OS thread's nice value to at least ``nice`` (Linux: per thread). Returns
    whether the thread now runs at that priority; elsewhere, or when refused, nothing changes."""
    if not hasattr(os, "setpriority") or nice <= 0:
        return False
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        return True
    except OSError as exc:  # e.g. a seccomp profile refusing setpriority
        log.debug("thread priority unchanged: %s", exc)
        return False


def in_background_thread(make: Callable[[], T], nice: int = BACKGROUND_NICE) -> T:
    """``make()`` run in a fresh lowered thread, so that threads it creates (an onnxruntime
    session's intra-op pool) inherit the lower priority; its result or exception is returned."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        lower_current_thread(nice)
        try:
            result.append(make())
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=run, name="background-init", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
