"""``on_bad_image: skip``: undecodable images are left out at download, named in the metadata, the
download log and the report; every later stage sees only the rows that decode."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipbench.arrow_io import read_metadata, read_table
from clipbench.report import skipped_rows_note
from tests.conftest import png_bytes
from tests.test_workflow import bad_input_config, write_parquet
from tests.workflow_runs import snakemake, workflow_copy


def test_skipped_rows_note():
    assert skipped_rows_note({"skipped_rows": []}) is None
    assert skipped_rows_note({}) is None  # artifacts written before the option existed
    meta = {"skipped_rows": [{"row": r, "reason": "x"} for r in (3, 8)]}
    assert skipped_rows_note(meta) == (
        "skipped 2 undecodable image(s) (on_bad_image: skip): row ids 3, 8"
    )
    many = skipped_rows_note({"skipped_rows": [{"row": r, "reason": "x"} for r in range(25)]})
    assert many.endswith(
        "row ids 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, "
        "17, 18, 19, … (5 more, listed below)"
    )


@pytest.mark.e2e
def test_skip_runs_through_the_report_without_the_bad_rows(tmp_path, checkpoints):
    root = workflow_copy(tmp_path / "wf")
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]
    good = [png_bytes(Image.new("RGB", (32, 32), c), "JPEG") for c in colours + [(90, 90, 90)]]
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    big = png_bytes(Image.fromarray(noise), "JPEG")
    truncated = big[: len(big) // 2]  # its header reads: only a full decode finds it
    blobs = good[:2] + [b"not an image"] + good[2:4] + [truncated] + good[4:]
    texts = [f"caption {i}" for i in range(len(blobs))]
    parquet = write_parquet(tmp_path / "d.parquet", blobs, texts)
    cfg = bad_input_config(root, checkpoints, parquet, on_bad_image="skip")
    # One dataset, one tiny model, the report only (no similarity matrix, no summary page).
    snakemake(root, "results/bad/report.html", "--cores", "2", "--configfile", str(cfg))

    images = read_table(root / "results/bad/dataset.arrow")
    assert images["id"].to_pylist() == list(range(6)) and images["image"].to_pylist() == good
    captions = read_table(root / "results/bad/captions.arrow")
    assert captions["text"].to_pylist() == [t for i, t in enumerate(texts) if i not in (2, 5)]
    meta = read_metadata(root / "results/bad/dataset.arrow")
    assert [s["row"] for s in meta["skipped_rows"]] == [2, 5]
    assert meta["skipped_rows"][0]["reason"] == "image bytes are not a recognised image format"
    assert "truncated" in meta["skipped_rows"][1]["reason"]
    assert (meta["source_rows"], meta["num_rows"]) == (8, 6)
    # Every later stage saw the six rows that decode.
    assert read_table(root / "results/bad/embeddings/tiny/images.arrow").num_rows == 6

    log = (root / "logs/bad/download.log").read_text()
    assert "skipped 2 source row(s)" in log and "row 2: image bytes are not a recognised" in log
    assert "row 5: image bytes cannot be decoded" in log
    page = (root / "results/bad/report.html").read_text()
    assert "skipped 2 undecodable image(s) (on_bad_image: skip): row ids 2, 5" in page
    assert "row 5: image bytes cannot be decoded" in page
