import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipbench.batching import batch_sizes, prepared_batches
from clipbench.demo import demo_rows, write_open_clip_checkpoint
from clipbench.embeddings import l2_normalize
from clipbench.encode import encode_images, encode_texts, fit_text_head
from clipbench.encoders import initialization_skipped, load_state_dict
from clipbench.errors import InputError
from clipbench.kinds import geometry_of, load_encoder, parse_model
from clipbench.kinds.bert_resnet import seeded_projection
from clipbench.precision import resolve_device, resolve_precision
from clipbench.settings import RetrySettings
from tests.conftest import DEMO_ARCHS, bert_resnet_spec, open_clip_spec, png_bytes

CPU = torch.device("cpu")
CAPTIONS = [
    "a red circle",
    "a yellow star on a black background with a long tail of words",
    "blue",
    "a green square on a white background",
    "an orange triangle",
]


@pytest.fixture(scope="module")
def blobs():
    return demo_rows(7, seed=5)[0]  # every storage mode, mixed sizes


@pytest.fixture(scope="module", params=["tiny-vit-16", "tiny-rn", "bert_resnet"])
def encoder(request, checkpoints):
    if request.param == "bert_resnet":
        return load_encoder(bert_resnet_spec(checkpoints), CPU)
    return load_encoder(open_clip_spec(checkpoints, request.param), CPU)


def test_batched_images_equal_one_at_a_time(encoder, blobs):
    # fp32 means float32-level error on every CPU (on AMX ones too, where matmul precision
    # "medium" would compute in bf16), so the fp32 tolerance holds everywhere.
    policy = resolve_precision("fp32", CPU)
    ids = list(range(len(blobs)))
    batched = l2_normalize(encode_images(encoder, blobs, ids, batch_size=4, precision=policy))
    single = l2_normalize(
        np.concatenate(
            [encode_images(encoder, [b], [i], 1, policy) for b, i in zip(blobs, ids, strict=True)]
        )
    )
    assert batched.dtype == np.float32 and batched.shape[0] == len(blobs)
    np.testing.assert_allclose(batched, single, atol=policy.tolerance)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_batched_texts_equal_one_at_a_time(encoder):
    # Padding to the batch's longest caption must not change a short caption's embedding.
    policy = resolve_precision("fp32", CPU)
    batched = l2_normalize(encode_texts(encoder, CAPTIONS, batch_size=5, precision=policy))
    single = l2_normalize(np.concatenate([encode_texts(encoder, [c], 1, policy) for c in CAPTIONS]))
    np.testing.assert_allclose(batched, single, atol=policy.tolerance)


def test_models_are_in_eval_mode(encoder):
    assert all(not m.training for m in encoder.modules())


@pytest.mark.parametrize("arch", ["tiny-vit-16", "tiny-rn"])
def test_loaded_weights_are_the_checkpoints_own(checkpoints, arch):
    """Random initialisation is skipped where a strict load follows: every tensor must still
    be the checkpoint's, and the projection the seed draws must still be drawn."""
    encoder = load_encoder(open_clip_spec(checkpoints, arch), CPU)
    saved = load_state_dict(checkpoints[arch])
    loaded = encoder.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    baseline = load_encoder(bert_resnet_spec(checkpoints), CPU)
    saved = load_state_dict(checkpoints["resnet18"])
    assert all(torch.equal(v, baseline.image_model.state_dict()[k]) for k, v in saved.items())
    projection = seeded_projection(baseline.projection.in_features, 1000, 0)
    assert torch.equal(baseline.projection.weight, projection.weight)


def test_initialization_is_skipped_only_inside(checkpoints):
    torch.manual_seed(0)
    with initialization_skipped():
        untouched = torch.nn.init.normal_(torch.zeros(8))
    assert not untouched.any()
    with pytest.raises(RuntimeError), initialization_skipped():
        raise RuntimeError("a failed load")
    assert torch.nn.init.normal_(torch.zeros(8)).any()  # restored after the failure
    assert torch.nn.Linear(4, 4).weight.abs().sum() > 0


