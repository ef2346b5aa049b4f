"""Shared fixtures: tiny random checkpoints written and loaded with the real loaders."""

from __future__ import annotations

import atexit
import hashlib
import io
import os
import shutil
import tempfile

# Tests never touch the network: the hub libraries fail fast instead of trying.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Derived caches (the report's JavaScript bundle) in a folder of this run, not the user's,
# removed when the run ends.
if "CLIPBENCH_CACHE" not in os.environ:
    os.environ["CLIPBENCH_CACHE"] = tempfile.mkdtemp(prefix="clipbench-cache-")
    atexit.register(shutil.rmtree, os.environ["CLIPBENCH_CACHE"], ignore_errors=True)
from pathlib import Path

import pytest
import torch
from PIL import Image

from clipbench import demo as inputs
from clipbench.hub import git_blob_sha1

ROOT = Path(__file__).resolve().parents[1]
DEMO_ARCHS = ROOT / "tests" / "demo" / "open_clip"


def png_bytes(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Random tiny open_clip ViT/RN checkpoints, a tiny BERT and a resnet18, written once."""
    out = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for arch in ("tiny-vit-16", "tiny-rn", "tiny-vit-32"):
        paths[arch] = out / f"{arch}.safetensors"
        inputs.write_open_clip_checkpoint(str(DEMO_ARCHS / f"{arch}.json"), str(paths[arch]), 0)
    paths["bert"] = out / "bert"
    inputs.write_bert(str(paths["bert"]), 0)
    paths["resnet18"] = out / "resnet18.safetensors"
    inputs.write_torchvision_checkpoint("resnet18", str(paths["resnet18"]), 0)
    return paths


def open_clip_spec(checkpoints, arch: str = "tiny-vit-16") -> dict:
    return {
        "kind": "open_clip",
        "arch": arch,
        "model_config": str(DEMO_ARCHS / f"{arch}.json"),
        "checkpoint": str(checkpoints[arch]),
    }


def bert_resnet_spec(checkpoints) -> dict:
    return {
        "kind": "bert_resnet",
        "text_model": "bert-base-uncased",
        "text_model_dir": str(checkpoints["bert"]),
        "max_length": 64,
        "image_arch": "resnet18",
        "image_checkpoint": str(checkpoints["resnet18"]),
        "image_size": 224,
        "projection_seed": 0,
    }


def spec_for(checkpoints, name: str) -> dict:
    """The demo spec of an open_clip tiny arch, or of the BERT + resnet18 baseline."""
    return (
        bert_resnet_spec(checkpoints)
        if name == "bert_resnet"
        else open_clip_spec(checkpoints, name)
    )


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    """The whole offline demo, run once in a copy of the workflow and shared by the e2e tests."""
    from tests.workflow_runs import DEMO, snakemake, workflow_copy

    root = workflow_copy(tmp_path_factory.mktemp("demo"))
    snakemake(root, *DEMO)
    return root


def offline_python(script: str, argument: str, cache: Path) -> dict:
    """``script`` run in a fresh process with the hub client offline on the HF cache
    ``cache`` (the same hub calls as online, answered from it); its last line, as JSON."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    done = subprocess.run(
        [sys.executable, "-c", script, argument],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=os.getcwd(),
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def hf_cache_repo(
    cache: Path, repo_id: str, commit: str, files: dict[str, bytes], ref=None, kind="datasets"
):
    """A hub repo (``kind``: datasets or models) in the Hugging Face cache layout:
    content-addressed blobs (sha256 for LFS files, the git blob id for small text files, as
    the hub's ETags), snapshot links, and the branch ref file a named revision resolves
    through."""
    repo = cache / f"{kind}--{repo_id.replace('/', '--')}"
    for name, data in files.items():
        blob_dir = repo / "blobs"
        blob_dir.mkdir(parents=True, exist_ok=True)
        tmp = blob_dir / "tmp"
        tmp.write_bytes(data)
        lfs = Path(name).suffix in (".parquet", ".tar", ".safetensors", ".bin")
        blob = blob_dir / (hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(tmp))
        tmp.rename(blob)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
