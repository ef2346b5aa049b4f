"""What every model kind's spec is: the typed, frozen form of one `models:` entry, and what the
workflow asks of it before any job runs (the local files it reads, the view of decoded pixels
it may share, the parameters that decide reruns) and inside a job (its encoder, its
weight-free resize/crop).

Pure Python, no torch: the Snakefile builds every spec on each invocation, the no-op run too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from clipbench.errors import InputError
from clipbench.schema import frozen, schema

if TYPE_CHECKING:
    from clipbench.encoders import Encoder, Geometry
    from clipbench.settings import RetrySettings

# A local weights file decides the resize/crop only by being there (no hub tag's
# preprocessing then applies), not by its path: every such path reads as this.
LOCAL_WEIGHTS = "local file"


def slug(value: Any) -> str:
    """A value as a path part (views name files)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(value)).strip("-")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    kind: ClassVar[str]  # the entry's `kind`, and its schema branch `$defs/<kind>`
    file_fields: ClassVar[tuple[str, ...]] = ()  # local files or folders the model reads
    geometry_fields: ClassVar[tuple[str, ...]] = ()  # fields that decide its resize/crop
    weights_fields: ClassVar[tuple[str, ...]] = ()  # local weights, which decide it by being there

    reference: str | None = None  # its key in the reference tables; decides no result

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> ModelSpec:
        """From a schema-checked entry with its defaults filled in (clipbench.kinds.parse_model)."""
        return cls(**{key: frozen(value) for key, value in entry.items() if key != "kind"})

    def entry(self) -> dict[str, Any]:
        """The entry as the validated config holds it, less `reference`: what decides the
        model's results. Fields the schema gives a default are always there, others when set."""
        defaulted = {
            name
            for name, node in schema()["$defs"][self.kind]["properties"].items()
            if "default" in node
        }
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "reference"}
        return {"kind": self.kind} | {
            name: asdict(value) if is_dataclass(value) else value
            for name, value in values.items()
            if value is not None or name in defaulted
        }

    def param(self) -> str:
        """The encode job's parameter, as sorted JSON: reordering keys in a config file, or
        naming a reference, reruns nothing."""
        return json.dumps(self.entry(), sort_keys=True)

    def local_files(self) -> list[str]:
        """Local files the model reads: its jobs' inputs, so edits rerun them."""
        return [getattr(self, name) for name in self.file_fields if getattr(self, name)]

    def geometry_entry(self) -> dict[str, Any]:
        """The settings that decide the resize/crop, and nothing else: the `pixels` job's
        parameter, so other settings never rerun it. Parses back into a spec of this kind."""
        kept = {name: getattr(self, name) for name in self.geometry_fields}
        weights = {name: LOCAL_WEIGHTS for name in self.weights_fields if getattr(self, name)}
        return {"kind": self.kind} | {k: v for k, v in kept.items() if v is not None} | weights

    def geometry_files(self) -> list[str]:
        """Local files that decide the resize/crop (a custom architecture's config)."""
        names = [n for n in self.file_fields if n in self.geometry_fields]
        return [getattr(self, name) for name in names if getattr(self, name)]

    def view(self) -> str | None:
        """The name of the resize/crop this model is expected to share with others, predicted
        from config files alone (clipbench.pixels checks the prediction in the job); None: it
        decodes its own images."""
        return None

    def load(self, retry: RetrySettings) -> Encoder:
        """The model with its weights, on the CPU (clipbench.kinds.load_encoder moves it)."""
        raise NotImplementedError

    def geometry(self) -> Geometry:
        """The model's resize/crop built without its weights, for the shared `pixels` job."""
        raise InputError(
            f"model kind {self.kind!r} has no shareable geometry; it decodes its own images"
        )

    def clip_benchmark_names(self) -> tuple[str, str]:
        """(model, pretrained) as CLIP_benchmark names a run (clipbench.exports)."""
        return self.kind, ""

    @property
    def fitted_head(self) -> Any | None:
        """Settings of a text→image map fitted after encoding (None: the towers are the model)."""
        return None
