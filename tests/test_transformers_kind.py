"""The `transformers` model kind on tiny random CLIPModel and SiglipModel folders written with
save_pretrained and loaded with local_files_only, against the library's own path."""

import numpy as np
import pytest
import torch

from clipbench.demo import demo_rows, write_bert, write_hf_dual_encoder
from clipbench.encode import encode_images, encode_texts
from clipbench.errors import InputError
from clipbench.images import decode_image
from clipbench.kinds import load_encoder

CPU = torch.device("cpu")


@pytest.fixture(scope="module", params=["clip", "siglip"])
def hf_model(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param) / "model"
    write_hf_dual_encoder(str(folder), request.param, seed=0)
    return request.param, folder


def library_path(folder, images, texts, padding):
    """What the library's documentation does: processor, model, one item at a time, strict
    float32."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    limit = model.config.text_config.max_position_embeddings
    out_images, out_texts = [], []
    with torch.no_grad():
        for image in images:
            pixels = processor(images=image, return_tensors="pt")["pixel_values"]
            out_images.append(model.get_image_features(pixel_values=pixels).pooler_output[0])
        for text in texts:
            tokens = tokenizer([text], padding=padding, max_length=limit, return_tensors="pt")
            out_texts.append(model.get_text_features(**tokens).pooler_output[0])
    return [torch.stack(out).numpy() if out else None for out in (out_images, out_texts)]


def cosines(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


@pytest.mark.parametrize("precision", ["fp32", "fp32-strict"])
def test_embeddings_equal_the_library_path(hf_model, precision):
    kind, folder = hf_model
    blobs, captions = demo_rows(9, seed=1)
    images = [decode_image(b, i) for i, b in enumerate(blobs)]
    # SigLIP was trained on text padded to its full context; CLIP pools the end token.
    padding = "max_length" if kind == "siglip" else "longest"
    want_images, want_texts = library_path(folder, images, captions, padding)
    encoder = load_encoder({"kind": "transformers", "model_dir": str(folder)}, CPU)
    got_images = encode_images(encoder, blobs, list(range(9)), 4, precision)
    got_texts = encode_texts(encoder, captions, 4, precision)
    assert cosines(got_images, want_images).min() >= 0.9999
    assert cosines(got_texts, want_texts).min() >= 0.9999
    assert got_images.shape[1] == got_texts.shape[1]


def test_siglip_text_depends_on_padding_and_is_padded_to_its_context(hf_model):
    kind, folder = hf_model
    if kind != "siglip":
        pytest.skip("CLIP pools the end-of-text token: padding-invariant")
    encoder = load_encoder({"kind": "transformers", "model_dir": str(folder)}, CPU)
    assert (encoder.padding, encoder.max_length) == ("max_length", 16)
    _, longest = library_path(folder, [], ["a red circle"], "longest")
    _, padded = library_path(folder, [], ["a red circle"], "max_length")
    ours = encode_texts(encoder, ["a red circle"], 1, "fp32-strict")
    assert cosines(ours, padded).min() >= 0.9999 and cosines(longest, padded).min() < 0.9999


def test_default_precision_stays_within_its_bound(hf_model):
    from clipbench.precision import resolve_precision

    _, folder = hf_model
    blobs, _ = demo_rows(6, seed=2)
    strict = load_encoder({"kind": "transformers", "model_dir": str(folder)}, CPU)
    reference = encode_images(strict, blobs, list(range(6)), 3, "fp32-strict")
    auto = load_encoder({"kind": "transformers", "model_dir": str(folder)}, CPU)
    policy = resolve_precision("auto", CPU)
    got = encode_images(auto, blobs, list(range(6)), 3, policy)
    assert (1 - cosines(got, reference)).max() <= policy.deviation_bound
    assert auto.geometry_key is None  # decodes its own images: nothing provably shared


def test_only_safetensors_and_never_remote_code(hf_model, tmp_path):
    import json
    import shutil

    _, folder = hf_model
    pickled = tmp_path / "pickled"
    shutil.copytree(folder, pickled)
    from safetensors.torch import load_file

    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(InputError, match="cannot load transformers model"):
        load_encoder({"kind": "transformers", "model_dir": str(pickled)}, CPU)
    remote = tmp_path / "remote"
    shutil.copytree(folder, remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    # The folder asks for its own code: it is never imported, the library's class loads.
    encoder = load_encoder({"kind": "transformers", "model_dir": str(remote)}, CPU)
    assert type(encoder.model).__module__.startswith("transformers.models.")


def test_a_pinned_hub_model_loads_from_the_cache_and_records_its_commit(hf_model, tmp_path):
    """The same from_pretrained call as online, answered offline from a populated HF cache."""
    import json

    from tests.conftest import hf_cache_repo, offline_python

    kind, folder = hf_model
    commit = "0123456789abcdef0123456789abcdef0123cafe"
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "demo.json"}
    hf_cache_repo(tmp_path, f"org/tiny-{kind}", commit, files, ref="main", kind="models")
    script = """
