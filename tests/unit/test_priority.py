"""Explanation work runs at a lower CPU priority (runtime.priority): threads created while
building the main onnxruntime session inherit it; the caller's thread keeps its own."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from xaiserve.runtime.priority import BACKGROUND_NICE, in_background_thread

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice is Linux's")


def _nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def test_threads_made_in_the_background_inherit_its_priority() -> None:
    before = _nice(threading.get_native_id())
    seen: dict[str, int] = {}
    release = threading.Event()

    def child() -> None:
        seen["child"] = _nice(threading.get_native_id())
        release.wait(5)

    def make() -> threading.Thread:  # as onnxruntime starts its pool in the session constructor
        seen["maker"] = _nice(threading.get_native_id())
        t = threading.Thread(target=child, daemon=True)
        t.start()
        return t

    thread = in_background_thread(make)
    release.set()
    thread.join(5)
    assert seen == {"maker": max(before, BACKGROUND_NICE), "child": max(before, BACKGROUND_NICE)}
    assert _nice(threading.get_native_id()) == before


def test_errors_reach_the_caller() -> None:
    def fail() -> None:
        raise ValueError("bad graph")

    with pytest.raises(ValueError, match="bad graph"):
        in_background_thread(fail)
