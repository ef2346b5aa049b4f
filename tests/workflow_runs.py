"""Running Snakemake on a temporary copy of the workflow, as the end-to-end tests do."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

WORKFLOW_FILES = [
    "Snakefile",
    "profiles",
    "config.yaml",
    "rules",
    "scripts",
    "schemas",
    "clipbench",
    "envs",
    "tests/demo",
    "references",
    "report",
]


def workflow_copy(dest: Path) -> Path:
    for name in WORKFLOW_FILES:
        src, dst = ROOT / name, dest / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return dest


def snakemake(
    cwd: Path, *args: str, check: bool = True, cpus: set[int] | None = None
) -> subprocess.CompletedProcess:
    """``cpus``: run Snakemake pinned to these CPUs (its CPU affinity)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
    )
    if check and done.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table that Snakemake prints before running (or dry-running)."""
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


DEMO = ("--cores", "2", "--configfile", "tests/demo/config.yaml")


def demo_subset(root: Path, datasets: list[str], models: list[str], name: str) -> Path:
    """The offline demo's config cut to some datasets and models, written beside the copy."""
    cfg = yaml.safe_load((root / "tests/demo/config.yaml").read_text())
    cfg["datasets"] = {d: cfg["datasets"][d] for d in datasets}
    cfg["models"] = {m: cfg["models"][m] for m in models}
    if cfg["robustness"]["enabled"]:
        cfg["robustness"]["datasets"] = [d for d in cfg["robustness"]["datasets"] if d in datasets]
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def artifact_digests(root: Path, pattern: str = "*") -> dict[str, str]:
    """sha256 of every file under results/ matching ``pattern``, by path relative to it."""
    return {
        str(p.relative_to(root / "results")): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / "results").rglob(pattern))
        if p.is_file()
    }


def arrow_digests(root: Path) -> dict[str, str]:
    return artifact_digests(root, "*.arrow")
