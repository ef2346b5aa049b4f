"""Model kinds as typed specs (clipbench.kinds): what the DAG asks of each before any job runs,
and the one source of defaults (the schema)."""

import json
import subprocess
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
import yaml

from clipbench.errors import InputError
from clipbench.kinds import SPECS, parse_model
from clipbench.kinds.base import LOCAL_WEIGHTS
from clipbench.schema import schema
from clipbench.settings import (
    BootstrapSettings,
    EncodeSettings,
    RetrySettings,
    RobustnessSettings,
    Settings,
)

ROOT = Path(__file__).resolve().parents[1]


def test_every_schema_kind_has_a_module_and_back():
    models = schema()["properties"]["models"]["additionalProperties"]
    assert set(models["properties"]["kind"]["enum"]) == set(SPECS)
    branches = {b["if"]["properties"]["kind"]["const"] for b in models["allOf"]}
    assert branches == set(SPECS) and all(kind in schema()["$defs"] for kind in SPECS)


def test_defaults_come_from_the_schema():
    baseline = parse_model({"kind": "bert_resnet"})
    node = schema()["$defs"]["bert_resnet"]["properties"]
    assert baseline.max_length == node["max_length"]["default"]
    assert baseline.ridge.alphas == tuple(node["ridge"]["properties"]["alphas"]["default"])
    encode = EncodeSettings.parse(None)
    assert encode.threads == schema()["properties"]["encode"]["properties"]["threads"]["default"]
    assert RetrySettings.parse({}).attempts == 4
    assert BootstrapSettings.parse({"seed": 3}) == BootstrapSettings(1000, 3, 0.95)


def test_specs_are_frozen_and_checked_against_the_schema():
    spec = parse_model({"kind": "open_clip", "arch": "RN50", "pretrained": "openai"})
    with pytest.raises(FrozenInstanceError):
        spec.arch = "ViT-B-32"
    with pytest.raises(InputError, match="model 'm': unknown model kind 'sam'"):
        parse_model({"kind": "sam"}, "m")
    with pytest.raises(InputError, match="'arch' is a required property"):
        parse_model({"kind": "open_clip"})
    with pytest.raises(InputError, match="max_length: 1 is less than the minimum of 2"):
        parse_model({"kind": "bert_resnet", "max_length": 1})
    with pytest.raises(InputError, match="config encode precision: 'fp8' is not one of"):
        EncodeSettings.parse({"precision": "fp8"})


def test_param_is_the_validated_entry_less_its_reference():
    # What decided reruns before the typed specs: the schema-validated entry, sorted, without
    # `reference`. The specs must give the same string, or upgrading would rerun every model.
    from snakemake.utils import validate

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    validate(config, str(ROOT / "schemas/config.schema.yaml"))
    settings = Settings.from_config(config)
    for name, entry in config["models"].items():
        less = {key: value for key, value in entry.items() if key != "reference"}
        assert settings.models[name].param() == json.dumps(less, sort_keys=True)
        assert parse_model(json.loads(settings.models[name].param())).param() == (
            settings.models[name].param()
        )
    assert settings.models["clip-vit-b-32"].reference == "openai/ViT-B-32"


def test_each_kind_names_its_local_files():
    open_clip = parse_model(
        {"kind": "open_clip", "arch": "local-dir:m", "checkpoint": "w.pt", "model_config": "a.json"}
    )
    assert open_clip.local_files() == ["w.pt", "a.json", "m"]
    baseline = parse_model(
        {"kind": "bert_resnet", "text_model_dir": "bert", "image_checkpoint": "r.pt"}
    )
    assert baseline.local_files() == ["bert", "r.pt"]
    assert parse_model({"kind": "transformers", "model_dir": "clip"}).local_files() == ["clip"]
    assert parse_model({"kind": "transformers", "model": "org/m"}).local_files() == []


def test_geometry_entry_keeps_what_decides_the_resize_and_nothing_else():
    entry = {"kind": "open_clip", "arch": "ViT-B-32", "checkpoint": "/a/w.pt", "reference": "x"}
    spec = parse_model(entry)
    assert spec.geometry_entry() == {
        "kind": "open_clip",
        "arch": "ViT-B-32",
        "checkpoint": LOCAL_WEIGHTS,  # which file does not matter, only that there is one
    }
    other = parse_model({**entry, "checkpoint": "/b/other.pt", "revision": "c" * 40})
    assert other.geometry_entry() == spec.geometry_entry()
    baseline = {"kind": "bert_resnet", "image_arch": "resnet50", "image_weights": "V1"}
    geometry = {**baseline, "image_size": 224}
    assert parse_model(baseline | {"projection": "ridge"}).geometry_entry() == geometry
    # The `pixels` job parses it back into a spec of the kind, the rest from the defaults.
    assert parse_model(geometry).geometry_entry() == geometry
    with_config = parse_model(
        {"kind": "open_clip", "arch": "c", "model_config": "c.json", "checkpoint": "w"}
    )
    assert with_config.geometry_files() == ["c.json"]


def test_views_per_kind():
    assert parse_model({"kind": "open_clip", "arch": "ViT-B-32"}).view() == (
        "open_clip-224px-bicubic-shortest"
    )
    assert parse_model({"kind": "open_clip", "arch": "hf-hub:org/m"}).view() is None
    baseline = parse_model({"kind": "bert_resnet"})
    assert baseline.view() == "torchvision-resnet50-IMAGENET1K_V1"
    assert parse_model({"kind": "transformers", "model": "org/m"}).view() is None


def test_robustness_param_leaves_out_which_datasets_run():
    one = RobustnessSettings.parse({"enabled": True, "datasets": ["a"]})
    two = RobustnessSettings.parse({"enabled": True, "datasets": ["a", "b"]})
    assert one.perturbations_param() == two.perturbations_param()
    assert one.runs_on("a") and not one.runs_on("b") and two.runs_on("b")
    assert RobustnessSettings.from_param(one.perturbations_param()).noise_sigmas == one.noise_sigmas
    assert not RobustnessSettings.parse({"datasets": ["a"]}).runs_on("a")  # not enabled


def test_kinds_import_without_torch():
    # The Snakefile parses every spec on each invocation, the no-op run too.
    code = (
        "import sys, clipbench.kinds, clipbench.settings;"
        "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_open_clip_is_imported_without_transformers_unless_the_arch_uses_it():
    """A CLIP job skips transformers' 0.55 s import; an HF text tower later in the same process
    still finds it (open_clip's HF module imported again), and one first needs no reload."""
    code = """
import sys
from clipbench.kinds import parse_model
from clipbench.kinds.open_clip import import_open_clip

def spec(arch):
    return parse_model({"kind": "open_clip", "arch": arch})

open_clip = import_open_clip(spec("RN50"))
assert "transformers" not in sys.modules and open_clip.hf_model.transformers is None
import transformers  # the rest of the process may still use it
assert "hf_model_name" in open_clip.get_model_config("roberta-ViT-B-32")["text_cfg"]
import_open_clip(spec("roberta-ViT-B-32"))
assert open_clip.hf_model.transformers is transformers
assert open_clip.hf_model.AutoConfig is transformers.AutoConfig
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    first_hf = (
        "import sys; from clipbench.kinds import parse_model;"
        "from clipbench.kinds.open_clip import import_open_clip;"
        "m = import_open_clip(parse_model({'kind': 'open_clip', 'arch': 'roberta-ViT-B-32'}));"
        "assert m.hf_model.transformers is sys.modules['transformers']"
    )
    subprocess.run([sys.executable, "-c", first_hf], check=True, cwd=ROOT)
