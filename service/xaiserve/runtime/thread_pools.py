"""The native thread pools of a serving process: numpy's BLAS and torch's OpenMP.

The server's parallelism comes from its requests (runners, batch lanes, the segmentation pool)
and from the inference engines' own intra-op threads. numpy's BLAS (OpenBLAS) adds a pool of
its own, one thread per core, for every matrix product above a small size: in a server those
threads only contend with the requests' threads, and after each product they spin-wait. A
randomisation test's comparison of two 224² maps (a few matrix-vector products) costs 22 ms of
CPU with OpenBLAS's default pool and 11 ms with one thread, at the same wall time
(``bench/sanity.py``). :func:`configure_thread_pools` caps that pool (via ``threadpoolctl``, the
scikit-learn project's library for it, which works after numpy is loaded).

torch's OpenMP threads likewise spin after each parallel region unless ``OMP_WAIT_POLICY`` is
``PASSIVE`` when the OpenMP runtime loads, i.e. before torch is imported: ``xaiserve serve``
and the container image set it. torch also sizes its intra-op pool from the host's cores, blind
to a pod's CPU limit (a cgroup quota): :func:`cap_torch_threads` sizes it to the quota, as
``runtime.cpus.default_intra_op_threads`` does for onnxruntime.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from xaiserve.runtime.cpus import default_intra_op_threads

log = logging.getLogger(__name__)

__all__ = ["blas_threads", "cap_torch_threads", "configure_thread_pools"]

_limiter: Any = None  # the threadpoolctl limit in force (kept so that it is not undone)


def configure_thread_pools(numpy_blas_threads: int) -> None:
    """Cap numpy's BLAS pool at ``numpy_blas_threads`` (0 = leave the library's default)."""
    global _limiter
    if numpy_blas_threads < 0:
        raise ValueError("numpy_blas_threads must be at least 0 (0 = the library's default)")
    if numpy_blas_threads == 0:
        return
    import numpy  # noqa: F401 - loads the BLAS library that threadpoolctl finds
    from threadpoolctl import threadpool_limits

    _limiter = threadpool_limits(limits=numpy_blas_threads, user_api="blas")
    log.debug("numpy BLAS threads capped at %d", numpy_blas_threads)


def cap_torch_threads(root: Path | None = None) -> int:
    """Lower torch's intra-op threads to the cgroup CPU quota where the quota is below the
    cores (``runtime.cpus.default_intra_op_threads``); an operator's ``OMP_NUM_THREADS`` wins.
    Returns torch's thread count after."""
    import torch

    quota = default_intra_op_threads(root)
    if quota and "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > quota:
        torch.set_num_threads(quota)
        log.info("torch intra-op threads capped at %d by the cgroup CPU quota", quota)
    return int(torch.get_num_threads())


def blas_threads() -> list[int]:
    """The thread count of every BLAS library loaded in this process (for checks and logs)."""
    from threadpoolctl import threadpool_info

    return [int(info["num_threads"]) for info in threadpool_info() if info["user_api"] == "blas"]
