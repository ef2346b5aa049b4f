import pytest

from clipbench.errors import InputError
from clipbench.model_kinds import KINDS, LOCAL_WEIGHTS, kind_of


def test_each_kind_names_its_local_files():
    open_clip = {
        "kind": "open_clip",
        "arch": "local-dir:m",
        "checkpoint": "w.pt",
        "model_config": "a.json",
    }
    assert kind_of(open_clip).local_files(open_clip) == ["w.pt", "a.json", "m"]
    baseline = {"kind": "bert_resnet", "text_model_dir": "bert", "image_checkpoint": "r.pt"}
    assert kind_of(baseline).local_files(baseline) == ["bert", "r.pt"]
    hf = {"kind": "transformers", "model_dir": "clip"}
    assert kind_of(hf).local_files(hf) == ["clip"]
    assert kind_of({"kind": "transformers", "model": "org/m"}).local_files({"model": "org/m"}) == []


def test_geometry_param_keeps_what_decides_the_resize_and_nothing_else():
    spec = {"kind": "open_clip", "arch": "ViT-B-32", "checkpoint": "/a/w.pt", "reference": "x"}
    assert kind_of(spec).geometry_param(spec) == {
        "kind": "open_clip",
        "arch": "ViT-B-32",
        "checkpoint": LOCAL_WEIGHTS,  # which file does not matter, only that there is one
    }
    other = {**spec, "checkpoint": "/b/other.pt", "revision": "c" * 40}
    assert kind_of(other).geometry_param(other) == kind_of(spec).geometry_param(spec)
    baseline = {
        "kind": "bert_resnet",
        "image_arch": "resnet50",
        "image_weights": "V1",
        "projection": "ridge",
    }
    assert kind_of(baseline).geometry_param(baseline) == {
        "kind": "bert_resnet",
        "image_arch": "resnet50",
        "image_weights": "V1",
    }
    assert kind_of({"kind": "open_clip", "model_config": "c.json"}).geometry_files(
        {"model_config": "c.json", "checkpoint": "w"}
    ) == ["c.json"]


def test_views_per_kind():
    assert KINDS["open_clip"].view({"kind": "open_clip", "arch": "ViT-B-32"}) == (
        "open_clip-224px-bicubic-shortest"
    )
    assert KINDS["open_clip"].view({"kind": "open_clip", "arch": "hf-hub:org/m"}) is None
    baseline = {"image_arch": "resnet50", "image_weights": "IMAGENET1K_V1"}
    assert KINDS["bert_resnet"].view(baseline) == "torchvision-resnet50-IMAGENET1K_V1"
    assert KINDS["transformers"].view({"model": "org/m"}) is None
    with pytest.raises(InputError, match="unknown model kind 'sam'"):
        kind_of({"kind": "sam"})
