"""Which models can share a dataset's decoded images, decided when the DAG is built.

Pure Python on purpose (no torch, no open_clip import): the Snakefile calls this on every
invocation, including the no-op run. A *view* names the resize/crop geometry a model expects;
models with the same view get one `pixels` job per dataset. The name is a prediction from the
config files alone: the encode job compares the stored pixels' exact geometry with its own
model's and decodes itself if they differ, so a wrong prediction costs time, never results.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

SHORTEST, BICUBIC = "shortest", "bicubic"  # open_clip's defaults (PreprocessCfg)


def _open_clip_config(spec: dict[str, Any]) -> dict[str, Any] | None:
    if spec.get("model_config"):
        path = Path(spec["model_config"])
    else:
        found = importlib.util.find_spec("open_clip")  # locates the package, does not import it
        if found is None or not found.submodule_search_locations:
            return None
        path = Path(found.submodule_search_locations[0]) / "model_configs" / f"{spec['arch']}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(value)).strip("-")


def open_clip_view(spec: dict[str, Any]) -> str | None:
    if ":" in spec["arch"]:  # hf-hub:/local-dir: configs are not readable before the job
        return None
    config = _open_clip_config(spec)
    if config is None:
        return None
    size = config.get("vision_cfg", {}).get("image_size")
    if isinstance(size, list):
        size = "x".join(map(str, size))
    pre = config.get("preprocess_cfg", {})
    mode, interpolation = pre.get("resize_mode", SHORTEST), pre.get("interpolation", BICUBIC)
    return _slug(f"open_clip-{size}px-{interpolation}-{mode}")


def torchvision_view(spec: dict[str, Any]) -> str | None:
    if spec.get("image_checkpoint"):  # ImageClassification(crop_size=image_size) defaults
        return _slug(f"imagenet-crop{spec['image_size']}")
    return _slug(f"torchvision-{spec['image_arch']}-{spec['image_weights']}")


def no_view(spec: dict[str, Any]) -> None:
    """A kind whose preprocessing no other model provably shares: it decodes its own images."""
    return None
