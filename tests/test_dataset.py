import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipbench.dataset import canonical_tables, file_sha256, load_dataset
from clipbench.demo import demo_rows, write_demo_parquet
from clipbench.errors import InputError
from tests.conftest import offline_python, png_bytes


@pytest.fixture
def hf_parquet(tmp_path):
    path = tmp_path / "train.parquet"
    write_demo_parquet(str(path), rows=12, seed=3)
    return path


def cfg(source, **extra):
    """A dataset entry as the schema leaves it (defaults filled in)."""
    return {
        "source": source,
        "image_column": "image",
        "text_column": "text",
        "split": "train",
        **extra,
    }


def test_hf_image_parquet_keeps_original_bytes(hf_parquet):
    table, captions_table, meta = load_dataset(cfg({"parquet": str(hf_parquet)}))
    blobs, captions = demo_rows(12, 3)
    assert table.schema.names == ["id", "image", "text"]
    assert table.schema.field("image").type == pa.binary()
    assert table["id"].to_pylist() == list(range(12))
    assert table["image"].to_pylist() == blobs  # not re-encoded
    assert table["text"].to_pylist() == captions
    # One caption per image: caption i belongs to image i.
    assert captions_table.to_pydict() == {
        "id": list(range(12)),
        "image_id": list(range(12)),
        "text": captions,
    }
    assert meta["num_rows"] == 12 and meta["num_captions"] == 12
    assert meta["sha256"] == file_sha256(hf_parquet)
    assert meta["source"] == str(hf_parquet)


def test_limit_takes_first_rows(hf_parquet):
    table, _, meta = load_dataset(cfg({"parquet": str(hf_parquet)}, limit=5))
    assert table.num_rows == 5 and meta["source_rows"] == 12


def test_sha256_verified(hf_parquet):
    good = file_sha256(hf_parquet)
    load_dataset(cfg({"parquet": str(hf_parquet), "sha256": good.upper()}))
    with pytest.raises(InputError, match=f"expected {'0' * 64}, got {good}"):
        load_dataset(cfg({"parquet": str(hf_parquet), "sha256": "0" * 64}))


def test_hf_dataset_folder(tmp_path, hf_parquet):
    import datasets

    ds = datasets.Dataset.from_parquet(str(hf_parquet))
    datasets.DatasetDict({"train": ds, "test": ds.select([0, 1])}).save_to_disk(tmp_path / "f")
    table, _, _ = load_dataset(cfg({"hf_folder": str(tmp_path / "f")}, split="test"))
    assert table["image"].to_pylist() == demo_rows(12, 3)[0][:2]
    with pytest.raises(InputError, match="split 'validation' not found"):
        load_dataset(cfg({"hf_folder": str(tmp_path / "f")}, split="validation"))