def test_bert_resnet_matches_the_seed_design(checkpoints):
    enc = load_encoder(bert_resnet_spec(checkpoints), CPU)
    assert enc.projection.in_features == enc.text_model.config.hidden_size
    assert enc.projection.out_features == 1000  # classifier logits
    # The untrained projection is reproducible from its seed and independent of global RNG.
    torch.manual_seed(123)
    again = seeded_projection(enc.projection.in_features, 1000, 0)
    torch.testing.assert_close(again.weight, enc.projection.weight)
    other = seeded_projection(enc.projection.in_features, 1000, 1)
    assert not torch.equal(other.weight, enc.projection.weight)


def test_bert_mean_pool_ignores_padding(checkpoints):
    enc = load_encoder(bert_resnet_spec(checkpoints), CPU)
    with torch.inference_mode():
        batch = enc.tokenizer(["red"], return_tensors="pt")
        hidden = enc.text_model(**batch).last_hidden_state
        expected = enc.projection(hidden.mean(1))
        padded = enc.encode_texts(["red", "a very long caption about a red circle"])[:1]
    torch.testing.assert_close(padded, expected, atol=1e-5, rtol=1e-5)


def test_unknown_kind():
    with pytest.raises(InputError, match="unknown model kind 'sam'"):
        load_encoder({"kind": "sam"}, CPU)


def test_checkpoint_not_matching_architecture(checkpoints):
    spec = open_clip_spec(checkpoints, "tiny-vit-16") | {
        "checkpoint": str(checkpoints["tiny-vit-32"])
    }
    with pytest.raises(InputError, match="does not match architecture 'tiny-vit-16'"):
        load_encoder(spec, CPU)
    bad = bert_resnet_spec(checkpoints) | {"image_arch": "resnet34"}
    with pytest.raises(InputError, match="does not match torchvision 'resnet34'"):
        load_encoder(bad, CPU)


class RunsCode:
    def __reduce__(self):  # what a malicious pickle does: call anything on load
        import os

        return os.mkdir, ("pwned",)


