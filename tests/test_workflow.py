"""End to end: Snakemake runs the workflow in a temporary copy of the repository."""

from __future__ import annotations

import html.parser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import yaml

from clipbench.arrow_io import read_metadata, read_table
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e
WORKFLOW_FILES = [
    "Snakefile",
    "config.yaml",
    "rules",
    "scripts",
    "schemas",
    "clipbench",
    "envs",
    "tests/demo",
]
DEMO_MODELS = ["tiny-rn", "tiny-vit-32", "tiny-vit-16", "tiny-bert-resnet18"]
DEMO_ROWS = 48


def workflow_copy(dest: Path) -> Path:
    for name in WORKFLOW_FILES:
        src, dst = ROOT / name, dest / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return dest


def snakemake(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table that Snakemake prints before running (or dry-running)."""
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


DEMO = ("--cores", "2", "--configfile", "tests/demo/config.yaml")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = workflow_copy(tmp_path_factory.mktemp("demo"))
    snakemake(root, *DEMO)
    return root


def test_dry_run_of_the_default_config_lists_the_whole_dag(tmp_path):
    root = workflow_copy(tmp_path)
    done = snakemake(root, "-n", "--cores", "4", "--resources", "gpu=1")
    assert job_counts(done.stdout + done.stderr) == {
        "download": 1,
        "encode": 4,
        "similarity": 4,
        "hits": 4,
        "histogram": 4,
        "queries": 4,
        "report": 1,
        "all": 1,
    }


def test_demo_dataset_artifact(demo):
    path = demo / "results/demo/dataset.arrow"
    table = read_table(path)
    assert table.schema.remove_metadata() == pa.schema(
        [("id", pa.int64()), ("image", pa.binary()), ("text", pa.string())]
    )
    assert table.num_rows == DEMO_ROWS
    meta = read_metadata(path)
    assert meta["num_rows"] == DEMO_ROWS and len(meta["sha256"]) == 64
    assert meta["source"] == "results/demo/inputs/demo.parquet"


@pytest.mark.parametrize("model", DEMO_MODELS)
def test_demo_model_artifacts(demo, model):
    res = demo / "results/demo"
    images = read_table(res / f"embeddings/{model}/images.arrow")
    texts = read_table(res / f"embeddings/{model}/texts.arrow")
    dim = images.schema.field("embedding").type.list_size
    assert images.schema.field("embedding").type == pa.list_(pa.float32(), dim)
    assert images.num_rows == texts.num_rows == DEMO_ROWS
    emb = np.asarray(images["embedding"].combine_chunks().flatten()).reshape(-1, dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    meta = read_metadata(res / f"embeddings/{model}/images.arrow")
    assert meta["model"] == model and meta["device"] == "cpu" and meta["precision"] == "fp32"
    assert {"torch", "open_clip_torch", "transformers"} <= set(meta["libraries"])

    sim = read_table(res / f"similarity/{model}.arrow")
    assert sim.num_rows == DEMO_ROWS
    assert sim.schema.field("scores").type == pa.list_(pa.float32(), DEMO_ROWS)

    hits = pl.read_ipc(res / f"hits/{model}.arrow")
    assert hits.height == DEMO_ROWS and hits["rank"].min() >= 1
    assert hits["rank"].max() <= DEMO_ROWS
    assert hits.schema["topk_image_ids"] == pl.Array(pl.Int64, 5)
    # The matched score in hits is the diagonal of the similarity matrix.
    matrix = np.asarray(sim["scores"].combine_chunks().flatten()).reshape(DEMO_ROWS, DEMO_ROWS)
    np.testing.assert_allclose(hits["score"].to_numpy(), np.diag(matrix), atol=1e-6)

    metrics = pl.read_ipc(res / f"metrics/{model}.arrow")
    assert metrics.height == 1 and metrics["n"][0] == DEMO_ROWS
    assert metrics["hits_at_k"][0] == int((hits["rank"] <= 5).sum())

    hist = pl.read_ipc(res / f"histograms/{model}.arrow")
    assert hist["count"].sum() == DEMO_ROWS
    assert pl.read_ipc(res / f"histograms/{model}.kde.arrow").height > 0

    queries = pl.read_ipc(res / f"queries/{model}.arrow")
    assert queries.height == 3 * 5
    assert queries.group_by("query").len()["len"].to_list() == [5, 5, 5]


class _Resources(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href", "srcset", "data") and v]


def test_report_is_self_contained(demo):
    page = (demo / "results/demo/report.html").read_text()
    parser = _Resources()
    parser.feed(page)
    assert parser.refs, "galleries should embed images"
    assert all(r.startswith(("data:", "#")) for r in parser.refs), parser.refs
    assert "<link" not in page and not re.search(r"@import|url\(\s*['\"]?http", page)
    assert "vegaEmbed" in page and page.count("<figure") == 3 * 5 * len(DEMO_MODELS)
    for model in DEMO_MODELS:
        assert model in page
    for name in ("similarity_histogram", "hits_at_k"):
        assert (demo / f"results/demo/figures/{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert b"<svg" in (demo / f"results/demo/figures/{name}.svg").read_bytes()[:500]


def test_every_rule_wrote_log_and_benchmark(demo):
    logs = {p.relative_to(demo / "logs").with_suffix("") for p in (demo / "logs").rglob("*.log")}
    marks = {
        p.relative_to(demo / "benchmarks").with_suffix("")
        for p in (demo / "benchmarks").rglob("*.tsv")
    }
    # download + 5 per model + report + 6 demo inputs (dataset, 3 open_clip, resnet, bert)
    assert logs == marks and len(logs) == 1 + 5 * len(DEMO_MODELS) + 1 + 6


def test_up_to_date_workflow_has_nothing_to_do(demo):
    done = snakemake(demo, *DEMO, "-n")
    assert "Nothing to be done" in done.stdout + done.stderr


def test_config_change_reruns_only_that_model(demo, tmp_path):
    cfg = yaml.safe_load((demo / "tests/demo/config.yaml").read_text())
    cfg["models"]["tiny-bert-resnet18"]["projection_seed"] = 1
    changed = tmp_path / "config.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    done = snakemake(demo, "--cores", "2", "--configfile", str(changed), "-n")
    out = done.stdout + done.stderr
    assert job_counts(out) == {
        "encode": 1,
        "similarity": 1,
        "hits": 1,
        "histogram": 1,
        "queries": 1,
        "report": 1,
        "all": 1,
    }
    assert "wildcards: dataset=demo, model=tiny-bert-resnet18" in out
    assert "model=tiny-rn" not in out


def test_forcerun_of_one_model_reexecutes_only_its_jobs(demo):
    res = demo / "results/demo"
    before = {p: p.stat().st_mtime_ns for p in res.rglob("*.arrow")}
    snakemake(demo, *DEMO, "--forcerun", "results/demo/embeddings/tiny-vit-32/images.arrow")
    changed = {
        p.relative_to(res).as_posix() for p, t in before.items() if p.stat().st_mtime_ns != t
    }
    assert changed == {
        "embeddings/tiny-vit-32/images.arrow",
        "embeddings/tiny-vit-32/texts.arrow",
        "embeddings/tiny-vit-32/queries.arrow",
        "similarity/tiny-vit-32.arrow",
        "hits/tiny-vit-32.arrow",
        "metrics/tiny-vit-32.arrow",
        "histograms/tiny-vit-32.arrow",
        "histograms/tiny-vit-32.kde.arrow",
        "queries/tiny-vit-32.arrow",
    }


def bad_input_config(root: Path, checkpoints, parquet: Path, **dataset) -> Path:
    from tests.conftest import open_clip_spec

    cfg = {
        "datasets": {"bad": {"source": {"parquet": str(parquet)}, **dataset}},
        "models": {"tiny": open_clip_spec(checkpoints)},
    }
    path = root / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def write_parquet(path: Path, blobs, texts, image_column="image") -> Path:
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table(
            {image_column: pa.array(blobs, pa.binary()), "text": pa.array(texts, pa.string())}
        ),
        path,
    )
    return path


def results_files(root: Path) -> list[str]:
    res = root / "results"
    return (
        sorted(p.relative_to(res).as_posix() for p in res.rglob("*") if p.is_file())
        if res.exists()
        else []
    )


@pytest.fixture
def good_blob():
    from PIL import Image

    from tests.conftest import png_bytes

    return png_bytes(Image.new("RGB", (32, 32), (200, 30, 30)), "JPEG")


@pytest.mark.parametrize("case", ["undecodable", "missing_column", "empty_caption", "sha256"])
def test_bad_input_fails_clearly_and_leaves_nothing(tmp_path, checkpoints, good_blob, case):
    root = workflow_copy(tmp_path / "wf")
    blobs, texts, extra = [good_blob] * 3, ["a", "b", "c"], {}
    if case == "undecodable":
        blobs = [good_blob, good_blob, b"definitely not an image"]
        expected = "row 2: image bytes are not a recognised image"
    elif case == "missing_column":
        extra = {"text_column": "caption"}
        expected = "text column 'caption' not found"
    elif case == "empty_caption":
        texts = ["a", "", "c"]
        expected = r"row ids \[1\]"
    else:
        extra = {"source": {"parquet": str(tmp_path / "d.parquet"), "sha256": "ab" * 32}}
        expected = f"expected {'ab' * 32}, got"
    parquet = write_parquet(tmp_path / "d.parquet", blobs, texts)
    cfg = bad_input_config(root, checkpoints, parquet, **extra)
    done = snakemake(root, "--cores", "1", "--configfile", str(cfg), check=False)
    assert done.returncode != 0
    assert re.search(expected, (root / "logs/bad/download.log").read_text())
    assert re.search(expected, done.stdout + done.stderr)
    assert results_files(root) == []


def test_image_broken_past_its_header_fails_encode_naming_the_row(tmp_path, checkpoints, good_blob):
    from PIL import Image

    from tests.conftest import png_bytes

    root = workflow_copy(tmp_path / "wf")
    noise = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    big = png_bytes(Image.fromarray(noise), "JPEG")
    truncated = big[: len(big) // 2]  # a complete JPEG header, then half of the scan data
    parquet = write_parquet(tmp_path / "d.parquet", [good_blob, truncated], ["a", "b"])
    cfg = bad_input_config(root, checkpoints, parquet)
    done = snakemake(root, "--cores", "1", "--configfile", str(cfg), check=False)
    assert done.returncode != 0
    assert "row 1: image bytes cannot be decoded" in (root / "logs/bad/encode/tiny.log").read_text()
    assert results_files(root) == ["bad/dataset.arrow"]  # complete; nothing partial after it


def test_unknown_model_kind_is_rejected_before_any_job(tmp_path, checkpoints, good_blob):
    root = workflow_copy(tmp_path / "wf")
    cfg_path = bad_input_config(
        root, checkpoints, write_parquet(tmp_path / "d.parquet", [good_blob], ["a"])
    )
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["models"]["tiny"]["kind"] = "sam"
    cfg_path.write_text(yaml.safe_dump(cfg))
    done = snakemake(root, "--cores", "1", "--configfile", str(cfg_path), check=False)
    assert done.returncode != 0
    assert "'sam' is not one of ['open_clip', 'bert_resnet']" in done.stdout + done.stderr
    assert results_files(root) == [] and not (root / "logs").exists()
