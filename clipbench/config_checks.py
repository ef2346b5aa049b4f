"""What the schema cannot see in a config: keys a file repeats (PyYAML, and json too, silently
keep the last, so a second model of the same name replaces the first) and dataset or model names
that differ only in case (their results would share paths on case-insensitive filesystems),
and model names that end like another model's per-model files (`x.i2t` beside `x`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import yaml

NAMED_SECTIONS = ("datasets", "models")
# Per-model files are results/<dataset>/<stage>/<model>[.i2t|.kde|.ranks].arrow.
RESERVED_SUFFIXES = (".i2t", ".kde", ".ranks")


class DuplicateKey(NamedTuple):
    mapping: str  # dotted path of the mapping holding the key ("" for the top level)
    key: str
    line: int  # 1-based, of the repeat
    first_line: int


def _compose(text: str) -> yaml.Node | None:
    # Snakemake reads a config as JSON first, then as YAML. JSON is YAML to PyYAML except for
    # tabs, which JSON allows only as whitespace: spaces keep its meaning and its line numbers.
    try:
        json.loads(text)
        text = text.replace("\t", " ")
    except ValueError:
        pass
    return yaml.compose(text, Loader=yaml.SafeLoader)


def duplicate_keys(text: str) -> list[DuplicateKey]:
    """Every key repeated within one mapping of a YAML or JSON text, at any depth."""
    found: list[DuplicateKey] = []
    seen: set[int] = set()

    def walk(node: yaml.Node, path: str) -> None:
        if id(node) in seen:  # an alias repeats a node already walked (and may be recursive)
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    line = key.start_mark.line + 1
                    # The tag tells 1 (int) from "1" (str): different keys once loaded.
                    if (key.tag, key.value) in first:
                        found.append(DuplicateKey(path, key.value, line, first[key.tag, key.value]))
                    else:
                        first[key.tag, key.value] = line
                    walk(value, f"{path}.{key.value}" if path else key.value)
                else:
                    walk(value, path)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, f"{path}[{index}]")

    root = _compose(text)
    if root is not None:
        walk(root, "")
    return found


def case_collisions(config: Mapping[str, Any]) -> list[str]:
    """Dataset or model names equal after case-folding, one message per pair."""
    problems = []
    for section in NAMED_SECTIONS:
        names = config.get(section)
        first: dict[str, str] = {}
        for name in names if isinstance(names, Mapping) else ():
            folded = str(name).casefold()
            if folded in first:
                problems.append(
                    f"{section} {first[folded]!r} and {name!r} differ only in case: their "
                    "results would overwrite each other on a case-insensitive filesystem "
                    "(macOS, Windows); rename one"
                )
            else:
                first[folded] = name
    return problems


def config_problems(
    config: Mapping[str, Any], configfiles: Iterable[str | os.PathLike]
) -> list[str]:
    """Repeated keys in the config files Snakemake loaded, then case-colliding names."""
    problems = []
    for path in configfiles:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        for dup in duplicate_keys(text):
            where = f"under {dup.mapping!r}" if dup.mapping else "at the top level"
            problems.append(
                f"{path}, line {dup.line}: key {dup.key!r} appears twice {where} (first at "
                f"line {dup.first_line}); only the last is kept, so the first would be silently "
                "ignored: rename or remove one"
            )
    return problems + case_collisions(config) + reserved_suffixes(config)


def reserved_suffixes(config: Mapping[str, Any]) -> list[str]:
    models = config.get("models")
    return [
        f"model name {name!r} ends in {suffix!r}, which names another model's files "
        f"(results/…/<model>{suffix}.arrow); rename it"
        for name in (models if isinstance(models, Mapping) else ())
        for suffix in RESERVED_SUFFIXES
        if str(name).casefold().endswith(suffix)
    ]
