"""usable_cpus reads the cgroup CPU quota (v2 and v1) from a fake cgroup tree, and thread_count's 0."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from instarec_assets.compute import thread_count, usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_no_quota_is_the_affinity_mask(tmp_path: Path) -> None:
    assert usable_cpus(tmp_path, self_cgroup=None) == AFFINITY
    _write(tmp_path / "cpu.max", "max 100000\n")
    assert usable_cpus(tmp_path, self_cgroup=None) == AFFINITY


@pytest.mark.parametrize(
    ("cpu_max", "quota"), [("150000 100000\n", 1), ("50000 100000", 1), ("400000000 100000", 4000)]
)
def test_cgroup_v2_quota_is_rounded_down_and_at_least_one(tmp_path: Path, cpu_max: str, quota: int) -> None:
    _write(tmp_path / "cpu.max", cpu_max)
    assert usable_cpus(tmp_path, self_cgroup=None) == min(AFFINITY, quota)


def test_cgroup_v2_quota_of_the_process_cgroup_or_a_parent(tmp_path: Path) -> None:
    _write(tmp_path / "proc_cgroup", "0::/user.slice/job.scope\n")
    _write(tmp_path / "user.slice" / "job.scope" / "cpu.max", "max 100000")
    _write(tmp_path / "user.slice" / "cpu.max", "100000 100000")
    assert usable_cpus(tmp_path, tmp_path / "proc_cgroup") == 1


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    _write(tmp_path / "proc_cgroup", "4:memory:/x\n2:cpu,cpuacct:/docker/abc\n")
    folder = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    _write(folder / "cpu.cfs_quota_us", "120000\n")
    _write(folder / "cpu.cfs_period_us", "100000\n")
    assert usable_cpus(tmp_path, tmp_path / "proc_cgroup") == 1
    _write(folder / "cpu.cfs_quota_us", "-1\n")
    assert usable_cpus(tmp_path, tmp_path / "proc_cgroup") == AFFINITY


def test_thread_count_zero_means_usable_cpus(tmp_path: Path) -> None:
    assert thread_count(0) == usable_cpus()
    assert thread_count(3) == 3
    with pytest.raises(ValueError, match="thread count"):
        thread_count(-1)
