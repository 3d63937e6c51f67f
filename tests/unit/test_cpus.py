"""CPUs a server may use: affinity capped by the cgroup quota (#18: runners sized to the pod)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from xaiserve.config import Settings
from xaiserve.runtime.cpus import available_cpus, cgroup_cpu_limit


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_quota_over_period(tmp_path: Path) -> None:
    write(tmp_path, "cpu.max", "150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    assert available_cpus(tmp_path) == min(len(os.sched_getaffinity(0)), math.ceil(1.5))


def test_cgroup_v2_max_means_no_limit(tmp_path: Path) -> None:
    write(tmp_path, "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))


def test_cgroup_v1_quota_and_unlimited(tmp_path: Path) -> None:
    write(tmp_path, "cpu/cpu.cfs_quota_us", "50000\n")
    write(tmp_path, "cpu/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(tmp_path) == 0.5
    assert available_cpus(tmp_path) == 1  # never below one
    write(tmp_path, "cpu/cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_unreadable_or_absent_cgroup_files_mean_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None
    write(tmp_path, "cpu.max", "garbage\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_max_running_requests_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="max_running_requests"):
        Settings(max_running_requests=-1).validate()
