"""Dataset sources in the exact layouts the field's test sets are published in: the Hugging
Face parquet conversion of nlphuji's Flickr30k/COCO test sets (a list of captions per image)
and CLIP_benchmark's WebDataset shards, in a Hugging Face cache as the hub client leaves it,
read offline through the same hub calls as online."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipbench.dataset import load_dataset
from clipbench.errors import InputError
from clipbench.presets import expand_presets, presets
from clipbench.webdataset import expand_braces, sample_key, shard_table
from tests.conftest import hf_cache_repo, offline_python, png_bytes

WDS_FLICKR = "f8af3ceee1b944bf761340682621dfafd23974d2"
COCO_PARQUET = "fb42856fbf2ecad4d1382679f0abb33cab9fc952"
FLICKR_PARQUET = "667c02f0000000000000000000000000deadbeef"  # stands in for the branch's commit


def jpeg(i: int) -> bytes:
    return png_bytes(Image.new("RGB", (8 + i % 3, 8), (i * 40 % 256, 90, 160)), "JPEG")


def captions_of(i: int, n: int) -> list[str]:
    return [f"caption {c} of image {i}" for c in range(n)]


def nlphuji_parquet(rows: int, captions_per_image, start: int = 0) -> bytes:
    """The columns of the parquet conversion of nlphuji's retrieval test sets: an HF Image
    struct, the list of captions, and the Karpathy split's bookkeeping columns."""
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    ids = range(start, start + rows)
    table = pa.table(
        {
            "image": pa.array([{"bytes": jpeg(i), "path": f"{i}.jpg"} for i in ids], image_type),
            "caption": [captions_of(i, captions_per_image(i)) for i in ids],
            "sentids": [[str(i * 10 + c) for c in range(captions_per_image(i))] for i in ids],
            "split": ["test"] * rows,
            "img_id": [str(i) for i in ids],
            "filename": [f"{i}.jpg" for i in ids],
        }
    )
    features = {
        "image": {"_type": "Image"},
        "caption": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"},
    }
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    buffer = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buffer)
    return buffer.getvalue()


def wds_shard(indices, captions_per_image) -> bytes:
    """A CLIP_benchmark retrieval shard: per sample s%07d.jpg and s%07d.txt, the captions
    joined by newlines (newlines inside a caption written as a literal \\n)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i in indices:
            caps = captions_of(i, captions_per_image(i))
            for ext, data in (
                ("jpg", jpeg(i)),
                ("txt", "\n".join(c.replace("\n", r"\n") for c in caps).encode()),
            ):
                info = tarfile.TarInfo(f"s{i:07d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def coco_like(i: int) -> int:
    return 5 + (i % 3 == 0) + (i % 7 == 0)  # five to seven captions per image


@pytest.fixture
def published_layouts(tmp_path) -> Path:
    """The four preset repos, tiny, in one HF cache."""
    cache = tmp_path / "hub"
    hf_cache_repo(
        cache,
        "nlphuji/flickr_1k_test_image_text_retrieval",
        FLICKR_PARQUET,
        {"TEST/test/0000.parquet": nlphuji_parquet(6, lambda i: 5)},
        ref="refs/convert/parquet",
    )
    hf_cache_repo(
        cache,
        "nlphuji/mscoco_2014_5k_test_image_text_retrieval",
        COCO_PARQUET,
        {
            "TEST/test/0000.parquet": nlphuji_parquet(4, coco_like),
            "TEST/test/0001.parquet": nlphuji_parquet(3, coco_like, start=4),
        },
    )
    hf_cache_repo(
        cache,
        "clip-benchmark/wds_flickr30k",
        WDS_FLICKR,
        {
            "test/nshards.txt": b"2\n",
            "test/0.tar": wds_shard(range(0, 4), lambda i: 5),
            "test/1.tar": wds_shard(range(4, 6), lambda i: 5),
            "train/nshards.txt": b"1\n",
            "train/0.tar": wds_shard(range(100, 103), lambda i: 5),
        },
    )
    hf_cache_repo(
        cache,
        "clip-benchmark/wds_mscoco_captions",
        "3bf9ad5d280b03126293bcc691585015e29ce691",
        {"test/nshards.txt": b"1\n", "test/0.tar": wds_shard(range(7), coco_like)},
    )
    return cache


LOAD = """
import json, sys
from clipbench.dataset import load_dataset
from clipbench.errors import InputError
from clipbench.presets import expand_presets
cfg = expand_presets({"d": json.loads(sys.argv[1])})["d"]
cfg = {"split": "train", "image_column": "image", "text_column": "text", **cfg}
try:
    images, captions, meta = load_dataset(cfg)
    print(json.dumps({"images": images.num_rows, "image_ids": captions["image_id"].to_pylist(),
                      "texts": captions["text"].to_pylist(), "meta": meta}))
