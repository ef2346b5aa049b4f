"""The config schema: defaults, the shipped configs, and what it refuses before any job runs."""

import re

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from clipbench.config_checks import DuplicateKey, case_collisions, config_problems, duplicate_keys
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
        "precision": "auto",
        "batch_size": "auto",
        "decode_workers": 1,
        "threads": 4,
    }
    assert cfg["retrieval"]["recall_at"] == [1, 5, 10]


def test_shipped_config_pins_every_hub_download():
    """Weights and data fetched from the hub name a commit, so a later run fetches the same
    bytes (torchvision's weights are checked against the hash in their file name)."""
    cfg = load("config.yaml")
    commit = re.compile(r"[0-9a-f]{40}")
    for dataset in cfg["datasets"].values():
        assert commit.fullmatch(dataset["source"]["hub"]["revision"])
    for name, model in cfg["models"].items():
        if model.get("pretrained"):
            assert commit.fullmatch(model["revision"]), name
        if model["kind"] == "bert_resnet":
            assert commit.fullmatch(model["text_revision"]), name


def test_model_names_that_end_like_per_model_files_are_refused():
    cfg = load("config.yaml")
    cfg["models"]["clip-rn50.i2t"] = cfg["models"]["clip-rn50"]
    assert config_problems(cfg, []) == [
        "model name 'clip-rn50.i2t' ends in '.i2t', which names another model's files "
        "(results/…/<model>.i2t.arrow); rename it"
    ]


def test_demo_config_is_valid():
    validate(load("tests/demo/config.yaml"), SCHEMA)


def test_transformers_and_preset_entries_validate():
    from clipbench.presets import expand_presets

    cfg = load("config.yaml")
    cfg["models"]["siglip"] = {"kind": "transformers", "model": "google/siglip-base-patch16-224"}
    cfg["datasets"] = expand_presets({"flickr": {"preset": "flickr30k-1k"}, **cfg["datasets"]})
    validate(cfg, SCHEMA)
    assert cfg["datasets"]["flickr"]["text_column"] == "caption"
    assert cfg["datasets"]["flickr"]["limit"] is None  # the schema's defaults, filled in


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
        (lambda c: c["queries"].update(top_k=0), "less than the minimum"),
        (lambda c: c["models"]["clip-rn50"].update(revision="main"), "does not match"),
        (lambda c: c["datasets"].update({"/abs": c["datasets"]["pokemon"]}), "does not match"),
        (lambda c: c["datasets"].update({"..": c["datasets"]["pokemon"]}), "does not match"),
        (lambda c: c["queries"].update(texts=[]), "should be non-empty"),
        (lambda c: c["encode"].update(precision="int4"), "is not one of"),
        (lambda c: c.update(modles={}), "Additional properties"),
        (lambda c: c["models"].update(hf={"kind": "transformers"}), "is not valid under any"),
        (
            lambda c: c["models"].update(
                hf={"kind": "transformers", "model": "a/b", "model_dir": "d"}
            ),
            "is valid under each",
        ),
        (lambda c: c["retrieval"].update(ties="random"), "is not one of"),
        (lambda c: c["datasets"]["pokemon"]["source"].update(webdataset={}), "not valid under any"),
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


def test_schema_default_and_refusal_of_on_bad_image():
    cfg = {
        "datasets": {"d": {"source": {"parquet": "x"}}},
        "models": {"m": {"kind": "bert_resnet"}},
    }
    validate(cfg, SCHEMA)
    assert cfg["datasets"]["d"]["on_bad_image"] == "error"
    cfg["datasets"]["d"]["on_bad_image"] = "ignore"
    with pytest.raises(WorkflowError, match=re.escape("'ignore' is not one of ['error', 'skip']")):
        validate(cfg, SCHEMA)


NESTED_DUPLICATE = """\
datasets:
  d:
    source: {parquet: x.parquet}
models:
  a:
    kind: open_clip
    arch: RN50
    pretrained: openai
    arch: ViT-B-32
  b: {kind: bert_resnet, ridge: {folds: 3, folds: 4}}
"""


