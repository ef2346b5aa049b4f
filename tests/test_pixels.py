"""Images decoded once per dataset and shared: the shared path equals each model's own."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image, ImageOps

from clipbench.arrow_io import read_metadata, write_table
from clipbench.demo import demo_rows
from clipbench.encode import encode_images
from clipbench.images import decode_image
from clipbench.kinds import geometry_of, load_encoder, parse_model
from clipbench.pixels import StoredPixels, write_pixels
from clipbench.settings import EncodeSettings
from clipbench.stages.encode import Session
from tests.conftest import bert_resnet_spec, open_clip_spec, spec_for

CPU = torch.device("cpu")
SETTINGS = EncodeSettings.parse(
    {"device": "cpu", "precision": "fp32", "batch_size": 3, "decode_workers": 1}
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Every storage mode (P, RGBA, LA, L, I;16, CMYK, …) at mixed sizes and aspect ratios."""
    blobs = demo_rows(9, seed=7)[0]
    path = tmp_path_factory.mktemp("pixels") / "dataset.arrow"
    table = pa.table({"id": pa.array(range(9), pa.int64()), "image": pa.array(blobs, pa.binary())})
    write_table(table, path, {"dataset": "t"})
    captions = path.with_name("captions.arrow")
    write_table(
        pa.table(
            {
                "id": pa.array(range(9), pa.int64()),
                "image_id": pa.array(range(9), pa.int64()),
                "text": [f"caption {i}" for i in range(9)],
            }
        ),
        captions,
        {"dataset": "t"},
    )
    return path, captions, blobs


@pytest.fixture(scope="module", params=["tiny-rn", "tiny-vit-32", "bert_resnet"])
def encoder(request, checkpoints):
    if request.param == "bert_resnet":
        return load_encoder(bert_resnet_spec(checkpoints), CPU)
    return load_encoder(open_clip_spec(checkpoints, request.param), CPU)


def test_geometry_then_finish_is_the_library_preprocessing_bit_for_bit(encoder, dataset):
    for i, blob in enumerate(dataset[2]):
        image = decode_image(blob, i)
        stored = Image.fromarray(np.asarray(encoder.geometry(image)), "RGB")
        torch.testing.assert_close(
            encoder.finish(stored), encoder.library_preprocess(image), rtol=0, atol=0
        )


@pytest.mark.parametrize("which", ["tiny-rn", "tiny-vit-32", "bert_resnet"])
def test_geometry_from_config_alone_matches_the_loaded_model(checkpoints, which):
    spec = spec_for(checkpoints, which)
    no_weights = {k: v for k, v in spec.items() if k not in ("checkpoint", "image_checkpoint")}
    if which == "bert_resnet":
        no_weights["image_checkpoint"] = "never read"  # picks ImageClassification(image_size)
    assert geometry_of(no_weights).geometry_key == load_encoder(spec, CPU).geometry_key


def test_encoding_from_shared_pixels_equals_decoding(encoder, dataset, tmp_path):
    path, _, blobs = dataset
    write_pixels(encoder, str(path), str(tmp_path / "px.arrow"), workers=2)
    stored = StoredPixels(str(tmp_path / "px.arrow"))
    assert stored.geometry_key == encoder.geometry_key
    assert np.asarray(stored.image(0)).dtype == np.uint8
    ids = list(range(len(blobs)))
    decoded = encode_images(encoder, blobs, ids, 4)
    shared = encode_images(encoder, blobs, ids, 4, stored=stored, workers=1)
    np.testing.assert_array_equal(shared, decoded)


def pixels_in_batches_of_4(encoder, path, out, monkeypatch) -> StoredPixels:
    from clipbench import pixels

    monkeypatch.setattr(pixels, "ROWS_PER_BATCH", 4)
    write_pixels(encoder, str(path), str(out), workers=1)
    return StoredPixels(str(out))


def test_pixels_are_written_in_batches_and_read_across_them(
    checkpoints, dataset, tmp_path, monkeypatch
):
    enc = load_encoder(open_clip_spec(checkpoints, "tiny-rn"), CPU)
    path, _, blobs = dataset
    stored = pixels_in_batches_of_4(enc, path, tmp_path / "px.arrow", monkeypatch)
    assert stored.starts.tolist() == [0, 4, 8, 9]
    for i, blob in enumerate(blobs):
        expected = np.asarray(enc.geometry(decode_image(blob, i)))
        np.testing.assert_array_equal(np.asarray(stored.image(i)), expected)
    assert read_metadata(tmp_path / "px.arrow")["dataset"] == "t"


def test_clip_models_of_one_input_size_share_a_geometry(checkpoints):
    # The tiny RN and ViTs all take 64² inputs, as RN50, ViT-B-32 and ViT-B-16 all take 224².
    keys = {
        load_encoder(open_clip_spec(checkpoints, arch), CPU).geometry_key
        for arch in ("tiny-rn", "tiny-vit-16", "tiny-vit-32")
    }
    assert len(keys) == 1 and "size=64" in keys.pop()
    resnet = load_encoder(bert_resnet_spec(checkpoints), CPU).geometry_key
    assert resnet.startswith("torchvision: resize [256] bilinear")


