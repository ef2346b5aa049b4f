"""Results in other tools' shapes: CLIP_benchmark's JSON, the tidy table, clip-retrieval's
embedding layout; each read back and checked against the Arrow artifacts it came from."""

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipbench.arrow_io import embedding_matrix, read_table, write_table
from clipbench.embeddings import embedding_table, l2_normalize
from clipbench.exports import (
    clip_benchmark_result,
    peer_metric,
    write_clip_benchmark,
    write_clip_retrieval,
    write_tidy,
)
from clipbench.settings import BootstrapSettings
from clipbench.stages.scores import hits

SPEC = {"kind": "open_clip", "arch": "ViT-B-32", "pretrained": "openai"}


@pytest.fixture
def run(tmp_path):
    """A model's embeddings (12 images, 2 captions each) and its hits stage's artifacts."""
    rng = np.random.default_rng(0)
    image_emb = l2_normalize(rng.standard_normal((12, 8)).astype(np.float32))
    image_id = np.repeat(np.arange(12), 2)
    text_emb = l2_normalize(image_emb[image_id] + 0.8 * rng.standard_normal((24, 8)))
    meta = {"model": "clip-b32", "dataset": "set", "spec": SPEC, "precision_policy": "bf16"}
    paths = {name: str(tmp_path / f"{name}.arrow") for name in ("i", "t", "c", "m", "t2i", "i2t")}
    write_table(embedding_table(range(12), image_emb), paths["i"], meta)
    ids = pa.array(range(100, 124), pa.int64())
    texts = embedding_table(ids.to_pylist(), text_emb, image_id=pa.array(image_id, pa.int64()))
    write_table(texts, paths["t"], meta)
    captions = [f"caption {i}" for i in range(24)]
    write_table(pa.table({"id": ids, "image_id": image_id, "text": captions}), paths["c"], meta)
    hits(
        paths["i"],
        paths["t"],
        3,
        [1, 5],
        BootstrapSettings.parse({"resamples": 50}),
        paths["t2i"],
        paths["i2t"],
        paths["m"],
    )
    return paths


def test_clip_benchmark_json_has_its_shape_and_our_values(run, tmp_path):
    out = tmp_path / "r.json"
    write_clip_benchmark(run["m"], run["t"], str(out))
    result = json.loads(out.read_text())
    assert result == clip_benchmark_result(run["m"], run["t"])
    assert {k: result[k] for k in ("dataset", "model", "pretrained", "task")} == {
        "dataset": "set",
        "model": "ViT-B-32",
        "pretrained": "openai",
        "task": "zeroshot_retrieval",
    }
    metrics = read_table(run["m"]).to_pylist()
    value = {(r["direction"], r["metric"]): r for r in metrics}
    got = result["metrics"]
    # CLIP_benchmark's keys come first, as its eval writes them.
    assert list(got)[:4] == [
        "image_retrieval_recall@1",
        "image_retrieval_recall@5",
        "text_retrieval_recall@1",
        "text_retrieval_recall@5",
    ]
    assert got["image_retrieval_recall@5"] == value["text_to_image", "recall_at_5"]["value"]
    assert got["text_retrieval_recall@1"] == value["image_to_text", "recall_at_1"]["value"]
    row = value["image_to_text", "mrr"]
    assert got["text_retrieval_mrr_ci_low"] == row["ci_low"]
    assert got["text_retrieval_mrr_chance"] == row["chance"]
    assert got["image_retrieval_hits@3"] == value["text_to_image", "hits_at_k"]["value"]
    assert result["clipbench"]["n_queries"] == {"image_retrieval": 24, "text_retrieval": 12}
    assert result["clipbench"]["spec"] == SPEC and result["clipbench"]["precision"] == "bf16"


def test_peer_names_per_kind():
    assert peer_metric("text_to_image", "recall_at_10", 5) == "image_retrieval_recall@10"
    assert peer_metric("image_to_text", "hits_at_k", 5) == "text_retrieval_hits@5"
    from clipbench.kinds import parse_model

    checkpoint = parse_model({"kind": "open_clip", "arch": "RN50", "checkpoint": "w.pt"})
    assert checkpoint.clip_benchmark_names() == ("RN50", "w.pt")
    hf = parse_model({"kind": "transformers", "model": "org/m", "revision": "abc"})
    assert hf.clip_benchmark_names() == ("org/m", "abc")
    baseline = parse_model({"kind": "bert_resnet"})
    assert baseline.clip_benchmark_names() == ("bert-base-uncased+resnet50", "IMAGENET1K_V1")


