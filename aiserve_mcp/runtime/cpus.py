"""How many CPUs this process may really use.

``os.cpu_count()`` counts the machine's CPUs: it ignores CPU affinity (``taskset``, a container's
``--cpuset-cpus``) and the cgroup CPU quota (a container's ``--cpus``, Kubernetes' CPU limit). A runtime
sized from it on a process pinned to one core runs several threads on that core, which only slows it
down. :func:`usable_cpus` takes the affinity mask, capped by the quota of the process's cgroup (v2
``cpu.max``, or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), rounded down: 1.5 CPUs of quota are
one CPU's worth of threads that never wait for the scheduler.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def quota_from_cpu_max(text: str) -> float | None:
    """The CPUs a cgroup v2 ``cpu.max`` line allows (``"150000 100000"`` is 1.5); None for ``max``."""
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    quota, period = int(fields[0]), int(fields[1])
    return quota / period if quota > 0 and period > 0 else None


def quota_from_cfs(quota_us: str, period_us: str) -> float | None:
    """The CPUs a cgroup v1 CFS quota allows; None when unlimited (``-1``)."""
    quota, period = int(quota_us), int(period_us)
    return quota / period if quota > 0 and period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_cgroup_v2(root: Path) -> Path:
    """The directory of this process's cgroup v2 (``0::/path`` in ``/proc/self/cgroup``), or ``root``."""
    for line in (_read(Path("/proc/self/cgroup")) or "").splitlines():
        if line.startswith("0::"):
            return root / line[3:].lstrip("/")
    return root


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs, or None when there is none (or no cgroup fs)."""
    for directory in (_own_cgroup_v2(root), root):
        text = _read(directory / "cpu.max")
        if text is not None:
            return quota_from_cpu_max(text)
    quota, period = _read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us")
    if quota is not None and period is not None:
        return quota_from_cfs(quota, period)
    return None


def usable_cpus() -> int:
    """The CPUs this process may run on at once: its affinity, capped by its cgroup's quota (at least 1)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform (macOS)
        allowed = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        allowed = min(allowed, int(quota))
    return max(1, allowed)
