"""Model kinds, one module each (like CLIP_benchmark's model loaders): every module in this
package holds one kind's typed spec (``SPEC``, a :class:`~clipbench.kinds.base.ModelSpec`),
its encoder and its weight-free resize/crop. Adding a kind is a module here and its branch in
the config schema (``$defs/<kind>``, and the kind's name in ``models``' enum).

Pure Python at import (the kind modules import torch and their libraries only to load): the
Snakefile parses every model entry on each invocation.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from clipbench.errors import InputError
from clipbench.kinds.base import ModelSpec
from clipbench.schema import with_defaults
from clipbench.settings import ONE_ATTEMPT, RetrySettings

if TYPE_CHECKING:
    import torch

    from clipbench.encoders import Encoder, Geometry


def _discover() -> dict[str, type[ModelSpec]]:
    specs = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            spec = importlib.import_module(f"{__name__}.{module.name}").SPEC
            specs[spec.kind] = spec
    return specs


SPECS: dict[str, type[ModelSpec]] = _discover()


def parse_model(entry: Mapping[str, Any] | ModelSpec, name: str | None = None) -> ModelSpec:
    """A `models:` entry as its kind's spec, checked against the kind's schema branch with the
    schema's defaults filled in (``name``: the model's, for messages). A spec passes as is."""
    if isinstance(entry, ModelSpec):
        return entry
    what = f"model {name!r}" if name else "model"
    kind = entry.get("kind")
    if kind not in SPECS:
        raise InputError(f"{what}: unknown model kind {kind!r}; choose one of {sorted(SPECS)}")
    return SPECS[kind].from_entry(with_defaults(entry, ("$defs", kind), what))


def load_encoder(
    spec: ModelSpec | Mapping[str, Any],
    device: torch.device,
    retry: RetrySettings = ONE_ATTEMPT,
) -> Encoder:
    """The model with its weights on ``device``; ``retry`` (config `download`) governs the hub
    files fetched through clipbench.hub."""
    return parse_model(spec).load(retry).to(device)


def geometry_of(spec: ModelSpec | Mapping[str, Any]) -> Geometry:
    """The model's resize/crop without its weights (the `pixels` job), written down in the
    cache folder once per library version (clipbench.geometries)."""
    from clipbench.geometries import cached_geometry

    return cached_geometry(parse_model(spec))