def test_a_checkpoint_that_would_run_code_is_refused(checkpoints, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = load_state_dict(checkpoints["resnet18"]) | {"extra": RunsCode()}
    torch.save(state, tmp_path / "evil.pt")
    spec = bert_resnet_spec(checkpoints) | {"image_checkpoint": str(tmp_path / "evil.pt")}
    with pytest.raises(InputError, match="evil.pt holds more than tensors .*posix.mkdir"):
        load_encoder(spec, CPU)
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint" * 8)
    spec = bert_resnet_spec(checkpoints) | {"image_checkpoint": str(tmp_path / "garbage.pt")}
    with pytest.raises(InputError, match="garbage.pt is not a readable torch checkpoint"):
        load_encoder(spec, CPU)
    # The same weights as a tensor-only pickle load.
    torch.save(load_state_dict(checkpoints["resnet18"]), tmp_path / "plain.pt")
    load_encoder(
        bert_resnet_spec(checkpoints) | {"image_checkpoint": str(tmp_path / "plain.pt")}, CPU
    )


def test_model_config_must_be_named_after_arch(checkpoints):
    spec = open_clip_spec(checkpoints) | {"arch": "other"}
    with pytest.raises(InputError, match="name the file <arch>.json"):
        load_encoder(spec, CPU)


def test_unknown_open_clip_architecture():
    with pytest.raises(InputError, match="unknown open_clip architecture 'ViT-Q-99'"):
        load_encoder({"kind": "open_clip", "arch": "ViT-Q-99"}, CPU)


def test_hub_weights_offline_point_to_the_fix():
    with pytest.raises(InputError, match="HF_HUB_OFFLINE"):
        load_encoder({"kind": "open_clip", "arch": "RN50", "pretrained": "openai"}, CPU)


def test_undecodable_image_names_row(encoder):
    blobs = [png_bytes(Image.new("RGB", (8, 8))), b"\xff\xd8\xff broken jpeg"]
    with pytest.raises(InputError, match="row 41"):
        encode_images(encoder, blobs, [40, 41], batch_size=2)


def test_device_and_precision_choices():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(InputError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)


@pytest.mark.parametrize("which", ["open_clip", "bert_resnet"])
def test_bf16_on_cpu_casts_the_weights_and_stays_close_to_fp32(checkpoints, blobs, which):
    spec = open_clip_spec(checkpoints) if which == "open_clip" else bert_resnet_spec(checkpoints)
    enc = load_encoder(spec, CPU)
    ids = list(range(len(blobs)))
    fp32 = l2_normalize(encode_images(enc, blobs, ids, 4))
    texts32 = l2_normalize(encode_texts(enc, CAPTIONS, 4))
    bf16 = l2_normalize(encode_images(enc, blobs, ids, 4, precision="bf16"))
    texts16 = l2_normalize(encode_texts(enc, CAPTIONS, 4, precision="bf16"))
    assert enc.dtype == torch.bfloat16
    assert np.min(np.sum(fp32 * bf16, axis=1)) > 0.99
    assert np.min(np.sum(texts32 * texts16, axis=1)) > 0.99
    with pytest.raises(RuntimeError, match="reload the model"):
        encode_images(enc, blobs, ids, 4)  # float32 results from bf16 weights: refused


def test_ridge_baseline_text_tower_ends_at_pooled_features(checkpoints):
    spec = bert_resnet_spec(checkpoints) | {
        "projection": "ridge",
        "ridge": {"folds": 3, "inner_folds": 2},
    }
    enc = load_encoder(spec, CPU)
    raw = encode_texts(enc, CAPTIONS, 5)
    assert raw.shape == (5, enc.text_model.config.hidden_size)
    images = l2_normalize(np.random.default_rng(0).standard_normal((5, 1000)))
    head = fit_text_head(parse_model(spec), raw, images, np.arange(5))
    assert head.transform(raw, np.arange(5)).shape == (5, 1000)
    random = parse_model(bert_resnet_spec(checkpoints))
    assert fit_text_head(random, raw, images, np.arange(5)) is None


def test_perturb_hook_changes_only_what_it_touches(checkpoints, blobs):
    from clipbench.robustness import add_pixel_noise

    enc = load_encoder(open_clip_spec(checkpoints), CPU)
    ids = list(range(len(blobs)))
    clean = encode_images(enc, blobs, ids, 4)
    same = encode_images(enc, blobs, ids, 4, perturb=lambda im, i: im)
    noisy = encode_images(enc, blobs, ids, 4, perturb=lambda im, i: add_pixel_noise(im, 0.3, 0, i))
    np.testing.assert_allclose(same, clean, atol=1e-6)
    assert np.abs(noisy - clean).max() > 1e-3


@pytest.mark.parametrize("arch", ["tiny-vit-16", "tiny-rn"])
def test_truncated_clip_text_equals_the_padded_path(checkpoints, arch):
    from clipbench.kinds.open_clip import encode_text_truncated, truncatable

    enc = load_encoder(open_clip_spec(checkpoints, arch), CPU)
    assert truncatable(enc.model)
    tokens = enc.tokenizer(CAPTIONS)
    assert tokens.shape[1] == 77 and int(tokens.argmax(-1).max()) < 20
    with torch.inference_mode():
        padded = enc.model.encode_text(tokens)
        short = encode_text_truncated(enc.model, tokens)
    cosine = torch.nn.functional.cosine_similarity(padded, short, dim=-1)
    assert cosine.min() >= 0.99999
    torch.testing.assert_close(short, padded, atol=1e-5, rtol=1e-4)


def test_fp32_on_cpu_stays_within_1e5_of_strict_fp32(checkpoints, blobs):
    enc = load_encoder(bert_resnet_spec(checkpoints), CPU)
    ids = list(range(len(blobs)))
    # Strict first (the stock modules), as encode takes its strict sample: fp32's fast paths
    # replace them for good.
    strict = l2_normalize(encode_images(enc, blobs, ids, 4, precision="fp32-strict"))
    fast = l2_normalize(encode_images(enc, blobs, ids, 4, precision="fp32"))
    assert enc.fused
    assert (1 - np.sum(fast * strict, axis=1)).max() <= 1e-5
    with pytest.raises(RuntimeError, match="reload the model"):
        encode_images(enc, blobs, ids, 4, precision="fp32-strict")
    assert torch.get_float32_matmul_precision() == "highest"  # restored afterwards


def test_convolutional_image_towers_run_channels_last(checkpoints):
    assert load_encoder(open_clip_spec(checkpoints, "tiny-rn"), CPU).channels_last
    assert load_encoder(bert_resnet_spec(checkpoints), CPU).channels_last
    assert not load_encoder(open_clip_spec(checkpoints, "tiny-vit-16"), CPU).channels_last


def test_images_prepared_ahead_in_threads_equal_the_inline_path(checkpoints, blobs):
    enc = load_encoder(open_clip_spec(checkpoints, "tiny-rn"), CPU)
    ids = list(range(len(blobs)))
    inline = encode_images(enc, blobs, ids, 2, workers=0)
    ahead = encode_images(enc, blobs, ids, 2, workers=2)
    np.testing.assert_array_equal(inline, ahead)
    order = [batch for _, batch in prepared_batches(list(range(10)), 3, list, workers=2)]
    assert order == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_auto_batch_size_is_chosen_per_tower_type(checkpoints):
    cnn = load_encoder(open_clip_spec(checkpoints, "tiny-rn"), CPU)
    vit = load_encoder(open_clip_spec(checkpoints, "tiny-vit-16"), CPU)
    assert (cnn.image_tokens, vit.image_tokens) == (None, 17)  # 64² in 16² patches + class
    assert batch_sizes("auto", "cpu", cnn.channels_last, cnn.image_tokens) == (8, 128)
    assert batch_sizes("auto", "cpu", True, None, reduced=True) == (16, 256)
    # Transformer image towers by tokens per batch: ViT-B-16 (197) and ViT-B-32 (50).
    assert batch_sizes("auto", "cpu", False, 197, reduced=True) == (16, 256)
    assert batch_sizes("auto", "cpu", False, 50, reduced=True) == (64, 256)
    assert batch_sizes("auto", "cpu", False, 197) == (8, 128)
    assert batch_sizes("auto", "cpu", False, 50) == (32, 128)
    assert batch_sizes("auto", "cpu", vit.channels_last, vit.image_tokens) == (64, 128)
    assert batch_sizes("auto", "cpu", False, None) == (32, 128)
    assert batch_sizes("auto", "cuda", False, 197, reduced=True) == (128, 128)
    assert batch_sizes(5, "cpu", cnn.channels_last) == (5, 5)


def test_open_clip_checkpoint_that_would_run_code_is_refused(checkpoints, tmp_path, monkeypatch):
    """open_clip loads `checkpoint` itself: a pickle it refuses gets our message, not torch's
    advice to retry with weights_only=False."""
    monkeypatch.chdir(tmp_path)
    state = load_state_dict(checkpoints["tiny-rn"]) | {"extra": RunsCode()}
    torch.save(state, tmp_path / "evil.pt")
    spec = open_clip_spec(checkpoints, "tiny-rn") | {"checkpoint": str(tmp_path / "evil.pt")}
    with pytest.raises(InputError, match="evil.pt holds more than tensors .*posix.mkdir"):
        load_encoder(spec, CPU)
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint" * 8)
    spec = open_clip_spec(checkpoints, "tiny-rn") | {"checkpoint": str(tmp_path / "garbage.pt")}
    with pytest.raises(InputError, match="garbage.pt is not a readable torch checkpoint"):
        load_encoder(spec, CPU)


def test_open_clip_checkpoint_of_another_architecture_names_both(checkpoints):
    spec = open_clip_spec(checkpoints, "tiny-rn") | {"checkpoint": str(checkpoints["tiny-vit-16"])}
    with pytest.raises(InputError, match="does not match architecture 'tiny-rn'.*set `arch`"):
        load_encoder(spec, CPU)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_arch": "resnet999"}, "unknown torchvision image_arch 'resnet999'"),
        ({"image_weights": "BOGUS"}, "'resnet18' has no image_weights 'BOGUS'.*IMAGENET1K_V1"),
    ],
)
def test_unknown_torchvision_model_fails_in_the_shared_pixels_job_too(checkpoints, change, message):
    spec = bert_resnet_spec(checkpoints) | change
    del spec["image_checkpoint"]
    spec.setdefault("image_weights", "IMAGENET1K_V1")
    with pytest.raises(InputError, match=message):
        geometry_of(spec)  # what the `pixels` job builds, before any encode
    with pytest.raises(InputError, match=message):
        load_encoder(spec, CPU)


