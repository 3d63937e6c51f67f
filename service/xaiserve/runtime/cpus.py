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


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process can keep busy: ``sched_getaffinity`` (or ``cpu_count``), capped by the
    cgroup quota rounded up; at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)


__all__ = ["available_cpus", "cgroup_cpu_limit"]
