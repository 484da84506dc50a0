"""How many CPUs this process may actually use: the one answer every thread count in bneck starts from.

`os.cpu_count()` counts the machine's CPUs, not the process's: in a container with a CPU quota, or under
`taskset`, it oversubscribes (2 workers x 16 threads on a 2-CPU quota run several times slower than 2 x 1).
This takes the smallest of the CPU affinity mask and the cgroup quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may run on at once (>= 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The cgroup's CPU quota in CPUs (e.g. 1.5), or None when there is none or it cannot be read."""
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1_quota, v1_period = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
        if v1_quota.is_file() and v1_period.is_file():
            q = int(v1_quota.read_text())
            return None if q <= 0 else q / int(v1_period.read_text())
    except (OSError, ValueError):
        return None
    return None
