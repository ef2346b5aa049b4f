"""The config schema (``schemas/config.schema.yaml``) as the one source of defaults, also for
code that is handed one section or one model entry (a job's params, a test, the benchmark):
:func:`with_defaults` checks a value against the schema node that describes it and fills in
that node's defaults, as Snakemake's ``validate`` does for the whole config."""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from clipbench.errors import InputError

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


@functools.cache
def schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_FILE.read_text(encoding="utf-8"))


@functools.cache
def _validator_class():
    from jsonschema import validators

    base = validators.validator_for(schema())
    check_properties = base.VALIDATORS["properties"]

    def fill_then_check(validator, properties, instance, node):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, properties, instance, node)

    return validators.extend(base, {"properties": fill_then_check})


def with_defaults(value: Mapping[str, Any], path: tuple[str, ...], what: str) -> dict[str, Any]:
    """A copy of ``value`` checked against the schema node at ``path`` (keys from the root)
    with that node's defaults filled in; :class:`InputError` naming ``what`` if it fails."""
    from jsonschema.exceptions import best_match

    root = schema()
    node = functools.reduce(lambda n, key: n[key], path, root)
    # The node's `$ref`s point into the root's `$defs`.
    validator = _validator_class()({"$schema": root["$schema"], "$defs": root["$defs"], **node})
    instance = copy.deepcopy(dict(value))
    error = best_match(validator.iter_errors(instance))
    if error is not None:
        where = ".".join(map(str, error.absolute_path))
        raise InputError(f"{what}{f' {where}' if where else ''}: {error.message}")
    return instance


def frozen(value: Any) -> Any:
    """JSON lists as tuples (at any depth), so that settings parsed from it are immutable and
    hashable."""
    return tuple(frozen(v) for v in value) if isinstance(value, list) else value