def test_plain_binary_and_path_only_images(tmp_path):
    blob = png_bytes(Image.new("RGB", (4, 4)))
    (tmp_path / "a.png").write_bytes(blob)
    struct = pa.array(
        [{"bytes": None, "path": "a.png"}],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    raw = pa.table({"image": struct, "caption": ["x"]})
    table, _, _ = canonical_tables(raw, "image", "caption", base_dir=tmp_path)
    assert table["image"].to_pylist() == [blob]
    raw = pa.table({"img": pa.array([blob], pa.binary()), "caption": ["x"]})
    assert canonical_tables(raw, "img", "caption")[0]["image"].to_pylist() == [blob]
    # A path may not lead out of the dataset's folder, whatever the dataset says.
    (tmp_path / "data").mkdir()
    (tmp_path / "secret.png").write_bytes(blob)
    for rel in ("../secret.png", str(tmp_path / "secret.png")):
        outside = pa.array([{"bytes": None, "path": rel}], struct.type)
        raw = pa.table({"image": outside, "caption": ["x"]})
        with pytest.raises(InputError, match="row 0: image path .* points outside"):
            canonical_tables(raw, "image", "caption", base_dir=tmp_path / "data")
    # … but a file beside it may be a link elsewhere, as in a Hugging Face cache snapshot.
    (tmp_path / "data" / "linked.png").symlink_to(tmp_path / "secret.png")
    linked = pa.array([{"bytes": None, "path": "linked.png"}], struct.type)
    raw = pa.table({"image": linked, "caption": ["x"]})
    table, _, _ = canonical_tables(raw, "image", "caption", base_dir=tmp_path / "data")
    assert table["image"].to_pylist() == [blob]


def raw_table(texts, blobs=None):
    blobs = blobs or [png_bytes(Image.new("RGB", (4, 4)))] * len(texts)
    return pa.table({"image": pa.array(blobs, pa.binary()), "text": pa.array(texts, pa.string())})


def test_missing_column_lists_available():
    with pytest.raises(InputError, match=r"text column 'caption' not found.*\['image', 'text'\]"):
        canonical_tables(raw_table(["a"]), "image", "caption")
    with pytest.raises(InputError, match="image column 'pixels' not found"):
        canonical_tables(raw_table(["a"]), "pixels", "text")


def test_list_column_gives_several_captions_per_image(tmp_path):
    path = tmp_path / "multi.parquet"
    write_demo_parquet(str(path), rows=5, seed=1, multi=True)
    images, captions, meta = load_dataset(cfg({"parquet": str(path)}))
    _, lists = demo_rows(5, 1, multi=True)
    assert images.num_rows == 5 and meta["num_captions"] == sum(map(len, lists)) == 9
    assert captions["image_id"].to_pylist() == [0, 1, 1, 2, 2, 2, 3, 4, 4]
    assert captions["text"].to_pylist() == [c for caps in lists for c in caps]
    assert images["text"].to_pylist() == [caps[0] for caps in lists]


def test_repeated_images_grouped_by_bytes_when_asked():
    a, b = png_bytes(Image.new("RGB", (4, 4), "red")), png_bytes(Image.new("RGB", (4, 4)))
    raw = raw_table(["a1", "b1", "a2"], [a, b, a])
    images, captions, _ = canonical_tables(raw, "image", "text", image_grouping="bytes")
    assert images["image"].to_pylist() == [a, b]
    assert captions.to_pydict() == {
        "id": [0, 1, 2],
        "image_id": [0, 1, 0],
        "text": ["a1", "b1", "a2"],
    }
    images, captions, _ = canonical_tables(raw, "image", "text")  # "row": the seed's setup
    assert images.num_rows == 3 and captions["image_id"].to_pylist() == [0, 1, 2]


def test_blank_caption_inside_a_list_names_the_row():
    texts = pa.array([["ok"], ["fine", " "], []], pa.list_(pa.string()))
    raw = pa.table(
        {"image": pa.array([png_bytes(Image.new("RGB", (4, 4)))] * 3, pa.binary()), "text": texts}
    )
    with pytest.raises(InputError, match=r"row ids \[1, 2\]"):
        canonical_tables(raw, "image", "text")


@pytest.mark.parametrize("bad", [None, "", "   "])
def test_null_or_empty_caption_names_rows(bad):
    with pytest.raises(InputError, match=r"row ids \[1\]"):
        canonical_tables(raw_table(["ok", bad, "fine"]), "image", "text")


def test_zero_rows():
    with pytest.raises(InputError, match="zero rows"):
        canonical_tables(raw_table([]), "image", "text")


def test_garbage_image_names_row():
    blobs = [png_bytes(Image.new("RGB", (4, 4))), b"garbage"]
    with pytest.raises(InputError, match="row 1: image bytes are not a recognised image"):
        canonical_tables(raw_table(["a", "b"], blobs), "image", "text")


def test_truncated_parquet(tmp_path, hf_parquet):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(hf_parquet.read_bytes()[:500])
    with pytest.raises(InputError, match="not a readable parquet file"):
        load_dataset(cfg({"parquet": str(broken)}))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(cfg({"parquet": str(tmp_path / "nope.parquet")}))


def test_demo_parquet_has_hub_image_layout(hf_parquet):
    schema = pq.read_schema(hf_parquet)
    assert schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert b'"_type": "Image"' in schema.metadata[b"huggingface"]


HUB_SCRIPT = """
import json, sys
from clipbench.dataset import load_dataset
from clipbench.errors import InputError
cfg = json.loads(sys.argv[1])
try:
    table, _, meta = load_dataset(cfg)
    print(json.dumps({"rows": table.num_rows, "meta": meta}))
except InputError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def run_hub(cfg_, cache):
    import json

    return offline_python(HUB_SCRIPT, json.dumps(cfg_), cache)


def test_hub_source_reads_pinned_file_from_the_hf_cache(tmp_path, hf_parquet):
    # The same hf_hub_download call as online, answered from a populated cache (offline mode).
    revision = "3790f29981f74ca26bf11662048342e19c5b615e"
    snapshot = tmp_path / "datasets--org--pokemon" / "snapshots" / revision / "data"
    snapshot.mkdir(parents=True)
    (snapshot / "train.parquet").write_bytes(hf_parquet.read_bytes())
    hub = {"repo_id": "org/pokemon", "revision": revision, "file": "data/train.parquet"}
    out = run_hub(cfg({"hub": hub, "sha256": file_sha256(hf_parquet)}), tmp_path)
    assert out["rows"] == 12
    assert out["meta"]["source"] == "hf://datasets/org/pokemon/data/train.parquet"
    assert out["meta"]["revision"] == revision
    assert out["meta"]["resolved_revision"] == revision


def test_hub_source_offline_without_cache_points_to_the_fix(tmp_path):
    hub = {"repo_id": "org/absent", "revision": "main", "file": "x.parquet"}
    out = run_hub(cfg({"hub": hub}), tmp_path)
    assert "HF_HUB_OFFLINE" in out["error"] and "local parquet" in out["error"]


def test_decompression_bomb_refused_at_download(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    raw = raw_table(["a"], [png_bytes(Image.new("RGB", (20, 20)))])
    with pytest.raises(InputError, match="row 0: image exceeds PIL's decompression-bomb"):
        canonical_tables(raw, "image", "text")


def test_hub_split_without_file_reads_every_shard_of_the_split(tmp_path):
    import pyarrow.parquet as pq

    revision = "0123456789abcdef0123456789abcdef01234567"
    data = tmp_path / "datasets--org--multi" / "snapshots" / revision / "data"
    data.mkdir(parents=True)
    blobs, captions = demo_rows(6, 2)
    for shard, rows in enumerate([slice(0, 4), slice(4, 6)]):
        pq.write_table(
            raw_table(captions[rows], blobs[rows]), data / f"train-0000{shard}-of-00002.parquet"
        )
    pq.write_table(raw_table(["other"], blobs[:1]), data / "test-00000-of-00001.parquet")
    hub = {"repo_id": "org/multi", "revision": revision}
    out = run_hub(cfg({"hub": hub}), tmp_path)
    assert out["rows"] == 6 and out["meta"]["resolved_revision"] == revision
    assert len(out["meta"]["sha256"]) == 2
    assert run_hub(cfg({"hub": hub}, split="test"), tmp_path)["rows"] == 1
    assert (
        "no parquet files for split 'validation'"
        in run_hub(cfg({"hub": hub}, split="validation"), tmp_path)["error"]
    )
    assert (
        "checks a single file" in run_hub(cfg({"hub": hub, "sha256": "a" * 64}), tmp_path)["error"]
    )


IT = ("image", "text")


def truncated_jpeg() -> bytes:
    """A complete JPEG header, then half of the scan data: only a full decode finds it."""
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    blob = png_bytes(Image.fromarray(noise), "JPEG")
    return blob[: len(blob) // 2]


def test_truncated_image_passes_download_by_default():
    # on_bad_image: error reads headers only; the pixels stage reports the broken body.
    good = png_bytes(Image.new("RGB", (4, 4)))
    images, _, skipped = canonical_tables(raw_table(["a", "b"], [good, truncated_jpeg()]), *IT)
    assert images.num_rows == 2 and skipped == {}


def test_bad_image_error_names_the_row_and_the_skip_option():
    blobs = [png_bytes(Image.new("RGB", (4, 4))), b"garbage", b"junk"]
    with pytest.raises(InputError, match=r"row 1: .*fix or remove.*`on_bad_image: skip`"):
        canonical_tables(raw_table(["a", "b", "c"], blobs), *IT)
    with pytest.raises(InputError, match=r"row 1: .*`on_bad_image: skip`"):
        canonical_tables(raw_table(["a", "b", "c"], blobs), *IT, on_bad_image="error")


def test_skip_leaves_out_bad_rows_with_their_captions():
    a, c, f = (png_bytes(Image.new("RGB", (4, 4), colour)) for colour in ("red", "blue", "green"))
    blobs = [a, b"garbage", c, truncated_jpeg(), None, f]
    texts = [["a1"], ["b1", "b2"], ["c1", "c2"], ["d1"], ["e1"], ["f1"]]
    raw = pa.table(
        {"image": pa.array(blobs, pa.binary()), "text": pa.array(texts, pa.list_(pa.string()))}
    )
    images, captions, skipped = canonical_tables(raw, *IT, on_bad_image="skip")
    assert images.to_pydict() == {"id": [0, 1, 2], "image": [a, c, f], "text": ["a1", "c1", "f1"]}
    assert captions.to_pydict() == {
        "id": [0, 1, 2, 3],
        "image_id": [0, 1, 1, 2],
        "text": ["a1", "c1", "c2", "f1"],
    }
    assert sorted(skipped) == [1, 3, 4]
    assert skipped[1] == "image bytes are not a recognised image format"
    assert skipped[3].startswith("image bytes cannot be decoded (OSError: image file is truncated")
    assert skipped[4] == "no image bytes stored"


def test_skip_with_byte_grouping_keeps_ids_contiguous():
    a, b = png_bytes(Image.new("RGB", (4, 4), "red")), png_bytes(Image.new("RGB", (4, 4)))
    raw = raw_table(["x1", "a1", "x2", "b1", "a2"], [b"bad", a, b"bad", b, a])
    images, captions, skipped = canonical_tables(
        raw, *IT, image_grouping="bytes", on_bad_image="skip"
    )
    assert sorted(skipped) == [0, 2]
    assert images["image"].to_pylist() == [a, b] and images["id"].to_pylist() == [0, 1]
    assert captions["image_id"].to_pylist() == [0, 1, 0]
    assert captions["text"].to_pylist() == ["a1", "b1", "a2"]


def test_skip_counts_decompression_bombs_as_bad_images(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 20×20 = 400 > 2 × limit: refused
    small, bomb = png_bytes(Image.new("RGB", (4, 4))), png_bytes(Image.new("RGB", (20, 20)))
    images, _, skipped = canonical_tables(
        raw_table(["a", "b"], [bomb, small]), *IT, on_bad_image="skip"
    )
    assert images["image"].to_pylist() == [small]
    assert skipped == {0: "image exceeds PIL's decompression-bomb pixel limit"}


def test_skip_of_every_row_is_zero_rows():
    with pytest.raises(InputError, match=r"zero rows.*row 0: image bytes are not a recognised"):
        canonical_tables(raw_table(["a", "b"], [b"bad", b"worse"]), *IT, on_bad_image="skip")


def test_skipped_source_rows_in_the_metadata(tmp_path):
    good = png_bytes(Image.new("RGB", (4, 4)))
    path = tmp_path / "d.parquet"
    pq.write_table(raw_table(list("abcde"), [good, truncated_jpeg(), good, good, b"x"]), path)
    images, captions, meta = load_dataset(cfg({"parquet": str(path)}, on_bad_image="skip"))
    assert images["id"].to_pylist() == [0, 1, 2]
    assert captions["text"].to_pylist() == ["a", "c", "d"]
    assert meta["on_bad_image"] == "skip"
    assert [s["row"] for s in meta["skipped_rows"]] == [1, 4]
    assert "truncated" in meta["skipped_rows"][0]["reason"]
    assert (meta["source_rows"], meta["num_rows"], meta["num_captions"]) == (5, 3, 3)
    # `limit` takes the first rows of the source, then the bad ones among them are left out.
    _, _, meta = load_dataset(cfg({"parquet": str(path)}, on_bad_image="skip", limit=3))
    assert [s["row"] for s in meta["skipped_rows"]] == [1] and meta["num_rows"] == 2
    # Without the option (or with error), nothing is skipped and the metadata says so.
    _, _, meta = load_dataset(cfg({"parquet": str(path)}, limit=4))
    assert (meta["on_bad_image"], meta["skipped_rows"], meta["num_rows"]) == ("error", [], 4)
