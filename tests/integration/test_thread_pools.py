"""numpy's BLAS pool in the server: capped by ``numpy_blas_threads`` (runtime/thread_pools.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from xaiserve.config import Settings
from xaiserve.runtime.thread_pools import blas_threads, configure_thread_pools


def test_a_started_server_caps_numpy_blas_at_one_thread(start_server, tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    with threadpool_limits(limits=2, user_api="blas"):
        assert blas_threads() and all(n == 2 for n in blas_threads())  # a pool of several
        start_server()
        assert blas_threads() and all(n == 1 for n in blas_threads())


def test_zero_leaves_the_pool_as_it_is() -> None:
    with threadpool_limits(limits=2, user_api="blas"):
        configure_thread_pools(0)
        assert all(n == 2 for n in blas_threads())
        configure_thread_pools(1)
        assert all(n == 1 for n in blas_threads())


def test_a_negative_count_is_refused() -> None:
    with pytest.raises(ValueError, match="numpy_blas_threads"):
        Settings(numpy_blas_threads=-1).validate()
    with pytest.raises(ValueError, match="numpy_blas_threads"):
        configure_thread_pools(-1)
