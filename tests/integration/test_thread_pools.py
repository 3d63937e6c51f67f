"""numpy's BLAS pool in the server: capped by ``numpy_blas_threads``; torch's intra-op pool: sized
to a cgroup CPU quota below the cores (runtime/thread_pools.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_limits

from xaiserve.config import Settings
from xaiserve.runtime.thread_pools import blas_threads, cap_torch_threads, configure_thread_pools


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


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a quota below one core needs 2+")
def test_torch_threads_follow_a_quota_below_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU
        assert cap_torch_threads(tmp_path) == 1 == torch.get_num_threads()
        torch.set_num_threads(2)
        (tmp_path / "cpu.max").write_text("max 100000\n")  # no quota: torch's own choice
        assert cap_torch_threads(tmp_path) == 2
        (tmp_path / "cpu.max").write_text("50000 100000\n")
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the operator's setting wins
        assert cap_torch_threads(tmp_path) == 2
    finally:
        torch.set_num_threads(before)
