"""Named dataset entries (``clipbench/presets.yaml``): the field's standard test sets, enabled
with ``preset: <name>``. Expanded before the config is validated, so a preset entry is checked
and given defaults exactly like one written out by hand."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from clipbench.errors import InputError

PRESETS_FILE = Path(__file__).with_name("presets.yaml")


def presets() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(PRESETS_FILE.read_text(encoding="utf-8"))


def expand_presets(datasets: dict[str, Any]) -> dict[str, Any]:
    """Every dataset entry with its preset's keys filled in (keys written in the entry win)."""
    known = presets()
    out = {}
    for name, entry in datasets.items():
        if not isinstance(entry, dict) or "preset" not in entry:
            out[name] = entry
            continue
        preset = entry["preset"]
        if preset not in known:
            raise InputError(
                f"dataset {name!r}: unknown preset {preset!r}; choose one of {sorted(known)}"
            )
        out[name] = copy.deepcopy(known[preset]) | entry
    return out