def test_tidy_table_reads_back_with_polars(run, tmp_path):
    csv, parquet = tmp_path / "m.csv", tmp_path / "m.parquet"
    write_tidy([run["m"], run["m"]], str(csv), str(parquet))
    table = pl.read_csv(csv)
    assert table.equals(pl.read_parquet(parquet), null_equal=True)
    metrics = read_table(run["m"])
    assert table.height == 2 * metrics.num_rows
    assert set(table["dataset"]) == {"set"} and set(table["k"]) == {3}
    assert set(table["level"]) == {0.95}
    mrr = table.filter((pl.col("direction") == "text_to_image") & (pl.col("metric") == "mrr"))
    source = [r for r in metrics.to_pylist() if r["metric"] == "mrr"][0]
    assert mrr["value"][0] == pytest.approx(source["value"], rel=1e-15)
    assert mrr["ci_low"][0] <= mrr["value"][0] <= mrr["ci_high"][0]


def test_clip_retrieval_layout_matches_the_embeddings(run, tmp_path):
    out = tmp_path / "cr"
    paths = [str(out / p) for p in ("img_emb/img_emb_0.npy", "text_emb/text_emb_0.npy")]
    meta_path = str(out / "metadata/metadata_0.parquet")
    write_clip_retrieval(run["i"], run["t"], run["c"], *paths, meta_path)
    img, text = np.load(paths[0]), np.load(paths[1])
    metadata = pq.read_table(meta_path).to_pylist()
    assert img.dtype == text.dtype == np.float16 and img.shape == text.shape == (24, 8)
    images = embedding_matrix(read_table(run["i"])["embedding"])
    texts = embedding_matrix(read_table(run["t"])["embedding"])
    # One row per image–caption pair: row i is caption i and its own image.
    assert [m["text_id"] for m in metadata] == list(range(100, 124))
    assert [m["caption"] for m in metadata][:2] == ["caption 0", "caption 1"]
    np.testing.assert_allclose(img, images[[m["image_id"] for m in metadata]], atol=1e-3)
    np.testing.assert_allclose(text, texts, atol=1e-3)
    # An inner-product search over the exported vectors finds what the hits stage found.
    t2i = read_table(run["t2i"])
    unique = img[::2].astype(np.float32)  # each image once, in id order
    top = np.argsort(-(text.astype(np.float32) @ unique.T), axis=1)[:, 0]
    agree = np.mean(top == [ids[0] for ids in t2i["topk_image_ids"].to_pylist()])
    assert agree > 0.9  # float16 rounding may swap near-ties


def test_faiss_searches_the_clip_retrieval_layout(run, tmp_path):
    """As clip-retrieval's `index` (autofaiss) and `back` use it: an inner-product index over
    img_emb, queried with text_emb, its hits read through metadata."""
    faiss = pytest.importorskip("faiss", reason="faiss-cpu is in requirements-dev.txt")
    out = tmp_path / "cr"
    paths = [str(out / p) for p in ("img_emb/img_emb_0.npy", "text_emb/text_emb_0.npy")]
    meta_path = str(out / "metadata/metadata_0.parquet")
    write_clip_retrieval(run["i"], run["t"], run["c"], *paths, meta_path)
    img = np.load(paths[0]).astype(np.float32)
    index = faiss.IndexFlatIP(img.shape[1])
    index.add(img)
    scores, rows = index.search(np.load(paths[1]).astype(np.float32), 1)
    image_of_row = [m["image_id"] for m in pq.read_table(meta_path).to_pylist()]
    found = [image_of_row[r] for r in rows[:, 0]]
    expected = [ids[0] for ids in read_table(run["t2i"])["topk_image_ids"].to_pylist()]
    assert np.mean(np.array(found) == np.array(expected)) > 0.9  # float16 may swap near-ties
    best = [s[0] for s in read_table(run["t2i"])["topk_scores"].to_pylist()]
    assert np.allclose(scores[:, 0], best, atol=2e-3)