import json, sys, torch
from clipbench.kinds import load_encoder
enc = load_encoder(json.loads(sys.argv[1]), torch.device("cpu"))
print(json.dumps({"revision": enc.resolved_revision, "type": enc.model_type}))
"""
    spec = {"kind": "transformers", "model": f"org/tiny-{kind}", "revision": commit}
    out = offline_python(script, json.dumps(spec), tmp_path)
    assert out == {"revision": commit, "type": kind}
    unpinned = {key: value for key, value in spec.items() if key != "revision"}
    unpinned = offline_python(script, json.dumps(unpinned), tmp_path)
    assert unpinned["revision"] == commit  # main, resolved through the cache's ref


def test_weights_stored_in_half_precision_load_as_float32(hf_model, tmp_path):
    from transformers import AutoModel

    _, folder = hf_model
    AutoModel.from_pretrained(folder, local_files_only=True).to(torch.bfloat16).save_pretrained(
        tmp_path / "bf16"
    )
    for name in ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "bf16" / name).write_bytes((folder / name).read_bytes())
    encoder = load_encoder({"kind": "transformers", "model_dir": str(tmp_path / "bf16")}, CPU)
    assert {p.dtype for p in encoder.model.parameters()} == {torch.float32}


def test_a_model_without_both_towers_is_refused(tmp_path):
    write_bert(str(tmp_path / "bert"), seed=0)
    with pytest.raises(InputError, match="^transformers model .* not an image–text dual encoder$"):
        load_encoder({"kind": "transformers", "model_dir": str(tmp_path / "bert")}, CPU)
    with pytest.raises(InputError, match="model_dir .* does not exist"):
        load_encoder({"kind": "transformers", "model_dir": str(tmp_path / "none")}, CPU)


@pytest.mark.e2e
def test_transformers_models_run_through_the_workflow(tmp_path):
    """A CLIPModel and a SiglipModel folder beside each other in one run, to the report."""
    import yaml

    from clipbench.arrow_io import read_metadata, read_table
    from clipbench.demo import write_demo_parquet
    from tests.workflow_runs import snakemake, workflow_copy

    root = workflow_copy(tmp_path / "wf")
    write_demo_parquet(str(root / "data.parquet"), rows=12, seed=0)
    models = {}
    for kind in ("clip", "siglip"):
        write_hf_dual_encoder(str(root / f"hf-{kind}"), kind, seed=0)
        models[f"hf-{kind}"] = {"kind": "transformers", "model_dir": f"hf-{kind}"}
    config = {
        "datasets": {"small": {"source": {"parquet": "data.parquet"}}},
        "models": models,
        "encode": {"device": "cpu", "threads": 1},
        "retrieval": {"bootstrap": {"resamples": 20}},
        "queries": {"texts": ["a red circle"]},
    }
    (root / "hf.yaml").write_text(yaml.safe_dump(config))
    snakemake(root, "--cores", "2", "--configfile", "hf.yaml")
    for name in models:
        meta = read_metadata(root / f"results/small/embeddings/{name}/images.arrow")
        assert meta["spec"]["kind"] == "transformers" and not meta["shared_pixels"]
        assert read_table(root / f"results/small/metrics/{name}.arrow").num_rows > 0
    page = (root / "results/small/report.html").read_text()
    assert "hf-clip" in page and "hf-siglip" in page
    assert not (root / "results/small/pixels").exists()  # each decodes its own images
