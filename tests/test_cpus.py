"""A job never runs more compute threads than the CPUs it may use."""

import os
import subprocess
import sys
import threading

import pytest
import torch

from clipbench import cpus
from clipbench.cpus import compute_threads, usable_cpus


@pytest.fixture
def no_cgroup(tmp_path):
    return tmp_path  # a cgroup folder with no quota files


def test_affinity_caps_the_threads(monkeypatch, no_cgroup):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert usable_cpus({}, no_cgroup) == 2
    monkeypatch.setattr(cpus, "CGROUP", no_cgroup)
    assert compute_threads(4, {}) == 2  # --cores 4 on 2 CPUs
    assert compute_threads(1, {}) == 1


def test_a_cgroup_quota_caps_the_threads(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    (tmp_path / "cpu.max").write_text("300000 100000\n")
    assert usable_cpus({}, tmp_path) == 3
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert usable_cpus({}, tmp_path) == 2  # 1.5 CPUs of time: two threads may share it
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus({}, tmp_path) == 16
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert usable_cpus({}, tmp_path) == 4  # cgroup v1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert usable_cpus({}, tmp_path) == 16


def test_a_slurm_allocation_caps_the_threads(monkeypatch, no_cgroup):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    job = {"SLURM_JOB_ID": "7"}
    assert usable_cpus(job | {"SLURM_CPUS_PER_TASK": "4"}, no_cgroup) == 4
    assert usable_cpus(job | {"SLURM_CPUS_PER_GPU": "4", "SLURM_GPUS_ON_NODE": "2"}, no_cgroup) == 8
    assert usable_cpus(job | {"SLURM_JOB_CPUS_PER_NODE": "6(x2)"}, no_cgroup) == 6
    assert usable_cpus(job, no_cgroup) == 64
    # Variables left over from an enclosing job do not count outside one.
    assert usable_cpus({"SLURM_CPUS_PER_TASK": "4"}, no_cgroup) == 64


def test_the_encode_session_sets_capped_torch_threads(checkpoints, monkeypatch, tmp_path):
    """The stage itself applies the cap: asked for 4 threads on 1 usable CPU, torch runs 1;
    and on the CPU it keeps freed memory for the next batch (clipbench/allocator.py)."""
    import pyarrow as pa

    from clipbench.arrow_io import write_table
    from clipbench.demo import demo_rows
    from clipbench.kinds import parse_model
    from clipbench.settings import EncodeSettings
    from clipbench.stages import encode
    from clipbench.stages.encode import Session
    from tests.conftest import open_clip_spec

    kept = []
    monkeypatch.setattr(encode, "keep_freed_memory", lambda: kept.append(True))

    blobs = demo_rows(3, seed=1)[0]
    images = pa.table({"id": [0, 1, 2], "image": blobs, "text": ["a", "b", "c"]})
    captions = pa.table({"id": [0, 1, 2], "image_id": [0, 1, 2], "text": ["a", "b", "c"]})
    write_table(images, str(tmp_path / "d.arrow"), {"dataset": "d"})
    write_table(captions, str(tmp_path / "c.arrow"), {"dataset": "d"})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    before = torch.get_num_threads()
    try:
        Session.open(
            parse_model(open_clip_spec(checkpoints, "tiny-rn")),
            EncodeSettings.parse({"device": "cpu", "precision": "fp32"}),
            str(tmp_path / "d.arrow"),
            str(tmp_path / "c.arrow"),
            4,
            None,
            "tiny-rn",
        )
        assert torch.get_num_threads() == 1
        assert kept == [True]
    finally:
        torch.set_num_threads(before)


def test_model_jobs_take_turns_at_the_cpus(tmp_path):
    """A second CPU job waits while one computes; it enters once that one leaves."""
    lock, entered, release = tmp_path / "cpu.lock", threading.Event(), threading.Event()

    def first():
        with cpus.cpu_compute_slot("cpu", {}, lock):
            entered.set()
            release.wait(10)

    holder = threading.Thread(target=first)
    holder.start()
    assert entered.wait(10)
    second = threading.Event()
    waiter = threading.Thread(target=lambda: _enter(lock, "cpu", {}, second))
    waiter.start()
    assert not second.wait(0.3)  # held: the second job must not compute yet
    release.set()
    assert second.wait(10)
    holder.join(), waiter.join()


@pytest.mark.parametrize(
    ("device", "env"), [("cuda", {}), ("cpu", {"SLURM_JOB_ID": "7"})], ids=["gpu", "slurm"]
)
def test_gpu_and_slurm_jobs_do_not_wait_for_the_cpus(tmp_path, device, env):
    lock, done = tmp_path / "cpu.lock", threading.Event()
    with cpus.cpu_compute_slot("cpu", {}, lock):
        waiter = threading.Thread(target=lambda: _enter(lock, device, env, done))
        waiter.start()
        assert done.wait(10)
    waiter.join()


def _enter(lock, device, env, event):
    with cpus.cpu_compute_slot(device, env, lock):
        event.set()


def test_hidden_gpus_are_not_visible(monkeypatch):
    monkeypatch.setattr(cpus.glob, "glob", lambda pattern: ["/dev/nvidia0"])
    assert cpus.cuda_visible({})
    assert not cpus.cuda_visible({"CUDA_VISIBLE_DEVICES": ""})
    assert not cpus.cuda_visible({"CUDA_VISIBLE_DEVICES": "-1"})
    monkeypatch.setattr(cpus.glob, "glob", lambda pattern: [])
    assert not cpus.cuda_visible({})


def test_local_jobs_share_the_cpus_with_the_model_job():
    wanted = {
        "GOMP_SPINCOUNT": cpus.OPENMP_SPIN_ROUNDS,
        cpus.LIGHT_JOB_VARIABLE: cpus.LIGHT_JOB_NICENESS,
    }
    assert cpus.shared_cpu_environment(True, {}) == wanted
    mine = {"GOMP_SPINCOUNT": "300000", cpus.LIGHT_JOB_VARIABLE: "0"}
    assert cpus.shared_cpu_environment(True, mine) == {}  # the user's win
    assert cpus.shared_cpu_environment(False, {}) == {}  # a cluster job's CPUs are its own


def _niceness_gained(code: str, **variables: str) -> int:
    """How much niceness a fresh interpreter gains running ``code`` (this test process keeps
    its own), with ``variables`` in its environment."""
    env = {
        k: v for k, v in os.environ.items() if k not in (cpus.LIGHT_JOB_VARIABLE, "SLURM_JOB_ID")
    }
    script = f"import os\nbefore = os.nice(0)\n{code}\nprint(os.nice(0) - before)"
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, **variables},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not hasattr(os, "nice"), reason="no process niceness on this OS")
def test_jobs_that_compute_no_model_yield_the_cpus(tmp_path):
    log = tmp_path / "job.log"
    light = f"from clipbench.logs import job_log\nwith job_log({str(log)!r}): pass"
    model = f"from clipbench.logs import job_log\nwith job_log({str(log)!r}, model_job=True): pass"
    local = {cpus.LIGHT_JOB_VARIABLE: "7"}
    assert _niceness_gained(light, **local) == 7
    assert _niceness_gained(model, **local) == 0  # the model job keeps its priority
    assert _niceness_gained(light) == 0  # outside a local run (tests, a user's script)
    assert _niceness_gained(light, **local, SLURM_JOB_ID="42") == 0  # its own CPUs
    assert _niceness_gained(light, **{cpus.LIGHT_JOB_VARIABLE: "0"}) == 0  # turned off


def test_a_job_holding_the_cpus_enters_again_without_waiting_for_itself(tmp_path):
    """A measurement that takes the slot (the fp32 matmul mode's timing) may run inside a
    stage that already holds it: a second flock on the same file would wait forever."""
    lock, done = tmp_path / "cpu.lock", threading.Event()
    with cpus.cpu_compute_slot("cpu", {}, lock):
        nested = threading.Thread(target=lambda: _enter_twice(lock, done))
        with cpus.cpu_compute_slot("cpu", {}, lock):
            pass
        nested.start()
        assert not done.wait(0.3)  # another thread (another job) still waits
    assert done.wait(10)
    nested.join()


def _enter_twice(lock, event):
    with cpus.cpu_compute_slot("cpu", {}, lock), cpus.cpu_compute_slot("cpu", {}, lock):
        event.set()