def test_pixels_of_another_geometry_are_not_used(checkpoints, dataset, tmp_path, caplog):
    path, captions, blobs = dataset
    resnet = load_encoder(bert_resnet_spec(checkpoints), CPU)
    write_pixels(resnet, str(path), str(tmp_path / "px.arrow"), workers=1)
    session = Session.open(
        parse_model(open_clip_spec(checkpoints, "tiny-rn")),
        SETTINGS,
        str(path),
        str(captions),
        1,
        None,
        "tiny-rn",
        str(tmp_path / "px.arrow"),
    )
    assert session.stored is None and "decoding itself" in caplog.text
    with pytest.raises(ValueError, match="another geometry"):
        encode_images(
            session.encoder,
            blobs,
            list(range(9)),
            4,
            stored=StoredPixels(str(tmp_path / "px.arrow")),
        )


def test_batched_finish_is_the_per_image_finish_bit_for_bit(
    encoder, dataset, tmp_path, monkeypatch
):
    """The vectorised ÷255, −mean, ÷std over stored rows (read across record batches) gives
    the same bits as the library's per-image to_tensor and Normalize."""
    stored = pixels_in_batches_of_4(encoder, dataset[0], tmp_path / "px.arrow", monkeypatch)
    batch = encoder.finish_batch(stored.rows(2, 9))
    assert batch is not None and batch.shape[0] == 7
    single = torch.stack([encoder.finish(stored.image(i)) for i in range(2, 9)])
    torch.testing.assert_close(batch, single, rtol=0, atol=0)


@pytest.mark.parametrize("native", [None, "bf16"])
def test_bf16_without_native_kernels_warns_that_it_is_emulated(
    checkpoints, dataset, monkeypatch, caplog, native
):
    from clipbench.stages import encode as stage

    monkeypatch.setattr(stage, "native_reduced", lambda device: native)
    path, captions, _ = dataset
    bf16 = EncodeSettings.parse({"device": "cpu", "precision": "bf16", "batch_size": 3})
    spec = parse_model(open_clip_spec(checkpoints, "tiny-rn"))
    Session.open(spec, bf16, str(path), str(captions), 1, None, "tiny-rn")
    assert ("emulated" in caplog.text) == (native is None)


@pytest.mark.parametrize("which", ["tiny-rn", "bert_resnet"])
def test_a_geometry_written_down_once_gives_the_same_pixels_without_torch(
    checkpoints, dataset, which, tmp_path, monkeypatch
):
    import json
    import subprocess
    import sys

    from clipbench import geometries
    from clipbench.resample import DescribedSteps

    monkeypatch.setenv("CLIPBENCH_CACHE", str(tmp_path / "cache"))
    spec = spec_for(checkpoints, which)
    entry = {k: v for k, v in spec.items() if k not in ("checkpoint", "image_checkpoint")}
    if which == "bert_resnet":
        entry["image_checkpoint"] = "never read"
    built = geometry_of(entry)  # builds, and writes it down
    assert geometries.cache_path(parse_model(entry)).is_file()
    read = geometry_of(entry)
    assert isinstance(read.resize_crop, DescribedSteps)
    assert not isinstance(built.resize_crop, DescribedSteps)
    assert read.geometry_key == built.geometry_key == load_encoder(spec, CPU).geometry_key
    for i, blob in enumerate(dataset[2]):
        image = decode_image(blob, i)
        assert read.geometry(image).tobytes() == built.geometry(image).tobytes()
    # A fresh process reads it without importing torch, torchvision or open_clip.
    script = (
        "import json, sys; from clipbench.kinds import geometry_of; "
        f"g = geometry_of(json.loads({json.dumps(json.dumps(entry))})); "
        "print(json.dumps([g.geometry_key, sorted(m for m in ('torch', 'torchvision', "
        "'open_clip') if m in sys.modules)]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.splitlines()[-1]
    assert json.loads(out) == [built.geometry_key, []]


def test_a_written_down_geometry_follows_its_config_file(checkpoints, tmp_path, monkeypatch):
    from clipbench import geometries

    monkeypatch.setenv("CLIPBENCH_CACHE", str(tmp_path / "cache"))
    spec = open_clip_spec(checkpoints, "tiny-rn")
    config = tmp_path / f"{spec['arch']}.json"
    config.write_bytes(Path(spec["model_config"]).read_bytes())
    entry = {k: v for k, v in spec.items() if k != "checkpoint"} | {"model_config": str(config)}
    first = geometries.cache_path(parse_model(entry))
    config.write_text(config.read_text().replace('"image_size": 64', '"image_size": 72'))
    assert geometries.cache_path(parse_model(entry)) != first
    assert "size=72" in geometry_of(entry).geometry_key


def test_pixels_that_differ_from_the_models_own_preprocessing_are_not_used(
    checkpoints, dataset, tmp_path, caplog
):
    from clipbench.encoders import Geometry

    path, captions, _ = dataset
    spec = parse_model(open_clip_spec(checkpoints, "tiny-rn"))
    right = geometry_of(spec.geometry_entry())
    inverted = Geometry(
        lambda image: ImageOps.invert(right.geometry(image)),
        right.geometry_key,  # the right key, the wrong pixels
    )
    write_pixels(inverted, str(path), str(tmp_path / "px.arrow"), workers=1)
    session = Session.open(
        spec, SETTINGS, str(path), str(captions), 1, None, "tiny-rn", str(tmp_path / "px.arrow")
    )
    assert session.stored is None and "differ from the model's own preprocessing" in caplog.text
    write_pixels(right, str(path), str(tmp_path / "good.arrow"), workers=1)
    session = Session.open(
        spec, SETTINGS, str(path), str(captions), 1, None, "tiny-rn", str(tmp_path / "good.arrow")
    )
    assert session.stored is not None
