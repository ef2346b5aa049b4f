"""How many CPUs a job may use, whatever `--cores` or the config promise it.

Snakemake hands a job ``threads`` up to ``--cores``, which may exceed the machine (the README's
``--cores 4`` on 2 CPUs), and a cluster job may see every CPU of its node while owning a few.
Oversubscribed torch threads cost dearly (ViT-B-16 bf16: 148.6 s with 4 threads on 2 CPUs,
81.6 s with 2), so compute threads are capped by what this process may actually run on: its
CPU affinity, a cgroup CPU quota (containers), and a SLURM allocation.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def _affinity() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cgroup_quota(root: Path = CGROUP) -> int | None:
    """CPUs allowed by a CFS quota (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


def _first_int(value: str | None) -> int | None:
    found = re.match(r"\s*(\d+)", value or "")
    return int(found[1]) if found else None


def _slurm_cpus(env: dict[str, str]) -> int | None:
    """The CPUs of a SLURM allocation on this node: per task, per GPU × GPUs, or per node."""
    if "SLURM_JOB_ID" not in env:
        return None
    per_task = _first_int(env.get("SLURM_CPUS_PER_TASK"))
    if per_task:
        return per_task
    per_gpu = _first_int(env.get("SLURM_CPUS_PER_GPU"))
    gpus = _first_int(env.get("SLURM_GPUS_ON_NODE") or env.get("SLURM_GPUS"))
    if per_gpu and gpus:
        return per_gpu * gpus
    return _first_int(env.get("SLURM_JOB_CPUS_PER_NODE"))  # "4" or "4(x2)"


def usable_cpus(env: dict[str, str] | None = None, cgroup: Path = CGROUP) -> int:
    """The CPUs this process may run on: the least of affinity, cgroup quota and SLURM."""
    env = dict(os.environ) if env is None else env
    limits = [_affinity(), _cgroup_quota(cgroup), _slurm_cpus(env)]
    return max(1, min(n for n in limits if n))


def compute_threads(requested: int, env: dict[str, str] | None = None) -> int:
    """Threads for a job asked to run ``requested`` (Snakemake's ``threads``), never more than
    the CPUs it may use."""
    return max(1, min(int(requested), usable_cpus(env)))
