"""How many CPUs this process may use: its affinity, capped by a cgroup CPU quota.

A container's CPU limit (Kubernetes ``resources.limits.cpu``) is a CFS quota, not an affinity
mask: ``os.cpu_count()`` inside a 4-CPU pod on a 64-core node says 64. Sizing thread pools from
that oversubscribes the pod's share and every thread then waits on the quota.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The cgroup's CPU quota in CPUs (quota ÷ period), or None when unlimited or unknown:
    cgroup v2 ``cpu.max`` ("<quota> <period>" or "max <period>"), else v1's
    ``cpu/cpu.cfs_quota_us`` ÷ ``cpu/cpu.cfs_period_us`` (quota -1 = unlimited)."""
    v2, v1 = root / "cpu.max", root / "cpu" / "cpu.cfs_quota_us"
    try:
        if v2.exists():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if v1.exists():
            quota_us = int(v1.read_text())
            period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
            return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None
    return None


def _affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available_cpus(root: Path | None = None) -> int:
    """CPUs this process can keep busy: ``sched_getaffinity`` (or ``cpu_count``), capped by the
    cgroup quota rounded up; at least 1. ``root`` defaults to :data:`CGROUP_ROOT`."""
    cpus = _affinity_cpus()
    limit = cgroup_cpu_limit(CGROUP_ROOT if root is None else root)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)


def default_intra_op_threads(root: Path | None = None) -> int:
    """The intra-op thread count for an onnxruntime session whose setting is 0.

    0 (onnxruntime's own choice: one thread per physical core, pinned) unless a cgroup CPU quota
    allows fewer CPUs than the process's affinity; then the quota, rounded up. onnxruntime sizes
    its default pool from the host's cores and cannot see a quota (microsoft/onnxruntime#29510),
    so in a 4-CPU pod on a 64-core node every session would start 32 threads that then wait on
    the quota."""
    limit = cgroup_cpu_limit(CGROUP_ROOT if root is None else root)
    if limit is None:
        return 0
    quota = max(1, math.ceil(limit))
    return quota if quota < _affinity_cpus() else 0


def half_the_cpus(root: Path | None = None) -> int:
    """Half of :func:`available_cpus`, at least one: the default size of the segmentation pool,
    so that segmentation never takes every core of the pod from inference."""
    return max(1, available_cpus(root) // 2)


__all__ = ["available_cpus", "cgroup_cpu_limit", "default_intra_op_threads", "half_the_cpus"]
