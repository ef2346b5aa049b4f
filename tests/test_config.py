"""The config schema: defaults, the shipped configs, and what it refuses before any job runs."""

import re

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from tests.conftest import ROOT

SCHEMA = str(ROOT / "schemas" / "config.schema.yaml")


def load(path):
    return yaml.safe_load((ROOT / path).read_text())


def test_default_config_is_the_seed_study():
    cfg = load("config.yaml")
    validate(cfg, SCHEMA)
    assert list(cfg["models"]) == [
        "clip-rn50",
        "clip-vit-b-32",
        "clip-vit-b-16",
        "bert-resnet50",
        "bert-resnet50-ridge",
    ]
    assert [(m.get("arch"), m.get("pretrained")) for m in cfg["models"].values()][:3] == [
        ("RN50", "openai"),
        ("ViT-B-32", "openai"),
        ("ViT-B-16", "openai"),
    ]
    base = cfg["models"]["bert-resnet50"]
    assert (base["text_model"], base["image_arch"], base["image_weights"]) == (
        "bert-base-uncased",
        "resnet50",
        "IMAGENET1K_V1",
    )
    hub = cfg["datasets"]["pokemon"]["source"]["hub"]
    assert hub["revision"] == "3790f29981f74ca26bf11662048342e19c5b615e"
    assert cfg["retrieval"]["top_k"] == 5
    assert cfg["queries"]["texts"] == [
        "flying in the sky",
        "mouth open",
        "a yellow cat",
        "a red ball",
    ]


def test_schema_fills_defaults_per_model_kind():
    cfg = {
        "datasets": {"d": {"source": {"parquet": "x.parquet"}}},
        "models": {
            "a": {"kind": "open_clip", "arch": "RN50", "pretrained": "openai"},
            "b": {"kind": "bert_resnet"},
        },
    }
    validate(cfg, SCHEMA)
    assert cfg["models"]["a"] == {"kind": "open_clip", "arch": "RN50", "pretrained": "openai"}
    assert cfg["models"]["b"]["max_length"] == 512 and cfg["models"]["b"]["projection_seed"] == 0
    assert cfg["datasets"]["d"]["image_column"] == "image"
    assert cfg["encode"] == {
        "device": "auto",
        "precision": "fp32",
        "batch_size": "auto",
        "decode_workers": 1,
        "threads": 4,
    }
    assert cfg["retrieval"]["recall_at"] == [1, 5, 10]


def test_demo_config_is_valid():
    validate(load("tests/demo/config.yaml"), SCHEMA)


def bad(mutate):
    cfg = load("config.yaml")
    mutate(cfg)
    return cfg


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c["models"]["clip-rn50"].update(kind="sam"), "'sam' is not one of"),
        (lambda c: c["models"]["clip-rn50"].update(checkpoint="w.pt"), "should not be valid"),
        (lambda c: c["models"].update({"../x": {"kind": "bert_resnet"}}), "does not match"),
        (lambda c: c["datasets"]["pokemon"]["source"].update(parquet="x"), "is valid under each"),
        (lambda c: c["datasets"]["pokemon"]["source"].update(sha256="abc"), "does not match"),
        (lambda c: c["retrieval"].update(top_k=0), "less than the minimum"),
        (lambda c: c["queries"].update(texts=[]), "should be non-empty"),
        (lambda c: c["encode"].update(precision="int4"), "is not one of"),
        (lambda c: c.update(modles={}), "Additional properties"),
    ],
)
def test_schema_refuses(mutate, message):
    with pytest.raises(WorkflowError, match=re.escape(message)):
        validate(bad(mutate), SCHEMA)


def pins(lines):
    return {
        re.split(r"==", line.strip())[0].lower().replace("_", "-"): line.strip()
        for line in lines
        if "==" in line and not line.strip().startswith("#")
    }


def test_conda_env_pins_match_requirements():
    req = pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "envs" / "clipbench.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert {k: v.replace("_", "-").lower() for k, v in pins(pip_section).items()} == {
        k: v.replace("_", "-").lower() for k, v in req.items()
    }
    assert {"torch", "open-clip-torch", "snakemake"} <= set(req)
