"""What the workflow must know of each model kind before any job runs, asked of the kind
rather than held as key lists in rules/common.smk: the local files a model reads (its jobs'
inputs), the view of decoded pixels it may share (clipbench.views) and the settings that decide
that view's resize/crop (the `pixels` job's param, so other settings never rerun it).

Pure Python, no torch: the Snakefile imports it on every invocation, the no-op run included.
Adding a kind: a :class:`ModelKind` here, its encoder class (clipbench.encoders), a schema
branch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clipbench.errors import InputError
from clipbench.views import no_view, open_clip_view, torchvision_view

# A local weights file decides the resize/crop only by being there (no hub tag's
# preprocessing then applies), not by its path: every such path reads as this.
LOCAL_WEIGHTS = "local file"


@dataclass(frozen=True)
class ModelKind:
    name: str
    file_keys: tuple[str, ...]  # spec keys naming local files or folders the model reads
    geometry_keys: tuple[str, ...]  # spec keys that decide its resize/crop
    weights_keys: tuple[str, ...]  # …of those, the local weights (present or not)
    view: Callable[[dict[str, Any]], str | None]
    local_dir_arch: bool = False  # `arch: local-dir:<folder>` reads that folder

    def local_files(self, spec: dict[str, Any]) -> list[str]:
        files = [spec[key] for key in self.file_keys if key in spec]
        arch = spec.get("arch", "")
        if self.local_dir_arch and arch.startswith("local-dir:"):
            files.append(arch.removeprefix("local-dir:"))
        return files

    def geometry_param(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The settings of ``spec`` that decide its resize/crop, and nothing else."""
        kept = {key: spec[key] for key in self.geometry_keys if key in spec}
        return kept | {key: LOCAL_WEIGHTS for key in self.weights_keys if key in spec}

    def geometry_files(self, spec: dict[str, Any]) -> list[str]:
        """Local files that decide the resize/crop (a custom architecture's config)."""
        return [spec[key] for key in self.file_keys if key in self.geometry_keys and key in spec]


KINDS = {
    kind.name: kind
    for kind in (
        ModelKind(
            "open_clip",
            file_keys=("checkpoint", "model_config"),
            geometry_keys=("kind", "arch", "model_config", "pretrained"),
            weights_keys=("checkpoint",),
            view=open_clip_view,
            local_dir_arch=True,
        ),
        ModelKind(
            "bert_resnet",
            file_keys=("text_model_dir", "image_checkpoint"),
            geometry_keys=("kind", "image_arch", "image_weights", "image_size"),
            weights_keys=("image_checkpoint",),
            view=torchvision_view,
        ),
        ModelKind(
            "transformers",
            file_keys=("model_dir",),
            geometry_keys=(),
            weights_keys=(),
            view=no_view,
        ),
    )
}


def kind_of(spec: dict[str, Any]) -> ModelKind:
    kind = spec.get("kind")
    if kind not in KINDS:
        raise InputError(f"unknown model kind {kind!r}; choose one of {sorted(KINDS)}")
    return KINDS[kind]