HUB_COMMIT, MAIN_COMMIT = "a" * 40, "b" * 40


def hub_cache_with(cache: Path, repo_id: str, files_by_commit: dict[str, dict[str, Path]]):
    """An HF hub cache as huggingface_hub writes it: blobs named by sha256, snapshot links,
    refs/main to the last commit given."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for commit, files in files_by_commit.items():
        for name, src in files.items():
            data = src.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            link = repo / "snapshots" / commit / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(blob)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo


@pytest.fixture
def pinned_tag(checkpoints, tmp_path, monkeypatch):
    """A GELU architecture (tiny-rn's shape, `quick_gelu: false`) with a pretrained tag that
    was trained with QuickGELU, hosted on a (cached, offline) hub repo whose main branch has
    moved on to other weights since the pinned commit."""
    import json

    import huggingface_hub.constants
    import open_clip

    arch_cfg = json.loads((DEMO_ARCHS / "tiny-rn.json").read_text()) | {"quick_gelu": False}
    (tmp_path / "tiny-gelu.json").write_text(json.dumps(arch_cfg))
    other = tmp_path / "other.safetensors"
    write_open_clip_checkpoint(str(DEMO_ARCHS / "tiny-rn.json"), str(other), seed=7)
    hub_cache_with(
        tmp_path / "hub",
        "org/tiny-rn",
        {
            HUB_COMMIT: {"open_clip_model.safetensors": checkpoints["tiny-rn"]},
            MAIN_COMMIT: {"open_clip_model.safetensors": other},
        },
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    tag = {"hf_hub": "org/tiny-rn/", "quick_gelu": True, "mean": (0.5, 0.5, 0.5)}
    real = open_clip.get_pretrained_cfg

    def with_tag(arch, name):
        return tag if (arch, name) == ("tiny-gelu", "pinned") else real(arch, name)

    monkeypatch.setattr(open_clip, "get_pretrained_cfg", with_tag)
    monkeypatch.setattr(open_clip.factory, "get_pretrained_cfg", with_tag)  # its own import
    spec = {
        "kind": "open_clip",
        "arch": "tiny-gelu",
        "model_config": str(tmp_path / "tiny-gelu.json"),
    }
    return spec | {"pretrained": "pinned", "revision": HUB_COMMIT}, tmp_path / "hub"


def uses_quick_gelu(model) -> bool:
    return any(type(m).__name__ == "QuickGELU" for m in model.modules())


def test_revision_pins_hub_weights_and_keeps_the_tags_settings(pinned_tag, checkpoints):
    spec, _ = pinned_tag
    enc = load_encoder(spec, CPU, RetrySettings(attempts=2, wait_seconds=0))
    pinned = load_state_dict(checkpoints["tiny-rn"])
    for key, value in enc.model.state_dict().items():
        torch.testing.assert_close(value, pinned[key], msg=key)  # the commit's, not main's
    # The tag's QuickGELU (over the arch's GELU) and normalisation apply.
    assert uses_quick_gelu(enc.model)
    assert tuple(enc.library_preprocess.transforms[-1].mean) == (0.5, 0.5, 0.5)
    # … and the shared pixels job resizes exactly as the loaded model does.
    assert geometry_of(spec).geometry_key == enc.geometry_key


def test_an_unpinned_tag_follows_main_and_still_gets_the_tags_quick_gelu(pinned_tag):
    """open_clip alone would only warn and build GELU for a QuickGELU-trained tag (OpenAI's
    RN50 and ViTs), which changes every embedding."""
    spec, _ = pinned_tag
    unpinned = {k: v for k, v in spec.items() if k != "revision"}
    enc = load_encoder(unpinned, CPU)
    assert uses_quick_gelu(enc.model)
    assert tuple(enc.library_preprocess.transforms[-1].mean) == (0.5, 0.5, 0.5)
    main = load_state_dict(Path(spec["model_config"]).parent / "other.safetensors")
    for key, value in enc.model.state_dict().items():
        torch.testing.assert_close(value, main[key], msg=key)


def test_a_corrupt_pinned_blob_is_caught_before_loading(pinned_tag):
    spec, hub = pinned_tag
    link = hub / "models--org--tiny-rn" / "snapshots" / HUB_COMMIT / "open_clip_model.safetensors"
    blob = link.resolve()
    blob.write_bytes(blob.read_bytes()[:-10])  # truncated on disk
    with pytest.raises(InputError, match="hash to .*the hub's ETag is"):
        load_encoder(spec, CPU, RetrySettings(attempts=1, wait_seconds=0))
    assert not blob.exists()  # deleted, so that the next attempt fetches it anew
    # Offline, the next attempt cannot fetch it and says how to go on.
    with pytest.raises(InputError, match="cannot fetch weights from org/tiny-rn@a+ .*HF_HUB_OFF"):
        load_encoder(spec, CPU, RetrySettings(attempts=2, wait_seconds=0))


def test_revision_needs_hub_weights(checkpoints):
    spec = open_clip_spec(checkpoints, "tiny-rn") | {"revision": HUB_COMMIT}
    with pytest.raises(InputError, match="`revision` pins hub files; local weights have none"):
        load_encoder(spec, CPU)
    spec = {"kind": "open_clip", "arch": "tiny-rn", "model_config": spec["model_config"]}
    with pytest.raises(InputError, match="drop `revision`"):
        load_encoder(spec | {"revision": HUB_COMMIT}, CPU)


def test_revision_pins_an_hf_hub_architecture(checkpoints, tmp_path, monkeypatch):
    """An `hf-hub:` model: its open_clip_config.json and weights, fetched at the commit."""
    import json

    import huggingface_hub.constants

    config = tmp_path / "open_clip_config.json"
    model_cfg = json.loads((DEMO_ARCHS / "tiny-rn.json").read_text())
    config.write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5] * 3}}))
    files = {"open_clip_config.json": config, "open_clip_model.safetensors": checkpoints["tiny-rn"]}
    hub_cache_with(tmp_path / "hub", "org/tiny-hf", {HUB_COMMIT: files})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = {"kind": "open_clip", "arch": "hf-hub:org/tiny-hf", "revision": HUB_COMMIT}
    enc = load_encoder(spec, CPU)
    pinned = load_state_dict(checkpoints["tiny-rn"])
    for key, value in enc.model.state_dict().items():
        torch.testing.assert_close(value, pinned[key], msg=key)
    assert tuple(enc.library_preprocess.transforms[-1].mean) == (0.5, 0.5, 0.5)
    with pytest.raises(InputError, match="cannot fetch config from org/tiny-hf@b+"):
        load_encoder(spec | {"revision": MAIN_COMMIT}, CPU)  # a commit not in the cache


@pytest.mark.parametrize("kind", ["empty.pt", "cut.pt", "cut.safetensors"])
def test_truncated_or_empty_checkpoints_are_named_not_tracebacks(checkpoints, tmp_path, kind):
    path = tmp_path / kind
    if kind == "empty.pt":
        path.write_bytes(b"")
    elif kind == "cut.pt":
        torch.save(load_state_dict(checkpoints["tiny-rn"]), path)
        path.write_bytes(path.read_bytes()[:-4096])
    else:
        path.write_bytes(checkpoints["tiny-rn"].read_bytes()[:-4096])
    message = f"checkpoint {path} is truncated or not a checkpoint at all"
    with pytest.raises(InputError, match=re.escape(message)):
        load_encoder(open_clip_spec(checkpoints, "tiny-rn") | {"checkpoint": str(path)}, CPU)
    with pytest.raises(InputError, match=re.escape(message)):
        load_encoder(bert_resnet_spec(checkpoints) | {"image_checkpoint": str(path)}, CPU)
