"""Crashes and reruns: a run killed mid-job leaves nothing a rerun would trust, and the rerun ends
with exactly the artifacts of a run that was never interrupted (and of any other clean run)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipbench.arrow_io import HOLD_BEFORE_RENAME, HOLD_NOTICE
from tests.workflow_runs import (
    arrow_digests,
    artifact_digests,
    demo_subset,
    snakemake,
    workflow_copy,
)

pytestmark = pytest.mark.e2e

# One dataset and two models (an open_clip and the fitted baseline), robustness on: every rule.
MODELS = ["tiny-rn", "tiny-bert-resnet18-ridge"]


def cut_demo(root: Path) -> tuple[str, ...]:
    return ("--cores", "2", "--configfile", str(demo_subset(root, ["demo"], MODELS, "faults")))


def kill_when_held(root: Path, args: tuple[str, ...], hold: str, timeout: float = 300) -> None:
    """Run Snakemake, let the job writing an artifact that matches ``hold`` finish it into its
    temporary file and stop just before the rename (arrow_io's fault-injection hook), then
    SIGKILL Snakemake and every job it started (the whole process group, as a crash or a
    killed allocation would)."""
    notice = root / "held"
    notice.unlink(missing_ok=True)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": "",
        HOLD_BEFORE_RENAME: hold,
        HOLD_NOTICE: str(notice),
    }
    with open(root / "killed-run.out", "w") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "snakemake", *args],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    try:
        while not notice.exists():
            if run.poll() is not None or time.monotonic() > deadline:
                output = (root / "killed-run.out").read_text()
                raise AssertionError(f"no job reached {hold} (exit {run.returncode}):\n{output}")
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, str]:
    root = workflow_copy(tmp_path_factory.mktemp("uninterrupted"))
    snakemake(root, *cut_demo(root))
    return artifact_digests(root)


def test_clean_runs_write_byte_identical_artifacts(uninterrupted, demo):
    """The cut demo and the whole demo (another run, other models beside these) agree byte for
    byte on every artifact they share: no timestamps, hostnames or timings in artifacts."""
    whole = arrow_digests(demo)
    cut = {p: d for p, d in uninterrupted.items() if p.endswith(".arrow")}
    # Aggregates over the models (and datasets) differ with the model set.
    aggregates = {"demo/comparisons.arrow", "demo/references.arrow", "references.arrow"}
    shared = sorted(set(cut) & set(whole) - aggregates)
    assert len(shared) >= 20
    assert any("/embeddings/" in p for p in shared) and any("/robustness/" in p for p in shared)
    assert {p: cut[p] for p in shared} == {p: whole[p] for p in shared}


def test_sigkill_during_download_encode_and_figures_then_rerun(uninterrupted, tmp_path):
    root = workflow_copy(tmp_path)
    args = cut_demo(root)
    # Each stage is killed between two of its outputs: the first renamed into place, the last
    # complete in its temporary file. Only Snakemake's incomplete-output tracking (and the
    # missing output) tells the rerun that the job did not finish.
    stages = {
        "download": ("results/demo/dataset.arrow", "results/demo/captions.arrow"),
        "encode": (
            "results/demo/embeddings/tiny-rn/texts.arrow",
            "results/demo/embeddings/tiny-rn/queries.arrow",
        ),
        "figures": ("results/demo/figures/rank_cdf.png", "results/demo/figures/rank_cdf.svg"),
    }
    for stage, (written, held) in stages.items():
        # A killed run leaves its lock behind: --unlock first, as Snakemake's message says.
        snakemake(root, "--unlock", *args)
        kill_when_held(root, ("--rerun-incomplete", *args), f"*{held}")
        held_path = root / held
        assert (root / written).exists(), f"{stage}: killed before {written} was written"
        assert not held_path.exists(), f"{stage}: {held} was renamed into place"
        assert list(held_path.parent.glob(f".{held_path.name}.*.tmp")), stage
        # Snakemake itself knows the job did not finish, though one of its outputs exists.
        plain = snakemake(root, "-n", "--workflow-profile", "none", *args, check=False)
        assert plain.returncode != 0 and "IncompleteFilesException" in plain.stdout + plain.stderr
        assert written in (plain.stdout + plain.stderr).split("Incomplete files:")[1], stage

    snakemake(root, "--unlock", *args)
    snakemake(root, "--rerun-incomplete", *args)
    # Every artifact, reports and figures included, is the uninterrupted run's, byte for byte.
    assert artifact_digests(root) == uninterrupted
    # The killed jobs' temporary files went with the rerun.
    assert not [p for p in (root / "results").rglob(".*.tmp")]
    # … and the rerun left a workflow that is up to date.
    assert "Nothing to be done" in snakemake(root, "-n", *args).stdout