except InputError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def load_offline(entry: dict, cache: Path) -> dict:
    return offline_python(LOAD, json.dumps(entry), cache)


@pytest.mark.parametrize(
    ("preset", "images", "captions"),
    [
        ("flickr30k-1k", 6, [5] * 6),
        ("flickr30k-1k-wds", 6, [5] * 6),
        ("mscoco-5k", 7, [coco_like(i) for i in range(7)]),
        ("mscoco-5k-wds", 7, [coco_like(i) for i in range(7)]),
    ],
)
def test_presets_read_every_caption_of_every_image(published_layouts, preset, images, captions):
    out = load_offline({"preset": preset}, published_layouts)
    assert out["images"] == images
    counts = [out["image_ids"].count(i) for i in range(images)]
    assert counts == captions
    assert out["texts"][:2] == captions_of(0, 2)
    assert out["meta"]["split"] == "test" and out["meta"]["resolved_revision"]
    # Several shards or files: a hash per file, each verified against its ETag on the way.
    assert isinstance(out["meta"]["sha256"], (str, list))


def test_branch_revision_is_recorded_with_the_commit_it_resolved_to(published_layouts):
    out = load_offline({"preset": "flickr30k-1k"}, published_layouts)
    assert out["meta"]["revision"] == "refs/convert/parquet"
    assert out["meta"]["resolved_revision"] == FLICKR_PARQUET


def test_preset_keys_can_be_overridden(published_layouts):
    out = load_offline({"preset": "flickr30k-1k-wds", "limit": 3}, published_layouts)
    assert out["images"] == 3 and len(out["texts"]) == 15
    assert out["meta"]["source_rows"] is None  # the last shard was never read
    train = load_offline({"preset": "flickr30k-1k-wds", "split": "train"}, published_layouts)
    assert train["images"] == 3 and train["texts"][0] == captions_of(100, 1)[0]


def test_unknown_preset_is_named():
    with pytest.raises(InputError, match="unknown preset 'flickr8k'.*flickr30k-1k"):
        expand_presets({"d": {"preset": "flickr8k"}})
    assert {"flickr30k-1k", "mscoco-5k"} <= set(presets())


