"""End to end: Snakemake runs the workflow in a temporary copy of the repository."""

from __future__ import annotations

import html.parser
import json
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import torch
import yaml

from clipbench.arrow_io import read_metadata, read_table
from clipbench.cpus import cuda_visible
from clipbench.precision import resolve_precision
from tests.workflow_runs import DEMO, job_counts, snakemake, workflow_copy

pytestmark = pytest.mark.e2e
DEMO_MODELS = [
    "tiny-rn",
    "tiny-vit-32",
    "tiny-bert-resnet18",
    "tiny-bert-resnet18-ridge",
    "hf-clip",
    "hf-siglip",
]
SHARING = DEMO_MODELS[:4]  # the transformers models decode their own images
# dataset → (images, captions): demo-multi has 1–3 captions per image.
DEMO_SIZES = {"demo": (48, 48), "demo-multi": (24, 48)}


def test_dry_run_of_the_default_config_lists_the_whole_dag(tmp_path):
    root = workflow_copy(tmp_path)
    done = snakemake(root, "-n", "--cores", "4", "--resources", "gpu=1")
    per_model = {"encode": 5, "similarity": 5, "hits": 5, "histogram": 5, "queries": 5}
    assert job_counts(done.stdout + done.stderr) == {
        "download": 1,
        "pixels": 2,  # decoded once for the three CLIP models, once for the two ResNet baselines
        **per_model,
        "compare": 1,
        "references": 1,
        "report": 1,
        "figures": 1,
        "explorer": 1,
        "summary": 1,
        "all": 1,
    }


