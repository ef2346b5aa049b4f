"""Crashes and reruns: a run killed mid-job leaves nothing a rerun would trust, and the rerun ends
with exactly the artifacts of a run that was never interrupted (and of any other clean run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.workflow_runs import arrow_digests, demo_subset, snakemake, workflow_copy

pytestmark = pytest.mark.e2e

# One dataset and two models (an open_clip and the fitted baseline), robustness on: every rule.
MODELS = ["tiny-rn", "tiny-bert-resnet18-ridge"]


def cut_demo(root: Path) -> tuple[str, ...]:
    return ("--cores", "2", "--configfile", str(demo_subset(root, ["demo"], MODELS, "faults")))


def kill_when(root: Path, args: tuple[str, ...], started: str, timeout: float = 300) -> None:
    """Run Snakemake and SIGKILL it and every job it started (its whole process group, as a
    crash or a killed allocation would) as soon as ``started`` (a job's log file) exists."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    run = subprocess.Popen(
        [sys.executable, "-m", "snakemake", *args],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while not (root / started).exists():
            assert run.poll() is None, f"the run ended before {started} appeared"
            assert time.monotonic() < deadline, f"{started} never appeared"
            time.sleep(0.02)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, str]:
    root = workflow_copy(tmp_path_factory.mktemp("uninterrupted"))
    snakemake(root, *cut_demo(root))
    return arrow_digests(root)


def test_clean_runs_write_byte_identical_artifacts(uninterrupted, demo):
    """The cut demo and the whole demo (another run, other models beside these) agree byte for
    byte on every artifact they share: no timestamps, hostnames or timings in artifacts."""
    whole = arrow_digests(demo)
    shared = sorted(set(uninterrupted) & set(whole) - {"demo/comparisons.arrow"})
    assert len(shared) >= 20
    assert any("/embeddings/" in p for p in shared) and any("/robustness/" in p for p in shared)
    assert {p: uninterrupted[p] for p in shared} == {p: whole[p] for p in shared}


def test_sigkill_during_download_encode_and_report_then_rerun(uninterrupted, tmp_path):
    root = workflow_copy(tmp_path)
    args = cut_demo(root)
    stages = {
        "download": ("logs/demo/download.log", "results/demo/dataset.arrow"),
        "encode": ("logs/demo/encode/tiny-rn.log", "results/demo/embeddings/tiny-rn/images.arrow"),
        "report": ("logs/demo/report.log", "results/demo/report.html"),
    }
    for stage, (log, output) in stages.items():
        # A killed run leaves its lock behind: --unlock first, as Snakemake's message says.
        snakemake(root, "--unlock", *args)
        kill_when(root, ("--rerun-incomplete", *args), log)
        assert not (root / output).exists(), f"killed too late: {stage} had finished"

    snakemake(root, "--unlock", *args)
    snakemake(root, "--rerun-incomplete", *args)
    assert arrow_digests(root) == uninterrupted
    # The killed jobs' half-written temporary files went with the rerun.
    assert not [p for p in (root / "results").rglob(".*.tmp")]
    # … and the rerun left a workflow that is up to date.
    assert "Nothing to be done" in snakemake(root, "-n", *args).stdout