def test_local_webdataset_shards(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    for n, rows in enumerate([range(0, 3), range(3, 5)]):
        (folder / f"part-{n:03d}.tar").write_bytes(wds_shard(rows, lambda i: 2))
    cfg = {
        "source": {"webdataset": {"shards": str(folder / "part-{000..001}.tar")}},
        "split": "test",
        "image_column": "image",
        "text_column": "text",
    }
    images, captions, meta = load_dataset(cfg)
    assert images.num_rows == 5 and captions.num_rows == 10
    assert images["image"].to_pylist()[4] == jpeg(4)  # the original bytes
    assert len(meta["sha256"]) == 2 and meta["source_rows"] == 5


def test_webdataset_sample_without_image_follows_on_bad_image(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in (("a.jpg", jpeg(0)), ("a.txt", b"one"), ("b.txt", b"two")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "0.tar").write_bytes(buffer.getvalue())
    cfg = {
        "source": {"webdataset": {"shards": str(tmp_path / "0.tar")}},
        "split": "test",
        "image_column": "image",
        "text_column": "text",
    }
    with pytest.raises(InputError, match="row 1: no image bytes"):
        load_dataset(cfg)
    images, _, meta = load_dataset({**cfg, "on_bad_image": "skip"})
    assert images.num_rows == 1 and meta["skipped_rows"][0]["row"] == 1


def test_truncated_shard_is_named(tmp_path):
    (tmp_path / "0.tar").write_bytes(wds_shard(range(3), lambda i: 1)[:700])
    with pytest.raises(InputError, match="not a readable tar shard"):
        shard_table(tmp_path / "0.tar")


def test_brace_patterns_and_member_keys():
    assert expand_braces("test/{0..2}.tar") == ["test/0.tar", "test/1.tar", "test/2.tar"]
    assert expand_braces("s-{00..02}-{a,b}.tar")[:3] == ["s-00-a.tar", "s-00-b.tar", "s-01-a.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(InputError, match="backwards"):
        expand_braces("{3..1}.tar")
    assert sample_key("dir/s0000001.seg.jpg") == ("dir/s0000001", "seg.jpg")
    assert sample_key("README") is None


def local_wds_entry(folder: Path, shards: int, rows: int, **extra) -> dict:
    folder.mkdir(exist_ok=True)
    for n in range(shards):
        indices = range(n * rows, (n + 1) * rows)
        (folder / f"{n}.tar").write_bytes(wds_shard(indices, lambda i: 2))
    return {
        "source": {"webdataset": {"shards": str(folder / f"{{0..{shards - 1}}}.tar")}},
        "split": "test",
        "image_column": "image",
        "text_column": "text",
        **extra,
    }


def test_download_streams_shard_by_shard_and_leaves_nothing_on_failure(tmp_path):
    from clipbench.arrow_io import read_metadata
    from clipbench.stages.download import download

    entry = local_wds_entry(tmp_path / "wds", shards=3, rows=4)
    out_images, out_captions = tmp_path / "out/dataset.arrow", tmp_path / "out/captions.arrow"
    download(entry, "set", str(out_images), str(out_captions))
    with pa.memory_map(str(out_images)) as source:
        reader = pa.ipc.open_file(source)
        assert reader.num_record_batches == 3  # one per shard: never the whole set at once
        assert reader.read_all()["id"].to_pylist() == list(range(12))
    meta = read_metadata(out_captions)
    assert (meta["num_rows"], meta["num_captions"], meta["dataset"]) == (12, 24, "set")
    assert sorted(p.name for p in out_images.parent.iterdir()) == [
        "captions.arrow",
        "dataset.arrow",
    ]
    # A bad sample in the last shard: the job fails and neither file (nor a spill) is left.
    (tmp_path / "wds/2.tar").write_bytes(b"not a tar")
    out_images.unlink()
    out_captions.unlink()
    with pytest.raises(InputError, match="2.tar is not a readable tar shard"):
        download(entry, "set", str(out_images), str(out_captions))
    assert list(out_images.parent.iterdir()) == []


@pytest.mark.e2e
def test_presets_run_end_to_end_through_the_workflow(
    tmp_path, published_layouts, checkpoints, monkeypatch
):
    """Two presets in one line each, read from their published layouts (HF cache, offline),
    through every stage to the reports, checked against the published figures."""
    import yaml

    from clipbench.arrow_io import read_table
    from tests.conftest import open_clip_spec
    from tests.workflow_runs import snakemake, workflow_copy

    monkeypatch.setenv("HF_HUB_CACHE", str(published_layouts))
    root = workflow_copy(tmp_path / "wf")
    config = {
        "datasets": {"flickr": {"preset": "flickr30k-1k"}, "coco": {"preset": "mscoco-5k-wds"}},
        "models": {"tiny": {**open_clip_spec(checkpoints), "reference": "openai/ViT-B-32"}},
        "encode": {"device": "cpu", "threads": 1},
        "retrieval": {"top_k": 2, "bootstrap": {"resamples": 20}},
        "queries": {"texts": ["a photo"], "top_k": 2},
    }
    (root / "presets.yaml").write_text(yaml.safe_dump(config))
    snakemake(root, "--cores", "2", "--configfile", "presets.yaml")
    for dataset, images, captions in (
        ("flickr", 6, 30),
        ("coco", 7, sum(map(coco_like, range(7)))),
    ):
        assert read_table(root / f"results/{dataset}/dataset.arrow").num_rows == images
        assert read_table(root / f"results/{dataset}/captions.arrow").num_rows == captions
        checks = read_table(root / f"results/{dataset}/references.arrow")
        assert checks.num_rows == 6  # R@1, R@5, R@10 in both directions
        want = {"flickr": "flickr30k-1k", "coco": "mscoco-5k"}[dataset]
        assert set(checks["reference_dataset"].to_pylist()) == {want}
        page = (root / f"results/{dataset}/report.html").read_text()
        assert "Published numbers" in page and "of 6" in page
    assert "of 12</b>" in (root / "results/report.html").read_text()
