"""Every precision setting means the same accuracy on every machine."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from clipbench import fp32_modes as modes
from clipbench import precision as p
from clipbench.embeddings import l2_normalize
from clipbench.encode import encode_images, encode_texts
from clipbench.errors import InputError
from clipbench.fp32_modes import FP32_LEVEL_ERROR, fp32_error, fp32_matmul_level
from clipbench.kinds import load_encoder
from clipbench.precision import resolve_precision
from tests.conftest import bert_resnet_spec, open_clip_spec
from tests.test_encode import CAPTIONS

CPU = torch.device("cpu")


@pytest.fixture
def fresh_probe(tmp_path, monkeypatch):
    """No choice made or kept yet: an empty cache folder, nothing remembered in-process."""
    monkeypatch.setenv("CLIPBENCH_CACHE", str(tmp_path))
    fp32_matmul_level.cache_clear()
    modes.fp32_post_ops.cache_clear()
    yield
    fp32_matmul_level.cache_clear()
    modes.fp32_post_ops.cache_clear()


def test_fp32_runs_another_matmul_mode_only_at_float32_error_and_when_faster(fresh_probe):
    level = fp32_matmul_level(CPU)
    assert fp32_error(CPU, level) <= FP32_LEVEL_ERROR
    assert fp32_error(CPU, "highest") <= 1e-6
    if level != "highest":  # what made it win is kept beside the choice
        (kept,) = kept_choices()
        rates = json.loads(kept.read_text())["gflops"]
        assert rates[level] >= modes.FASTER_BY * rates["highest"]
        assert not modes.same_kernels(CPU, level)


def kept_choices() -> list[Path]:
    return sorted((Path(os.environ["CLIPBENCH_CACHE"]) / "fp32-matmul").glob("*.json"))


@pytest.fixture
def machine(monkeypatch, fresh_probe):
    """A device whose modes have the errors and block rates a test sets; timings counted."""
    errors = {"medium": 9e-7, "high": 5e-7}
    rates = {"highest": 200.0, "high": 200.0, "medium": 250.0}
    timed = []

    def block_rates(device, levels):
        timed.append(tuple(levels))
        return {level: rates[level] for level in levels}

    monkeypatch.setattr(modes, "fp32_error", lambda device, level: errors[level])
    monkeypatch.setattr(modes, "same_kernels", lambda device, level: level == "high")
    monkeypatch.setattr(modes, "block_rates", block_rates)
    return errors, rates, timed


def test_a_matmul_mode_computing_in_bf16_is_refused_for_fp32(machine):
    errors, rates, timed = machine
    errors["medium"] = 2.4e-3  # what an AMX CPU measures: bf16 inside
    assert fp32_matmul_level(CPU) == "highest"
    assert timed == []  # "high" runs the same kernels as "highest": nothing to time


def test_an_accurate_mode_runs_only_where_it_times_faster(machine, monkeypatch):
    errors, rates, timed = machine
    assert fp32_matmul_level(CPU) == "medium"  # Zen 4: oneDNN beats MKL
    assert timed == [("highest", "medium")]
    rates["medium"] = 150.0  # an Intel Xeon without AMX: MKL beats oneDNN
    monkeypatch.setattr(modes, "cpu_identity", lambda: "another CPU")  # chosen anew
    fp32_matmul_level.cache_clear()
    assert fp32_matmul_level(CPU) == "highest"
    assert len(kept_choices()) == 2
    assert modes.fastest_level({"highest": 200.0, "medium": 205.0}) == "highest"  # noise


def test_the_choice_is_timed_once_per_machine_and_kept(machine):
    errors, rates, timed = machine
    assert fp32_matmul_level(CPU) == "medium"
    fp32_matmul_level.cache_clear()  # a later job on the same machine
    rates["medium"] = 150.0  # would choose otherwise now: the kept choice holds
    assert fp32_matmul_level(CPU) == "medium"
    assert len(timed) == 1
    (kept,) = kept_choices()
    kept.write_text("{not json")  # a damaged file is measured again
    fp32_matmul_level.cache_clear()
    assert fp32_matmul_level(CPU) == "highest"
    assert len(timed) == 2 and json.loads(kept.read_text())["level"] == "highest"


def test_block_rates_time_every_level_on_this_machine():
    rates = modes.block_rates(CPU, ["highest", "medium"], rounds=1)
    assert set(rates) == {"highest", "medium"} and min(rates.values()) > 0
    assert torch.get_float32_matmul_precision() == "highest"  # restored afterwards


def test_float32_epilogues_leave_onednns_post_ops_only_where_that_times_faster(
    fresh_probe, monkeypatch
):
    timed = []
    rates = {"post-op": 120.0, "separate": 150.0}  # a 2-core Zen 3: MKL beats oneDNN

    def epilogue_rates(device, level):
        timed.append(level)
        return dict(rates)

    monkeypatch.setattr(modes, "fp32_matmul_level", lambda device: "highest")
    monkeypatch.setattr(modes, "epilogue_rates", epilogue_rates)
    assert modes.fp32_post_ops(CPU) is False
    modes.fp32_post_ops.cache_clear()  # a later job on the same machine: the kept choice
    rates["separate"] = 100.0
    assert modes.fp32_post_ops(CPU) is False and timed == ["highest"]
    monkeypatch.setattr(modes, "fp32_matmul_level", lambda device: "medium")  # chosen anew
    modes.fp32_post_ops.cache_clear()
    rates["separate"] = 123.0  # within noise: the post-ops stay
    assert modes.fp32_post_ops(CPU) is True and timed == ["highest", "medium"]
    fp32 = p.Precision("fp32", "fp32", CPU, "medium", False, False)
    assert fp32.describe(fused=True)["float32_epilogues"] == "oneDNN post-ops"
    assert "float32_epilogues" not in fp32.describe()  # no fused linears ran: nothing to say


def test_epilogue_rates_time_both_ways_on_this_machine():
    rates = modes.epilogue_rates(CPU, "highest", rounds=1)
    assert set(rates) == set(modes.EPILOGUES) and min(rates.values()) > 0


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
    conv_default = torch.backends.cudnn.conv.fp32_precision
    with strict.context():
        assert torch.get_float32_matmul_precision() == "highest"
        # "highest" alone would leave cuDNN's float32 convolutions in TF32.
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.backends.cudnn.conv.fp32_precision == conv_default
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


def test_a_cache_folder_that_cannot_be_written_still_gives_a_choice(machine, monkeypatch, tmp_path):
    errors, rates, timed = machine
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("CLIPBENCH_CACHE", str(blocked))  # its folders cannot be made
    assert fp32_matmul_level(CPU) == "medium"
    assert len(timed) == 1
