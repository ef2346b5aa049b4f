"""Published figures a run should reproduce, and how far ours are from them.

A reference table is a CSV with one figure per row: ``dataset`` and ``model`` (the reference
keys a dataset entry and a model entry name as `reference`), ``direction``, ``metric`` (a name
of :func:`clipbench.metrics.metric_names`; ``k`` for hits@K), ``value`` (in the metric's own
unit: a share for recall, a count for hits@K) and ``source``. The project ships
``references/retrieval.csv``; rows of a user's tables add to it, and replace a shipped row with
the same key.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from clipbench.errors import InputError
from clipbench.stages.scores import DIRECTIONS

SHIPPED = Path(__file__).parents[1] / "references" / "retrieval.csv"
COLUMNS = ("dataset", "model", "direction", "metric", "k", "value", "source")
COUNTS = ("hits_at_k", "weighted_score")  # metrics counted over queries, not shares of them


@dataclass(frozen=True)
class Reference:
    dataset: str
    model: str
    direction: str
    metric: str
    k: int | None
    value: float
    source: str

    @property
    def key(self) -> tuple:
        return (self.dataset, self.model, self.direction, self.metric, self.k)


def read_references(paths: Sequence[str | Path]) -> dict[tuple, Reference]:
    """Every figure of the tables, by key; a later table's row replaces an earlier one's."""
    out: dict[tuple, Reference] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"reference table {path} does not exist")
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"reference table {path} lacks column(s) {missing}")
            for line, row in enumerate(reader, start=2):
                ref = _parse(row, f"{path}:{line}")
                out[ref.key] = ref
    return out


def _parse(row: Mapping[str, str], where: str) -> Reference:
    if row["direction"] not in DIRECTIONS:
        raise InputError(f"{where}: direction {row['direction']!r}; use one of {DIRECTIONS}")
    k = row["k"].strip()
    if (row["metric"] == "hits_at_k") != bool(k):
        raise InputError(f"{where}: hits_at_k needs its k, and only hits_at_k has one")
    try:
        return Reference(
            row["dataset"],
            row["model"],
            row["direction"],
            row["metric"],
            int(k) if k else None,
            float(row["value"]),
            row["source"],
        )
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from exc


def check_references(
    metrics: pa.Table,
    references: Mapping[tuple, Reference],
    dataset_key: str | None,
    model_keys: Mapping[str, str],
    k: int,
    tolerance: float,
) -> pa.Table:
    """One row per published figure this dataset and its models have: published, ours with its
    interval, the difference, the tolerance it is held to (the larger of ``tolerance``, as a
    share of the queries, and the interval's half-width) and whether it is reproduced."""
    rows = []
    ours = {(r["model"], r["direction"], r["metric"]): r for r in metrics.to_pylist()}
    for model, model_key in model_keys.items():
        for ref in references.values():
            if (ref.dataset, ref.model) != (dataset_key, model_key):
                continue
            if ref.k is not None and ref.k != k:
                continue  # hits@K at another K: not comparable with this run
            row = ours.get((model, ref.direction, ref.metric))
            if row is None:
                continue  # a metric this run does not compute (e.g. R@10 without it in recall_at)
            scale = row["n_queries"] if ref.metric in COUNTS else 1.0
            allowed = max(tolerance * scale, (row["ci_high"] - row["ci_low"]) / 2)
            difference = row["value"] - ref.value
            rows.append(
                {
                    "model": model,
                    "reference_model": model_key,
                    "reference_dataset": dataset_key,
                    "direction": ref.direction,
                    "metric": ref.metric,
                    "published": ref.value,
                    "ours": row["value"],
                    "ci_low": row["ci_low"],
                    "ci_high": row["ci_high"],
                    "difference": difference,
                    "tolerance": allowed,
                    "reproduced": abs(difference) <= allowed,
                    "source": ref.source,
                }
            )
    return pa.Table.from_pylist(rows, schema=SCHEMA)


SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("reference_model", pa.string()),
        ("reference_dataset", pa.string()),
        ("direction", pa.string()),
        ("metric", pa.string()),
        ("published", pa.float64()),
        ("ours", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("difference", pa.float64()),
        ("tolerance", pa.float64()),
        ("reproduced", pa.bool_()),
        ("source", pa.string()),
    ]
)