def test_duplicate_keys_found_at_any_depth_with_their_lines():
    assert duplicate_keys(NESTED_DUPLICATE) == [
        DuplicateKey("models.a", "arch", 9, 7),
        DuplicateKey("models.b.ridge", "folds", 10, 10),
    ]
    assert duplicate_keys("a: 1\nb: [{x: 1}, {x: 2, x: 3}]\na: 2\n") == [
        DuplicateKey("b[1]", "x", 2, 2),
        DuplicateKey("", "a", 3, 1),
    ]
    assert duplicate_keys(yaml.safe_dump(load("config.yaml"))) == []
    assert duplicate_keys((ROOT / "config.yaml").read_text()) == []
    assert duplicate_keys("") == []
    # 1 and "1" are different keys once loaded; anchors and aliases are walked once.
    assert duplicate_keys('m: {1: a, "1": b}\nx: &x {k: 1}\ny: *x\n') == []


def test_duplicate_keys_in_a_json_config_indented_with_tabs():
    text = '{\n\t"models": {\n\t\t"a": {"kind": "bert_resnet"},\n\t\t"a": {}\n\t}\n}\n'
    assert duplicate_keys(text) == [DuplicateKey("models", "a", 4, 3)]


def test_names_equal_after_case_folding_collide():
    cfg = {
        "datasets": {"Pokemon": {}, "naruto": {}, "pokemon": {}},
        "models": {"ViT": {}, "RN": {}},
    }
    (problem,) = case_collisions(cfg)
    assert problem.startswith("datasets 'Pokemon' and 'pokemon' differ only in case")
    assert case_collisions({"datasets": {"Straße": {}}, "models": {"STRASSE": {}}}) == []
    assert (
        "models 'Straße' and 'STRASSE'"
        in case_collisions({"models": {"Straße": 1, "STRASSE": 2}})[0]
    )


def test_config_problems_name_the_file_the_line_and_the_key(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(NESTED_DUPLICATE)
    cfg = yaml.safe_load(NESTED_DUPLICATE)
    cfg["models"]["A"] = cfg["models"]["a"]
    first, second, third = config_problems(cfg, [str(path)])
    assert first.startswith(f"{path}, line 9: key 'arch' appears twice under 'models.a'")
    assert "(first at line 7)" in first and "rename or remove one" in first
    assert second.startswith(f"{path}, line 10: key 'folds'")
    assert third.startswith("models 'a' and 'A' differ only in case")
    assert config_problems(load("config.yaml"), [ROOT / "config.yaml"]) == []
    assert config_problems(load("tests/demo/config.yaml"), [ROOT / "tests/demo/config.yaml"]) == []


@pytest.mark.e2e
@pytest.mark.parametrize(
    "replacement, message",
    [
        (
            "  tiny-rn:\n",
            # the demo config's tiny-rn is at line 17, the model after it at line 22
            r"dup\.yaml, line 22: key 'tiny-rn' appears twice under 'models' \(first at line 17\)",
        ),
        ("  TINY-rn:\n", "models 'tiny-rn' and 'TINY-rn' differ only in case"),
    ],
)
def test_dry_run_refuses_duplicate_model_names_before_any_job(tmp_path, replacement, message):
    from tests.test_workflow import results_files
    from tests.workflow_runs import snakemake, workflow_copy

    root = workflow_copy(tmp_path / "wf")
    demo = (root / "tests/demo/config.yaml").read_text()
    (root / "dup.yaml").write_text(demo.replace("  tiny-vit-32:\n", replacement, 1))
    done = snakemake(root, "-n", "--cores", "1", "--configfile", "dup.yaml", check=False)
    assert done.returncode != 0
    assert re.search(message, done.stdout + done.stderr)
    assert results_files(root) == [] and not (root / "logs").exists()


@pytest.mark.e2e
def test_a_model_added_on_the_command_line_joins_the_configured_ones(tmp_path):
    """`--config` merges into the config file (Snakemake's recursive update): one model more,
    the others kept, validated like any entry."""
    from tests.workflow_runs import job_counts, snakemake, workflow_copy

    root = workflow_copy(tmp_path / "wf")
    extra = "models={hf-extra: {kind: transformers, model: org/dual-encoder, revision: abc123}}"
    done = snakemake(
        root, "-n", "--cores", "1", "--configfile", "tests/demo/config.yaml", "--config", extra
    )
    out = done.stdout + done.stderr
    demo_models = len(yaml.safe_load((root / "tests/demo/config.yaml").read_text())["models"])
    assert job_counts(out)["encode"] == 2 * (demo_models + 1)  # both demo datasets
    assert "model=hf-extra" in out
    refused = snakemake(
        root,
        "-n",
        "--cores",
        "1",
        "--configfile",
        "tests/demo/config.yaml",
        "--config",
        "models={hf-extra: {kind: transformers}}",
        check=False,
    )
    assert refused.returncode != 0 and "is not valid under any" in refused.stdout + refused.stderr
