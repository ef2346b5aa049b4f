"""How many CPUs a job may use, whatever `--cores` or the config promise it.

Snakemake hands a job ``threads`` up to ``--cores``, which may exceed the machine (the README's
``--cores 4`` on 2 CPUs), and a cluster job may see every CPU of its node while owning a few.
Oversubscribed torch threads cost dearly (ViT-B-16 bf16: 148.6 s with 4 threads on 2 CPUs,
81.6 s with 2), so compute threads are capped by what this process may actually run on: its
CPU affinity, a cgroup CPU quota (containers), and a SLURM allocation.

On a machine without a GPU, the model jobs of a local run also take turns at the CPUs
(:func:`cpu_compute_slot`): the next one imports and loads its model, single-threaded seconds,
while this one computes on every usable CPU, and the jobs that compute no model run niced
(:func:`yield_to_model_jobs`).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import platform
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
log = logging.getLogger("clipbench")
# Whether this thread holds cpu_compute_slot: a nested entry must not wait for itself.
_slot = threading.local()


def cpu_identity() -> str:
    """The CPU's model and feature flags: what -march=native compiles for, and what a choice
    measured once per machine is kept under."""
    try:
        with open("/proc/cpuinfo") as info:
            lines = [line for line in info if line.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


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


def _in_slurm_allocation(env: Mapping[str, str]) -> bool:
    """Whether this process runs inside a SLURM allocation, whose CPUs are its own."""
    return "SLURM_JOB_ID" in env


def _slurm_cpus(env: dict[str, str]) -> int | None:
    """The CPUs of a SLURM allocation on this node: per task, per GPU × GPUs, or per node."""
    if not _in_slurm_allocation(env):
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


# libgomp's threads spin this long waiting for work before they sleep, instead of its default
# 300,000 rounds, which take the CPUs from whatever shares them: measured on 2 CPUs, ViT-B-32
# at bf16 runs 118 img/s alone and 44 beside one busy process; at 10,000 rounds 116 and 73.
OPENMP_SPIN_ROUNDS = "10000"
# The niceness of a local run's jobs that compute no model (scores, figures, report, pixels):
# they then run on what a model job leaves idle instead of stalling its compute threads, which
# wait for each other. ViT-B-16 at bf16 on 2 CPUs (2-core Zen 4 EPYC) beside a small job
# started every 2 s: 8.9 img/s alone, 6.5–6.7 beside it at niceness 0, 8.3 at 19.
LIGHT_JOB_NICENESS = "19"
LIGHT_JOB_VARIABLE = "CLIPBENCH_LIGHT_JOB_NICENESS"


def shared_cpu_environment(local: bool, env: Mapping[str, str]) -> dict[str, str]:
    """The environment a run gives its jobs so that they share the CPUs with the model job
    computing: their OpenMP threads yield soon when they wait (the whole default workflow 69.2
    → 67.7 s, mean of 4 runs each), and the jobs that compute no model run niced
    (:func:`yield_to_model_jobs`). Only on a local run: a cluster job's CPUs are its own. A
    value already set is kept."""
    if not local:
        return {}
    wanted = {"GOMP_SPINCOUNT": OPENMP_SPIN_ROUNDS, LIGHT_JOB_VARIABLE: LIGHT_JOB_NICENESS}
    return {name: value for name, value in wanted.items() if name not in env}


def yield_to_model_jobs(env: Mapping[str, str] | None = None) -> int:
    """Lower this job's priority by the run's light-job niceness (set for a local run by
    :func:`shared_cpu_environment`; none inside a SLURM allocation); the increment made."""
    env = os.environ if env is None else env
    increment = _first_int(env.get(LIGHT_JOB_VARIABLE))
    if not increment or _in_slurm_allocation(env) or not hasattr(os, "nice"):
        return 0
    os.nice(increment)
    return increment


def cuda_visible(env: dict[str, str] | None = None) -> bool:
    """Whether this machine shows a GPU torch would use as ``cuda`` to its processes, found
    without torch (the Snakefile asks, on every run): NVIDIA's device files, or ROCm's
    ``/dev/kfd``, unless CUDA_VISIBLE_DEVICES hides them all."""
    env = dict(os.environ) if env is None else env
    if env.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    return any(
        glob.glob(p) for p in ("/dev/nvidia[0-9]*", "/proc/driver/nvidia/gpus/*", "/dev/kfd")
    )


@contextlib.contextmanager
def cpu_compute_slot(
    device_type: str, env: dict[str, str] | None = None, lock: Path | None = None
) -> Iterator[None]:
    """Held while a model computes on the CPU: one such job at a time on this machine (per
    user), so that model jobs may start side by side without oversubscribing the CPUs. Not
    taken on a GPU, nor inside a SLURM allocation, whose CPUs are the job's own."""
    env = dict(os.environ) if env is None else env
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        fcntl = None
    if (
        device_type != "cpu"
        or _in_slurm_allocation(env)
        or fcntl is None
        or getattr(_slot, "held", False)
    ):
        yield
        return
    path = lock or Path(tempfile.gettempdir()) / f"clipbench-cpu-compute-{os.getuid()}.lock"
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            start = time.perf_counter()
            log.info("waiting for the CPUs: another model job is computing (%s)", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
            log.info("CPUs free after %.1f s", time.perf_counter() - start)
        _slot.held = True
        try:
            yield
        finally:  # also released by the kernel if the job dies
            _slot.held = False
            fcntl.flock(handle, fcntl.LOCK_UN)
