"""Every precision setting means the same accuracy on every machine."""

import numpy as np
import pytest
import torch

from clipbench import precision as p
from clipbench.embeddings import l2_normalize
from clipbench.encode import encode_images, encode_texts
from clipbench.errors import InputError
from clipbench.kinds import load_encoder
from clipbench.precision import (
    FP32_LEVEL_ERROR,
    fp32_error,
    fp32_matmul_level,
    resolve_precision,
)
from tests.conftest import bert_resnet_spec, open_clip_spec
from tests.test_encode import CAPTIONS

CPU = torch.device("cpu")


@pytest.fixture
def fresh_probe():
    fp32_matmul_level.cache_clear()
    yield
    fp32_matmul_level.cache_clear()


def test_fp32_uses_a_fast_matmul_mode_only_where_it_measures_float32_error(fresh_probe):
    level = fp32_matmul_level(CPU)
    medium_error = fp32_error(CPU, "medium")
    # On AMX CPUs "medium" computes float32 matmuls in bf16 (~2e-3): refused there.
    assert (level == "medium") == (medium_error <= FP32_LEVEL_ERROR)
    assert fp32_error(CPU, level) <= FP32_LEVEL_ERROR
    assert fp32_error(CPU, "highest") <= 1e-6


def test_a_matmul_mode_computing_in_bf16_is_refused_for_fp32(monkeypatch, fresh_probe):
    errors = {"medium": 2.4e-3, "high": 5e-7}  # what an AMX CPU measures
    monkeypatch.setattr(p, "fp32_error", lambda device, level: errors[level])
    assert fp32_matmul_level(CPU) == "high"
    fp32_matmul_level.cache_clear()
    errors["high"] = 1e-3  # TF32 on CUDA
    assert fp32_matmul_level(CPU) == "highest"
    fp32_matmul_level.cache_clear()
    errors["medium"] = 9e-7  # a CPU whose fast path stays at float32 error
    assert fp32_matmul_level(CPU) == "medium"


def test_auto_is_the_native_reduced_precision_else_fp32(monkeypatch):
    monkeypatch.setattr(p, "native_reduced", lambda device: "bf16")
    auto = resolve_precision("auto", CPU)
    assert (auto.requested, auto.name, auto.cast_weights, auto.dtype) == (
        "auto",
        "bf16",
        True,
        torch.bfloat16,
    )
    monkeypatch.setattr(p, "native_reduced", lambda device: None)
    assert resolve_precision("auto", CPU).name == "fp32"


def test_native_reduced_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert p.native_reduced(CPU) is None  # AVX2-only: bf16 would be emulated
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert p.native_reduced(CPU) == "bf16"


def test_each_mechanism_runs_in_the_grad_mode_it_needs():
    cast = resolve_precision("bf16", CPU)
    assert cast.cast_weights and not cast.autocast
    with cast.context():
        assert torch.is_inference_mode_enabled()
    cuda_like = p.Precision("bf16", "bf16", CPU, "highest", False, True)
    with cuda_like.context():
        # Autocast's cache of cast weights works only outside inference_mode.
        assert not torch.is_inference_mode_enabled() and not torch.is_grad_enabled()
        assert torch.is_autocast_enabled("cpu")
    strict = resolve_precision("fp32-strict", CPU)
    assert strict.strict and strict.describe()["mechanism"] == "float32"
    with strict.context():
        assert torch.get_float32_matmul_precision() == "highest"
    with pytest.raises(InputError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)


@pytest.mark.parametrize("which", ["open_clip", "bert_resnet"])
def test_every_precision_stays_within_its_bound_of_strict_fp32(checkpoints, which):
    from clipbench.demo import demo_rows

    blobs = demo_rows(6, seed=3)[0]
    ids = list(range(len(blobs)))
    spec = open_clip_spec(checkpoints) if which == "open_clip" else bert_resnet_spec(checkpoints)
    strict_enc = load_encoder(spec, CPU)
    strict = l2_normalize(encode_images(strict_enc, blobs, ids, 3, "fp32-strict"))
    strict_text = l2_normalize(encode_texts(strict_enc, CAPTIONS, 3, "fp32-strict"))
    names = ["fp32", "auto", "bf16"]
    for name in names:
        policy = resolve_precision(name, CPU)
        enc = load_encoder(spec, CPU)  # a bf16 cast is one-way
        images = l2_normalize(encode_images(enc, blobs, ids, 3, policy))
        texts = l2_normalize(encode_texts(enc, CAPTIONS, 3, policy))
        for got, want in ((images, strict), (texts, strict_text)):
            distance = (1 - np.sum(got * want, axis=1)).max()
            assert distance <= policy.deviation_bound, (name, distance)