@pytest.mark.parametrize("n_cpus", [1, 2])
def test_cpu_heavy_jobs_claim_no_more_cores_than_the_cpus(tmp_path, n_cpus):
    """`--cores 4` on fewer CPUs: pixels, encode and explorer claim the CPUs they can use, so
    one-thread stages of an encoded model fit beside the next encode job; the rest claim 1."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < n_cpus:
        pytest.skip(f"{len(cpus)} CPU(s) here")
    root = workflow_copy(tmp_path)
    done = snakemake(root, "-n", "--cores", "4", "--resources", "gpu=1", cpus=set(cpus[:n_cpus]))
    jobs = re.split(r"\n(?:local)?rule ", done.stdout + done.stderr)
    claims = {}
    for job in jobs[1:]:
        found = re.search(r"^\s+threads: (\d+)$", job, re.M)
        claims.setdefault(job.split(":", 1)[0], set()).add(int(found[1]) if found else 1)
    heavy = {"pixels", "encode", "explorer"}
    assert {rule: claims[rule] for rule in heavy} == {rule: {n_cpus} for rule in heavy}
    assert all(claim == {1} for rule, claim in claims.items() if rule not in heavy)
    # Without a GPU the encode jobs hold no `gpu`: one loads while another computes.
    gpus = {re.search(r"gpu=(\d)", job)[1] for job in jobs if job.startswith("encode:")}
    assert gpus == ({"1"} if cuda_visible() else {"0"})


def test_demo_dataset_artifacts(demo):
    for dataset, (n_images, n_captions) in DEMO_SIZES.items():
        path = demo / f"results/{dataset}/dataset.arrow"
        table = read_table(path)
        assert table.schema.remove_metadata() == pa.schema(
            [("id", pa.int64()), ("image", pa.binary()), ("text", pa.string())]
        )
        assert table.num_rows == n_images
        captions = read_table(demo / f"results/{dataset}/captions.arrow")
        assert captions.schema.names == ["id", "image_id", "text"]
        assert captions.num_rows == n_captions
        meta = read_metadata(path)
        assert meta["num_rows"] == n_images and meta["num_captions"] == n_captions
        assert len(meta["sha256"]) == 64
        assert meta["source"] == f"results/demo/inputs/{dataset}.parquet"


def matrix(column, rows: int) -> np.ndarray:
    return np.asarray(column.combine_chunks().flatten()).reshape(rows, -1)


@pytest.mark.parametrize("dataset", list(DEMO_SIZES))
@pytest.mark.parametrize("model", DEMO_MODELS)
def test_demo_model_artifacts(demo, dataset, model):
    n_images, n_captions = DEMO_SIZES[dataset]
    res = demo / f"results/{dataset}"
    images = read_table(res / f"embeddings/{model}/images.arrow")
    texts = read_table(res / f"embeddings/{model}/texts.arrow")
    dim = images.schema.field("embedding").type.list_size
    assert images.schema.field("embedding").type == pa.list_(pa.float32(), dim)
    assert (images.num_rows, texts.num_rows) == (n_images, n_captions)
    np.testing.assert_allclose(
        np.linalg.norm(matrix(images["embedding"], n_images), axis=1), 1, atol=1e-5
    )
    meta = read_metadata(res / f"embeddings/{model}/images.arrow")
    # The demo runs the default precision, auto: what it resolves to on this CPU, within the
    # stated bound of strict float32.
    policy = resolve_precision("auto", torch.device("cpu"))
    assert meta["model"] == model and meta["device"] == "cpu"
    assert meta["precision"] == policy.name and meta["precision_policy"]["requested"] == "auto"
    assert {"torch", "open_clip_torch", "transformers"} <= set(meta["libraries"])
    assert (meta["text_head"] is not None) == model.endswith("ridge")
    assert meta["deviation_from_strict_fp32"]["max_cosine_distance"] <= policy.deviation_bound

    sim = read_table(res / f"similarity/{model}.arrow")
    assert sim.num_rows == n_captions
    assert sim.schema.field("scores").type == pa.list_(pa.float32(), n_images)

    t2i = pl.read_ipc(res / f"hits/{model}.arrow")
    assert t2i.height == n_captions and t2i["rank"].min() >= 1
    assert t2i["rank"].max() <= n_images
    assert t2i.schema["topk_image_ids"] == pl.Array(pl.Int64, 5)
    # The matched score in hits is the caption's own-image entry of the similarity matrix.
    scores = matrix(sim["scores"], n_captions)
    own = scores[np.arange(n_captions), t2i["image_id"].to_numpy()]
    np.testing.assert_allclose(t2i["score"].to_numpy(), own, atol=1e-6)

    i2t = pl.read_ipc(res / f"hits/{model}.i2t.arrow")
    assert i2t.height == n_images and i2t["n_captions"].sum() == n_captions
    assert i2t["rank"].max() <= n_captions - i2t["n_captions"].min() + 1
    assert i2t.schema["topk_text_ids"] == pl.Array(pl.Int64, 5)

    metrics = pl.read_ipc(res / f"metrics/{model}.arrow")
    assert metrics.height == 2 * 10  # 10 metrics per direction
    row = metrics.filter(pl.col("direction") == "text_to_image", pl.col("metric") == "hits_at_k")
    assert row["value"][0] == int((t2i["rank"] <= 5).sum())
    assert row["chance"][0] == pytest.approx(n_captions * 5 / n_images)
    assert (metrics["ci_low"] <= metrics["value"]).all()
    assert (metrics["value"] <= metrics["ci_high"]).all()

    hist = pl.read_ipc(res / f"histograms/{model}.arrow")
    counts = dict(hist.group_by("pairs").agg(pl.col("count").sum()).iter_rows())
    assert counts == {"matched": n_captions, "non-matched": n_captions * (n_images - 1)}
    assert pl.read_ipc(res / f"histograms/{model}.kde.arrow")["pairs"].n_unique() == 2
    ranks = pl.read_ipc(res / f"histograms/{model}.ranks.arrow")
    assert ranks.group_by("direction").agg(pl.col("cdf").max())["cdf"].to_list() == [1.0, 1.0]

    queries = pl.read_ipc(res / f"queries/{model}.arrow")
    assert queries.height == 3 * 5
    assert queries.group_by("query").len()["len"].to_list() == [5, 5, 5]


def test_demo_comparisons_and_robustness(demo):
    comparisons = pl.read_ipc(demo / "results/demo/comparisons.arrow")
    pairs = len(DEMO_MODELS) * (len(DEMO_MODELS) - 1) // 2
    assert comparisons.height == 2 * pairs * 10
    assert (comparisons["ci_low"] <= comparisons["ci_high"]).all()
    for model in DEMO_MODELS:
        rob = pl.read_ipc(demo / f"results/demo/robustness/{model}.arrow")
        assert set(rob["perturbation"]) == {"image_noise", "caption_typos"}
        assert sorted(set(rob["level"])) == [0.0, 0.1, 0.3]
        # Level 0 is the clean benchmark: it equals the hits stage's numbers.
        clean = rob.filter(pl.col("level") == 0, pl.col("metric") == "recall_at_5")
        metrics = pl.read_ipc(demo / f"results/demo/metrics/{model}.arrow").filter(
            pl.col("metric") == "recall_at_5"
        )
        for direction in ("text_to_image", "image_to_text"):
            want = metrics.filter(pl.col("direction") == direction)["value"][0]
            assert (clean.filter(pl.col("direction") == direction)["value"] == want).all()
    # Robustness runs only where configured.
    assert not (demo / "results/demo-multi/robustness").exists()


def test_demo_comparisons_are_holm_adjusted_as_one_family(demo):
    comparisons = pl.read_ipc(demo / "results/demo/comparisons.arrow")
    family = comparisons.filter(pl.col("in_family"))
    pairs = len(DEMO_MODELS) * (len(DEMO_MODELS) - 1) // 2
    assert family.height == 2 * pairs * 4  # R@1, R@5, R@10 and MRR in both directions
    assert set(family["metric"]) == {"recall_at_1", "recall_at_5", "recall_at_10", "mrr"}
    assert (family["p_holm"] >= family["p_value"]).all()
    assert (family["significant"] == (family["p_holm"] < 0.05)).all()
    assert (
        read_metadata(demo / "results/demo/comparisons.arrow")["family"]["tests"] == family.height
    )
    page = (demo / "results/demo/report.html").read_text()
    assert f"{family.height} differences shown are tested as one family" in page


def test_ties_are_counted_and_shown(demo):
    """Identical demo captions tie in image → text: the hits tables count them per query, the
    metrics say how many queries had ties, and the report says so."""
    hits = pl.read_ipc(demo / "results/demo/hits/tiny-rn.i2t.arrow")
    assert (hits["ties"] > 0).any() and (hits["tied_positives"] >= 1).all()
    assert (hits["rank"] >= 1 + hits["ties"]).all()
    metrics = pl.read_ipc(demo / "results/demo/metrics/tiny-rn.arrow")
    i2t = metrics.filter(pl.col("direction") == "image_to_text")
    assert (i2t["queries_with_ties"] == int((hits["ties"] > 0).sum())).all()
    assert set(metrics["ties"]) == {"expected"}
    page = (demo / "results/demo/report.html").read_text()
    assert f"tiny-rn {int((hits['ties'] > 0).sum())} of 48" in page
    assert "McSherry" in page


def test_published_figures_are_checked_and_the_wrong_one_flagged(demo):
    """tests/demo/references.csv holds one right figure and one deliberately wrong one."""
    checks = pl.read_ipc(demo / "results/demo/references.arrow")
    assert checks.height == 2 and set(checks["model"]) == {"tiny-vit-32"}
    by_metric = {r["metric"]: r for r in checks.iter_rows(named=True)}
    assert by_metric["recall_at_10"]["reproduced"]
    wrong = by_metric["recall_at_1"]
    assert not wrong["reproduced"] and wrong["published"] == 0.9
    assert abs(wrong["difference"]) > wrong["tolerance"] >= 0.01
    page = (demo / "results/demo/report.html").read_text()
    assert "1 of 2" in page and page.count('<tr class="off"') == 1
    assert pl.read_ipc(demo / "results/demo-multi/references.arrow").height == 0
    summary = pl.read_ipc(demo / "results/references.arrow")
    assert summary.height == 2 and set(summary["dataset"]) == {"demo"}
    assert read_metadata(demo / "results/references.arrow")["reproduced"] == 1
    assert "<b>1 of 2</b>" in (demo / "results/report.html").read_text()


class _Resources(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        self.refs += [(tag, v) for k, v in attrs if k in ("src", "href", "srcset", "data") and v]


def external_resources(page: str) -> list[str]:
    """What a page would load from outside itself (navigation links are not loads)."""
    parser = _Resources()
    parser.feed(page)
    loads = [v for tag, v in parser.refs if tag != "a" and not v.startswith(("data:", "#"))]
    if "<link" in page or re.search(r"@import|url\(\s*['\"]?http", page):
        loads.append("stylesheet")
    return loads


def test_reports_are_self_contained(demo):
    for dataset in DEMO_SIZES:
        page = (demo / f"results/{dataset}/report.html").read_text()
        assert external_resources(page) == []
        assert "vegaEmbed" in page and page.count("<figure") == 3 * 5 * len(DEMO_MODELS)
        for model in DEMO_MODELS:
            assert model in page
        # What ran, and how far it strays from strict float32, for every model.
        ran = resolve_precision("auto", torch.device("cpu")).name
        assert page.count(f"ran {ran}") == len(DEMO_MODELS)
        assert page.count("(precision: auto;") == len(DEMO_MODELS)
        assert page.count("max cosine distance from strict float32") == len(DEMO_MODELS)
        figures = [
            "hits_at_k",
            "recall",
            "similarity_histogram",
            "similarity_separation",
            "rank_cdf",
        ] + (["robustness"] if dataset == "demo" else [])
        for name in figures:
            fig = demo / f"results/{dataset}/figures/{name}"
            assert fig.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
            assert b"<svg" in fig.with_suffix(".svg").read_bytes()[:500]
        assert ('id="robustness"' in page) == (dataset == "demo")
    summary = (demo / "results/report.html").read_text()
    assert external_resources(summary) == []
    assert 'href="demo/report.html"' in summary and 'href="demo-multi/report.html"' in summary
    assert (demo / "results/figures/datasets_overview.png").read_bytes()[:4] == b"\x89PNG"


def test_exports_other_tools_read(demo):
    tidy = pl.read_csv(demo / "results/metrics.csv")
    assert tidy.equals(pl.read_parquet(demo / "results/metrics.parquet"), null_equal=True)
    rows = 0
    for dataset, (_, n_captions) in DEMO_SIZES.items():
        for model in DEMO_MODELS:
            metrics = read_table(demo / f"results/{dataset}/metrics/{model}.arrow").to_pylist()
            rows += len(metrics)
            result = json.loads(
                (demo / f"results/{dataset}/clip_benchmark/{model}.json").read_text()
            )
            assert result["task"] == "zeroshot_retrieval" and result["dataset"] == dataset
            value = {(r["direction"], r["metric"]): r["value"] for r in metrics}
            for k in (1, 5, 10):
                got = result["metrics"]
                assert (
                    got[f"image_retrieval_recall@{k}"] == value["text_to_image", f"recall_at_{k}"]
                )
                assert got[f"text_retrieval_recall@{k}"] == value["image_to_text", f"recall_at_{k}"]
            mine = tidy.filter((pl.col("dataset") == dataset) & (pl.col("model") == model))
            assert sorted(mine["value"].to_list()) == sorted(r["value"] for r in metrics)
            # clip-retrieval's layout: one float16 row per image–caption pair.
            out = demo / f"results/{dataset}/clip_retrieval/{model}"
            img, text = (
                np.load(out / "img_emb/img_emb_0.npy"),
                np.load(out / "text_emb/text_emb_0.npy"),
            )
            assert img.dtype == np.float16 and img.shape[0] == text.shape[0] == n_captions
            texts = read_table(demo / f"results/{dataset}/embeddings/{model}/texts.arrow")
            stored = np.stack(texts["embedding"].to_numpy(zero_copy_only=False))
            np.testing.assert_allclose(text, stored, atol=1e-3)
            assert pl.read_parquet(out / "metadata/metadata_0.parquet").height == n_captions
    assert tidy.height == rows


def test_snakemake_report_holds_the_results(demo, tmp_path):
    """`snakemake --report report.zip`: the pages, figures and metrics table marked report()."""
    import hashlib
    import zipfile

    out = tmp_path / "report.zip"
    snakemake(demo, *DEMO, "--report", str(out))
    archive = zipfile.ZipFile(out)
    held = {
        hashlib.sha256(archive.read(name)).hexdigest()
        for name in archive.namelist()
        if name.startswith("report/data/raw/")
    }
    expected = [
        demo / "results/report.html",
        demo / "results/metrics.csv",
        demo / "results/figures/datasets_overview.png",
        demo / "results/demo/figures/robustness.png",
    ]
    for dataset in DEMO_SIZES:
        expected += [demo / f"results/{dataset}/{page}.html" for page in ("report", "explorer")]
        expected += sorted((demo / f"results/{dataset}/figures").glob("*.png"))
    # Exactly these: no SVG twins, no intermediate artifacts.
    assert held == {hashlib.sha256(p.read_bytes()).hexdigest() for p in expected}
    page = archive.read("report/report.html").decode()
    assert "Text-to-image and image-to-text retrieval" in page  # report/workflow.rst
    assert "self-contained report of dataset" in page  # a caption, per dataset


def test_images_decoded_once_per_dataset_and_view(demo):
    for dataset in DEMO_SIZES:
        for model in DEMO_MODELS:
            meta = read_metadata(demo / f"results/{dataset}/embeddings/{model}/images.arrow")
            assert meta["shared_pixels"] is (model in SHARING), (dataset, model)
        views = sorted(p.stem for p in (demo / f"results/{dataset}/pixels").glob("*.arrow"))
        assert views == ["imagenet-crop224", "open_clip-64px-bicubic-shortest"]
    assert len(list((demo / "logs").rglob("pixels/*.log"))) == 2 * len(DEMO_SIZES)


def test_every_rule_wrote_log_and_benchmark(demo):
    logs = {p.relative_to(demo / "logs").with_suffix("") for p in (demo / "logs").rglob("*.log")}
    marks = {
        p.relative_to(demo / "benchmarks").with_suffix("")
        for p in (demo / "benchmarks").rglob("*.tsv")
    }
    # download, pixels for 2 views (64² CLIP, 224² ResNet), per-model jobs (the clip-retrieval
    # export among them), compare, references, report, figures, explorer
    per_dataset = 1 + 2 + 6 * len(DEMO_MODELS) + 5
    robustness = len(DEMO_MODELS) + 1  # demo only: per model + figures
    demo_inputs = 8  # 2 parquets, 2 open_clip, resnet18, bert, 2 transformers
    assert logs == marks
    assert len(logs) == 2 * per_dataset + robustness + 1 + demo_inputs


def test_up_to_date_workflow_has_nothing_to_do(demo):
    done = snakemake(demo, *DEMO, "-n")
    assert "Nothing to be done" in done.stdout + done.stderr


def test_config_change_reruns_only_that_model(demo, tmp_path):
    cfg = yaml.safe_load((demo / "tests/demo/config.yaml").read_text())
    cfg["models"]["tiny-bert-resnet18"]["projection_seed"] = 1
    changed = tmp_path / "config.yaml"
    changed.write_text(yaml.safe_dump(cfg))  # also reorders keys: that alone reruns nothing
    done = snakemake(demo, "--cores", "2", "--configfile", str(changed), "-n")
    out = done.stdout + done.stderr
    per_model = {
        "encode": 2,
        "similarity": 2,
        "hits": 2,
        "histogram": 2,
        "queries": 2,
        "clip_retrieval": 2,
    }
    # …plus what aggregates over models: comparisons and reports.
    assert job_counts(out) == {
        **per_model,
        "robustness": 1,
        "robustness_figures": 1,
        "figures": 2,
        "compare": 2,
        "references": 2,
        "report": 2,
        "explorer": 2,
        "summary": 1,
        "all": 1,
    }
    assert "model=tiny-bert-resnet18\n" in out
    assert "model=tiny-rn" not in out and "model=tiny-bert-resnet18-ridge" not in out


def test_forcerun_of_one_model_reexecutes_only_its_jobs(demo):
    res = demo / "results/demo"
    before = {p: p.stat().st_mtime_ns for p in res.rglob("*.arrow")}
    done = snakemake(demo, *DEMO, "--forcerun", "results/demo/embeddings/tiny-vit-32/images.arrow")
    # The encode job's progress reaches the terminal running Snakemake, named after its log.
    shown = done.stdout + done.stderr
    assert "[demo/encode/tiny-vit-32] images: 100% (48/48)" in shown
    assert "[demo/encode/tiny-vit-32] texts: 100%" in shown
    changed = {
        p.relative_to(res).as_posix() for p, t in before.items() if p.stat().st_mtime_ns != t
    }
    assert changed == {
        "embeddings/tiny-vit-32/images.arrow",
        "embeddings/tiny-vit-32/texts.arrow",
        "embeddings/tiny-vit-32/queries.arrow",
        "similarity/tiny-vit-32.arrow",
        "hits/tiny-vit-32.arrow",
        "hits/tiny-vit-32.i2t.arrow",
        "metrics/tiny-vit-32.arrow",
        "histograms/tiny-vit-32.arrow",
        "histograms/tiny-vit-32.kde.arrow",
        "histograms/tiny-vit-32.ranks.arrow",
        "queries/tiny-vit-32.arrow",
        "robustness/tiny-vit-32.arrow",
        "comparisons.arrow",
        "references.arrow",
    }  # the aggregates over this dataset's models


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


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size and holds no pixel data: PIL's decompression-bomb check
    reads only the header, so a 20000² "image" costs a few bytes here."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


DOWNLOAD_CASES = [
    "undecodable",
    "missing_text_column",
    "missing_image_column",
    "empty_caption",
    "null_caption",
    "zero_rows",
    "decompression_bomb",
    "truncated_parquet",
    "not_parquet",
    "sha256",
]


@pytest.mark.parametrize("case", DOWNLOAD_CASES)
def test_bad_input_fails_clearly_and_leaves_nothing(tmp_path, checkpoints, good_blob, case):
    root = workflow_copy(tmp_path / "wf")
    blobs, texts, extra = [good_blob] * 3, ["a", "b", "c"], {}
    parquet = tmp_path / "d.parquet"
    if case == "undecodable":
        blobs = [good_blob, good_blob, b"definitely not an image"]
        expected = "row 2: image bytes are not a recognised image"
    elif case == "missing_text_column":
        extra = {"text_column": "caption"}
        expected = "text column 'caption' not found.*Set `text_column`"
    elif case == "missing_image_column":
        extra = {"image_column": "picture"}
        expected = "image column 'picture' not found.*Set `image_column`"
    elif case == "empty_caption":
        texts = ["a", "", "c"]
        expected = r"row ids \[1\]"
    elif case == "null_caption":
        texts = ["a", "b", None]
        expected = r"row ids \[2\]"
    elif case == "zero_rows":
        blobs, texts = [], []
        expected = "the dataset has zero rows; check that the source file holds rows"
    elif case == "decompression_bomb":
        blobs = [good_blob, png_header(20_000, 20_000), good_blob]
        expected = "row 1: image exceeds PIL's decompression-bomb pixel limit"
    elif case == "sha256":
        extra = {"source": {"parquet": str(parquet), "sha256": "ab" * 32}}
        expected = f"expected {'ab' * 32}, got"
    else:
        expected = "not a readable parquet file"
    write_parquet(parquet, blobs, texts)
    if case == "truncated_parquet":
        parquet.write_bytes(parquet.read_bytes()[:-100])
    elif case == "not_parquet":
        parquet.write_text("image,text\nx.png,a caption\n")
    cfg = bad_input_config(root, checkpoints, parquet, **extra)
    done = snakemake(root, "--cores", "1", "--configfile", str(cfg), check=False)
    assert done.returncode != 0
    assert re.search(expected, (root / "logs/bad/download.log").read_text())
    assert re.search(expected, done.stdout + done.stderr)
    assert results_files(root) == []


def model_case(checkpoints, case: str) -> tuple[dict, dict, str, str, str]:
    """A model or setting that only a job can find wrong: (model spec, config changes, the
    failing job's log, the folder of its outputs under results/bad, the message)."""
    from tests.conftest import open_clip_spec

    spec = open_clip_spec(checkpoints, "tiny-rn")
    pinned_rn50 = {"kind": "open_clip", "arch": "RN50", "pretrained": "openai"}
    pinned_rn50["revision"] = "ec3d92cf63a5f9d591f0d611b736895966c73076"
    return {
        "checkpoint_mismatch": (
            spec | {"checkpoint": str(checkpoints["tiny-vit-16"])},
            {},
            "encode/tiny.log",
            "embeddings",
            "does not match architecture 'tiny-rn'",
        ),
        "unknown_arch": (
            {"kind": "open_clip", "arch": "ViT-Q-99", "pretrained": "openai"},
            {},
            "encode/tiny.log",  # no shared pixels for an arch open_clip does not know
            "embeddings",
            "unknown open_clip architecture 'ViT-Q-99'",
        ),
        "unknown_torchvision_arch": (
            {
                "kind": "bert_resnet",
                "text_model_dir": str(checkpoints["bert"]),
                "image_arch": "resnet999",
            },
            {},
            "pixels/*.log",
            "pixels",
            "unknown torchvision image_arch 'resnet999'",
        ),
        "hub_offline": (
            pinned_rn50,
            {},
            "encode/tiny.log",
            "embeddings",
            "HF_HUB_OFFLINE=1 with a populated",
        ),
        "top_k_too_large": (
            spec,
            {"retrieval": {"top_k": 4}, "queries": {"top_k": 1, "texts": ["a red circle"]}},
            "hits/tiny.log",
            "hits",
            "set retrieval.top_k to at most 3",
        ),
        "query_top_k_too_large": (
            spec,
            {"retrieval": {"top_k": 1}, "queries": {"top_k": 4, "texts": ["a red circle"]}},
            "queries/tiny.log",
            "queries",
            "set queries.top_k to at most 3",
        ),
    }[case]


@pytest.mark.parametrize(
    "case",
    [
        "checkpoint_mismatch",
        "unknown_arch",
        "unknown_torchvision_arch",
        "hub_offline",
        "top_k_too_large",
        "query_top_k_too_large",
    ],
)
def test_bad_model_or_setting_fails_its_job_clearly_and_leaves_nothing_partial(
    tmp_path, checkpoints, good_blob, case
):
    root = workflow_copy(tmp_path / "wf")
    parquet = write_parquet(tmp_path / "d.parquet", [good_blob] * 3, ["a", "b", "c"])
    cfg_path = bad_input_config(root, checkpoints, parquet)
    cfg = yaml.safe_load(cfg_path.read_text())
    spec, changes, log, outputs, expected = model_case(checkpoints, case)
    cfg["models"]["tiny"] = spec
    cfg.update(changes)
    cfg_path.write_text(yaml.safe_dump(cfg))
    done = snakemake(root, "--cores", "1", "--configfile", str(cfg_path), check=False)
    assert done.returncode != 0
    (log_file,) = (root / "logs/bad").glob(log)
    assert expected in log_file.read_text()
    assert expected in done.stdout + done.stderr
    # The failing job left nothing, not even a temporary file; what exists are the complete
    # artifacts of the jobs before it.
    files = results_files(root)
    assert not [f for f in files if f.startswith(f"bad/{outputs}/") or "/." in f]
    assert {"bad/dataset.arrow", "bad/captions.arrow"} <= set(files)
    assert "bad/report.html" not in files


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
    # Images are decoded once per dataset and view, by the pixels job: its log names the row.
    (log,) = (root / "logs/bad/pixels").glob("*.log")
    assert "row 1: image bytes cannot be decoded" in log.read_text()
    # Complete download artifacts; nothing partial after them.
    assert results_files(root) == ["bad/captions.arrow", "bad/dataset.arrow"]


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
    assert (
        "'sam' is not one of ['open_clip', 'bert_resnet', 'transformers']"
        in done.stdout + done.stderr
    )
    assert results_files(root) == [] and not (root / "logs").exists()


def test_similarity_matrix_is_streamed_and_skipped_above_the_threshold(tmp_path):
    from clipbench.arrow_io import write_table
    from clipbench.embeddings import embedding_table, l2_normalize
    from clipbench.stages.scores import similarity

    rng = np.random.default_rng(0)
    images = l2_normalize(rng.standard_normal((7, 4)))
    texts = l2_normalize(rng.standard_normal((9, 4)))
    meta = {"model": "m", "dataset": "d"}
    write_table(embedding_table(range(7), images), tmp_path / "i.arrow", meta)
    owners = pa.array([0, 1, 2, 3, 4, 5, 6, 0, 1], pa.int64())
    write_table(embedding_table(range(9), texts, image_id=owners), tmp_path / "t.arrow", meta)
    similarity(
        tmp_path / "i.arrow", tmp_path / "t.arrow", tmp_path / "s.arrow", max_rows=9, tile_scores=14
    )
    table = read_table(tmp_path / "s.arrow")
    np.testing.assert_allclose(matrix(table["scores"], 9), texts @ images.T, atol=1e-6)
    assert table["image_id"].to_pylist() == owners.to_pylist()
    similarity(tmp_path / "i.arrow", tmp_path / "t.arrow", tmp_path / "s.arrow", max_rows=8)
    assert read_table(tmp_path / "s.arrow").num_rows == 0
    assert read_metadata(tmp_path / "s.arrow")["omitted"] is True
