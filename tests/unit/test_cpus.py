"""CPUs a server may use: affinity capped by the cgroup quota (#18: runners sized to the pod;
onnxruntime's intra-op pool and the segmentation pool sized to it as well)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from xaiserve.config import Settings
from xaiserve.runtime import cpus
from xaiserve.runtime.cpus import (
    available_cpus,
    cgroup_cpu_limit,
    default_intra_op_threads,
    half_the_cpus,
)
from xaiserve.runtime.onnx_session import OnnxSession

DEMO = Path(__file__).resolve().parents[2] / "models" / "shapes" / "1" / "model.onnx"
AFFINITY = len(os.sched_getaffinity(0))


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


@pytest.mark.skipif(AFFINITY < 2, reason="a quota below the cores needs 2+ cores")
def test_onnxruntime_threads_follow_a_quota_below_the_cores(tmp_path: Path) -> None:
    write(tmp_path, "cpu.max", "50000 100000\n")  # half a CPU: fewer than any affinity
    assert default_intra_op_threads(tmp_path) == 1
    write(tmp_path, "cpu.max", f"{AFFINITY * 100000} 100000\n")  # as many CPUs as cores
    assert default_intra_op_threads(tmp_path) == 0  # onnxruntime's own (pinned) choice
    write(tmp_path, "cpu.max", "max 100000\n")
    assert default_intra_op_threads(tmp_path) == 0


def test_half_the_cpus_is_half_the_quota(tmp_path: Path) -> None:
    write(tmp_path, "cpu.max", "50000 100000\n")
    assert half_the_cpus(tmp_path) == 1  # never below one
    write(tmp_path, "cpu.max", "max 100000\n")
    assert half_the_cpus(tmp_path) == max(1, AFFINITY // 2)


@pytest.mark.skipif(AFFINITY < 2, reason="a quota below the cores needs 2+ cores")
def test_a_session_with_threads_0_is_sized_to_the_pods_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real onnxruntime session under a cgroup quota of half a CPU: one intra-op thread,
    not onnxruntime's one per core of the host; an explicit setting still wins."""
    write(tmp_path, "cpu.max", "50000 100000\n")
    monkeypatch.setattr(cpus, "CGROUP_ROOT", tmp_path)
    session = OnnxSession(DEMO).session
    assert session.get_session_options().intra_op_num_threads == 1
    explicit = OnnxSession(DEMO, threads=3).session
    assert explicit.get_session_options().intra_op_num_threads == 3
    write(tmp_path, "cpu.max", "max 100000\n")
    unlimited = OnnxSession(DEMO).session
    assert unlimited.get_session_options().intra_op_num_threads == 0
