"""How many CPU threads this process should use: one setting for XGBoost, torch and DuckDB.

`os.cpu_count()` is the machine's cores, not what the process may use: a container limited to two
CPUs on a 64-core host still sees 64, and 64 threads sharing two cores' worth of time run slower
than two. `usable_cpus()` is the smaller of the CPUs the process may be scheduled on (its affinity
mask) and the cgroup CPU quota (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`),
rounded down, at least 1. Dagster-free; the thread count is passed on as an explicit parameter.

Thread counts also matter for reproducibility: XGBoost's `hist` trees and torch's parallel reductions
are bit-identical run to run for the same thread count, not necessarily across thread counts, so the
count used is recorded with each model.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path | None = SELF_CGROUP) -> int:
    """The CPUs this process may actually use: affinity mask intersected with the cgroup CPU quota.

    The quota is looked up in the process's own cgroup (from `self_cgroup`, /proc/self/cgroup) and
    each of its ancestors up to `cgroup_root`, since a limit on a parent caps its children; with no
    readable /proc entry, `cgroup_root` itself (inside a container, the container's cgroup).
    """
    cpus = _affinity_cpus()
    quota = _cgroup_quota(Path(cgroup_root), self_cgroup)
    if quota is not None:
        cpus = min(cpus, math.floor(quota))
    return max(1, cpus)


def thread_count(setting: int = 0) -> int:
    """Threads to use for a `setting`: a positive number as given, 0 (the default) = usable_cpus()."""
    setting = int(setting)
    if setting < 0:
        raise ValueError(f"a thread count must be 0 (all usable CPUs) or positive, not {setting}")
    return setting or usable_cpus()


def _affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _cgroup_quota(root: Path, self_cgroup: Path | None) -> float | None:
    """The smallest CPU quota (in CPUs) over the process's cgroup and its ancestors, None if none."""
    v2_paths, v1_paths = _own_cgroup_paths(self_cgroup)
    quotas: list[float] = []
    for relative in v2_paths:
        for folder in _with_ancestors(root, relative):
            quotas.extend(_v2_quota(folder / "cpu.max"))
    for relative in v1_paths:
        for controller_dir in (root / "cpu", root / "cpu,cpuacct"):
            for folder in _with_ancestors(controller_dir, relative):
                quotas.extend(_v1_quota(folder))
    return min(quotas) if quotas else None


def _own_cgroup_paths(self_cgroup: Path | None) -> tuple[list[str], list[str]]:
    """(cgroup v2 path, cgroup v1 cpu-controller path) of this process, "/" when unknown."""
    v2, v1 = ["/"], ["/"]
    try:
        lines = Path(self_cgroup).read_text().splitlines() if self_cgroup is not None else []
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2.append(path)
        elif "cpu" in controllers.split(","):
            v1.append(path)
    return v2, v1


def _with_ancestors(root: Path, relative: str) -> list[Path]:
    """root/relative and every folder above it up to root (a cgroup's limit caps its children)."""
    parts = [part for part in relative.strip("/").split("/") if part and part != ".."]
    return [root.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _v2_quota(path: Path) -> list[float]:
    """cgroup v2 `cpu.max`: "max 100000" (no limit) or "<quota> <period>" in microseconds."""
    try:
        fields = path.read_text().split()
    except OSError:
        return []
    if len(fields) < 1 or fields[0] == "max":
        return []
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        return []
    return [quota / period] if quota > 0 and period > 0 else []


def _v1_quota(folder: Path) -> list[float]:
    """cgroup v1: cpu.cfs_quota_us (-1 = no limit) over cpu.cfs_period_us."""
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text().strip())
        period = int((folder / "cpu.cfs_period_us").read_text().strip())
    except (OSError, ValueError):
        return []
    return [quota / period] if quota > 0 and period > 0 else []
