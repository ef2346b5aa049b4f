"""The workflow through a real SLURM controller: profiles/slurm, one sbatch per job.

A one-node cluster (tests/slurm_cluster.py) runs on this machine; the tests skip only where it
cannot be installed (not root, or no apt-get). The node has no GPU, so the test profile is
profiles/slurm with `gpu: 0` for the model jobs (sbatch refuses --gpus on a node without GPUs).
"""

from __future__ import annotations

import collections
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.slurm_cluster import PARTITION, cannot_run, slurm_cluster
from tests.workflow_runs import demo_subset, job_counts, snakemake, workflow_copy

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]

# Status checks every 2 s instead of 40 s (still ≤ MinJobAge / 3), SLURM logs kept to assert on.
FAST = ("--slurm-init-seconds-before-status-checks", "2", "--slurm-keep-successful-logs")
PROFILE = "profiles/slurm-nogpu"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = cannot_run()
    if reason:
        print(reason)
        pytest.skip(reason)
    with (
        slurm_cluster(tmp_path_factory.mktemp("slurm")) as running,
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setenv("SLURM_CONF", running.env["SLURM_CONF"])
        yield running


def nogpu_profile(root: Path) -> Path:
    """profiles/slurm as is, but the model jobs ask for no GPU."""
    profile = yaml.safe_load((root / "profiles/slurm/config.yaml").read_text())
    for rule in ("encode", "robustness"):
        assert profile["set-resources"][rule]["gpu"] == 1
        profile["set-resources"][rule]["gpu"] = 0
    profile["cores"] = 2  # a group job as large as the node (the demo's encode.threads)
    path = root / PROFILE / "config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(profile))
    return path


def rule_of(comment: str) -> str:
    """The plugin's job comment: rule_<name>[_wildcards_<values>]."""
    return re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", comment)[1]


def run_jobs(cluster, out: str, rule: str | None = None) -> list[dict[str, str]]:
    """The SLURM jobs of one Snakemake run (the plugin names them by its run ID), by job ID."""
    run_id = re.search(r"SLURM run ID: (\S+)", out)[1]
    jobs = [j for j in cluster.jobs() if j["name"] == run_id]
    return sorted(
        (j for j in jobs if rule is None or rule_of(j["comment"]) == rule),
        key=lambda j: int(j["id"]),
    )


def test_sbatch_refuses_gpus_on_this_node(cluster, tmp_path):
    """Why the test profile drops the model jobs' GPU request."""
    done = cluster.run_unchecked("sbatch", "--gpus=1", "-D", str(tmp_path), "--wrap", "true")
    assert done.returncode != 0 and "sbatch: error" in done.stderr


# The offline demo cut to one dataset and two models (an open_clip and the fitted baseline),
# robustness on: every rule of the workflow. profiles/slurm groups each model's encode job with
# every stage that reads its embeddings (one sbatch job per model and dataset) and renders pages
# on the submit host: 7 sbatch jobs where there were 26 (README: job counts and wall times).
DEMO_MODELS = ["tiny-rn", "tiny-bert-resnet18-ridge"]
GROUPED = {"encode", "similarity", "hits", "histogram", "queries", "robustness", "clip_retrieval"}
LOCAL = {"demo_dataset", "demo_open_clip", "demo_torchvision", "demo_bert"} | {
    "report",
    "explorer",
    "robustness_figures",
    "figures",
    "summary",
}


def test_demo_through_slurm(cluster, tmp_path):
    root = workflow_copy(tmp_path)
    nogpu_profile(root)
    config = demo_subset(root, ["demo"], DEMO_MODELS, "slurm-demo")
    args = ("--workflow-profile", PROFILE, *FAST, "--configfile", str(config))
    done = snakemake(root, *args)
    out = done.stdout + done.stderr
    assert "SLURM run ID" in out

    planned = job_counts(out)
    planned.pop("all")
    assert set(planned) == GROUPED | LOCAL | {"download", "pixels", "compare", "references"}
    # Every job that is neither local nor grouped was one sbatch job, each model's group one
    # more; all completed.
    jobs = run_jobs(cluster, out)
    assert {j["state"] for j in jobs} == {"COMPLETED"}
    groups = [j for j in jobs if rule_of(j["comment"]).startswith("model")]
    alone = collections.Counter(rule_of(j["comment"]) for j in jobs if j not in groups)
    assert len(groups) == len(DEMO_MODELS)
    assert alone == {
        rule: planned[rule] for rule in ("download", "pixels", "compare", "references")
    }
    logs = list((root / ".snakemake/slurm_logs").rglob("*.log"))
    assert len(logs) == len(jobs)

    # The profile's resources reached sbatch: a group as large as its largest member (encode:
    # 16000 MB, the test profile's 2 cores), the others stacked after it; --mem for the rest.
    assert {(j["min_memory"], j["cpus"], j["gres"]) for j in groups} == {("16000M", "2", "N/A")}
    assert {j["min_memory"] for j in run_jobs(cluster, out, "compare")} == {"4000M"}

    page = (root / "results/demo/report.html").read_text()
    assert "vegaEmbed" in page and all(m in page for m in DEMO_MODELS)
    assert 'href="demo/report.html"' in (root / "results/report.html").read_text()
    again = snakemake(root, *args, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


FLAKY = """\
rule all:
    input:
        "flaky.txt",


# Fails on its first attempt (100 MB asked), succeeds on the retry (200 MB).
rule flaky:
    output:
        "flaky.txt",
    log:
        "logs/flaky.log",
    resources:
        mem_mb=lambda wildcards, attempt: 100 * attempt,
    shell:
        "echo attempt with {resources.mem_mb} MB on $SLURM_JOB_ID > {log}; "
        "test {resources.mem_mb} -ge 200 || {{ echo flaky fails on purpose >&2; exit 3; }}; "
        "echo done > {output}"


rule broken:
    output:
        "broken.txt",
    log:
        "logs/broken.log",
    shell:
        "echo broken fails on purpose on $SLURM_JOB_ID > {log}; exit 4"


# Named like the workflow's GPU rule: profiles/slurm's set-resources for `encode` apply.
rule encode:
    output:
        "encoded.txt",
    log:
        "logs/encode.log",
    shell:
        "echo on a GPU > {output} 2> {log}"
"""


@pytest.fixture
def flaky(tmp_path) -> Path:
    """A tiny workflow beside an unchanged copy of profiles/slurm."""
    (tmp_path / "Snakefile").write_text(FLAKY)
    shutil.copytree(ROOT / "profiles/slurm", tmp_path / "profiles/slurm")
    return tmp_path


def test_failed_job_is_resubmitted(cluster, flaky):
    done = snakemake(flaky, "--workflow-profile", "profiles/slurm", *FAST)
    out = done.stdout + done.stderr
    jobs = run_jobs(cluster, out, "flaky")
    assert [(j["state"], j["min_memory"]) for j in jobs] == [
        ("FAILED", "100M"),
        ("COMPLETED", "200M"),
    ]
    first, second = jobs
    assert f"SLURM-job '{first['id']}' failed" in out
    assert "Trying to restart job" in out
    assert (flaky / "flaky.txt").read_text() == "done\n"
    assert (flaky / "logs/flaky.log").read_text() == f"attempt with 200 MB on {second['id']}\n"
    # The failed attempt's SLURM log is kept (it holds the job's own Snakemake output).
    failed_log = flaky / f".snakemake/slurm_logs/rule_flaky/{first['id']}.log"
    assert "flaky fails on purpose" in failed_log.read_text()


def test_failing_rule_is_reported_with_its_log(cluster, flaky):
    done = snakemake(
        flaky, "--workflow-profile", "profiles/slurm", *FAST, "broken.txt", check=False
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0
    jobs = run_jobs(cluster, out, "broken")
    assert [j["state"] for j in jobs] == ["FAILED", "FAILED"]  # retries: 1 → two submissions
    for job in jobs:
        assert f"SLURM-job '{job['id']}' failed, SLURM status is: 'FAILED'" in out
        assert f".snakemake/slurm_logs/rule_broken/{job['id']}.log" in out
    # show-failed-logs: the rule's own log, printed by the submitting Snakemake.
    assert "logs/broken.log" in out
    assert f"broken fails on purpose on {jobs[-1]['id']}" in out
    assert not (flaky / "broken.txt").exists()
    assert PARTITION in cluster.run("sinfo", "--noheader", "--format=%P")


def test_profile_asks_sbatch_for_a_gpu_for_the_encode_rules(cluster, flaky):
    """profiles/slurm unchanged: the `encode` rule's gpu: 1 and cpus_per_gpu: 4 become
    `--gpus=1 --cpus-per-gpu=4`, which this GPU-less node refuses; the plugin logs the sbatch
    call it made (--verbose: a group job's failure message leaves it out)."""
    done = snakemake(
        flaky,
        "--workflow-profile",
        "profiles/slurm",
        *FAST,
        "--verbose",
        "encoded.txt",
        check=False,
    )
    out = done.stdout + done.stderr
    call = re.search(r"sbatch call: (sbatch .*)", out)
    assert done.returncode != 0 and call, out
    args = shlex.split(call[1])
    assert "--gpus=1" in args and "--cpus-per-gpu=4" in args, args
    options = dict(zip(args, args[1:], strict=False))  # each option with the word after it
    assert (options["-t"], options["--mem"]) == ("120", "16000"), args
