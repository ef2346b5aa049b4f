"""HTML reports: one per dataset comparing its models, and one across datasets.

Each page is one self-contained file: the Vega JavaScript bundle is inlined once, charts carry
their data inline, and thumbnails are data URIs, so it opens offline and can be mailed around.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import altair as alt
import jinja2
import polars as pl

from clipbench import charts
from clipbench.arrow_io import atomic_path, read_metadata, read_table, write_table
from clipbench.cache import cache_dir
from clipbench.pages import TEMPLATES, script_json, thumbnail_uri
from clipbench.references import COUNTS
from clipbench.stages.scores import compared_metrics

DIRECTION_TITLES = {
    "text_to_image": "Text → image (each caption searches all images)",
    "image_to_text": "Image → text (each image searches all captions)",
}


def metric_label(name: str, k: int) -> str:
    fixed = {
        "hits_at_k": f"hits@{k}",
        "accuracy": f"accuracy@{k}",
        "mrr": "MRR",
        "mean_rank": "mean rank",
        "median_rank": "median rank",
        "weighted_score": f"weighted score (K={k})",
        "weighted_score_share": "weighted share",
    }
    return fixed.get(name, name.replace("recall_at_", "R@"))


def fmt(value: float, metric: str) -> str:
    if metric in COUNTS:
        return f"{value:.0f}"
    if metric in ("mean_rank", "median_rank"):
        return f"{value:.1f}"
    return f"{value:.3f}"


def stack(paths: Sequence[str], labels: Sequence[str], column: str = "model") -> pl.DataFrame:
    return pl.concat(
        [
            pl.from_arrow(read_table(p)).with_columns(pl.lit(label).alias(column))
            for p, label in zip(paths, labels, strict=True)
        ],
        how="diagonal_relaxed",
    )


def metric_tables(metrics: pl.DataFrame, k: int) -> list[dict[str, Any]]:
    """Per direction: header, one row per model (value [interval]) and the chance row. A cell
    whose interval contains the chance level is flagged: that model is not above chance."""
    tables = []
    for direction, title in DIRECTION_TITLES.items():
        part = metrics.filter(pl.col("direction") == direction)
        names = part["metric"].unique(maintain_order=True).to_list()
        rows = []
        for (model,), group in part.group_by("model", maintain_order=True):
            cells = []
            for row in group.iter_rows(named=True):
                higher_is_better = row["metric"] not in ("mean_rank", "median_rank")
                beats = (
                    row["ci_low"] > row["chance"]
                    if higher_is_better
                    else row["ci_high"] < row["chance"]
                )
                cells.append(
                    {
                        "value": fmt(row["value"], row["metric"]),
                        "ci": f"[{fmt(row['ci_low'], row['metric'])}, "
                        f"{fmt(row['ci_high'], row['metric'])}]",
                        "at_chance": not beats,
                    }
                )
            rows.append({"model": model, "cells": cells})
        chance = [fmt(v, m) for v, m in zip(part.head(len(names))["chance"], names, strict=True)]
        per_model = part.group_by("model", maintain_order=True).agg(
            pl.col("queries_with_ties").first()
        )
        tables.append(
            {
                "title": title,
                "header": [metric_label(n, k) for n in names],
                "rows": rows,
                "chance": chance,
                "n_queries": int(part["n_queries"][0]),
                "n_candidates": int(part["n_candidates"][0]),
                "ties": part["ties"][0],
                # Models with queries whose best positive ties with a non-positive: how many.
                "tied": [{"model": m, "queries": n} for m, n in per_model.iter_rows() if n],
            }
        )
    return tables


def difference_cell(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "value": f"{row['difference']:+.3f}",
        "ci": f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]",
        "p": f"{row['p_value']:.3f}",
        "p_holm": f"{row['p_holm']:.3f}",
        "significant": row["significant"],
    }


def comparison_tables(
    comparisons: pl.DataFrame, k: int, recall_at: Sequence[int]
) -> list[dict[str, Any]]:
    """Per direction: for each pair of models, the paired-bootstrap difference of the metrics
    tested as one family (each R@k and MRR), significance on the Holm-adjusted p-value."""
    compared = compared_metrics(recall_at)
    tables = []
    for direction, title in DIRECTION_TITLES.items():
        part = comparisons.filter(
            pl.col("direction") == direction, pl.col("metric").is_in(compared)
        )
        names = [m for m in compared if m in part["metric"].to_list()]
        rows = []
        for (a, b), group in part.group_by("model_a", "model_b", maintain_order=True):
            by_metric = {r["metric"]: r for r in group.iter_rows(named=True)}
            rows.append(
                {"pair": f"{a} − {b}", "cells": [difference_cell(by_metric[m]) for m in names]}
            )
        tables.append({"title": title, "header": [metric_label(n, k) for n in names], "rows": rows})
    return tables


SKIPPED_SHOWN = 20


def skipped_rows_note(dataset_meta: dict[str, Any]) -> str | None:
    """One line naming the source rows that ``on_bad_image: skip`` left out (None: none were)."""
    rows = [s["row"] for s in dataset_meta.get("skipped_rows") or []]
    if not rows:
        return None
    shown = ", ".join(map(str, rows[:SKIPPED_SHOWN]))
    if len(rows) > SKIPPED_SHOWN:
        shown += f", … ({len(rows) - SKIPPED_SHOWN} more, listed below)"
    return f"skipped {len(rows)} undecodable image(s) (on_bad_image: skip): row ids {shown}"


def galleries(
    queries: pl.DataFrame, dataset_path: str, models: Sequence[str], thumb_px: int
) -> list[dict[str, Any]]:
    """Per query, per model: the top-K images with scores, as data-URI thumbnails."""
    wanted = queries["image_id"].unique().to_list()
    data = pl.from_arrow(read_table(dataset_path)).filter(pl.col("id").is_in(wanted))
    thumbs = {
        i: thumbnail_uri(b, i, thumb_px) for i, b in zip(data["id"], data["image"], strict=True)
    }
    out = []
    for (query,), rows in queries.sort("query_id", "rank").group_by("query", maintain_order=True):
        per_model = [
            {
                "model": model,
                "hits": [
                    {**h, "src": thumbs[h["image_id"]]}
                    for h in rows.filter(pl.col("model") == model).to_dicts()
                ],
            }
            for model in models
        ]
        out.append({"query": query, "models": per_model})
    return out


def vega_bundle() -> str:
    """The Vega/Vega-Lite JavaScript every page embeds. Building it costs ~1 s per job, and it
    depends only on the library versions: kept in the cache folder, keyed by them."""
    import vl_convert
    from altair.utils._importers import vl_version_for_vl_convert

    version = vl_version_for_vl_convert()
    path = cache_dir() / f"vega-bundle-{vl_convert.__version__}-{version}.js"
    if path.is_file():  # bytes: the bundle holds "\r", which text mode would translate
        return path.read_bytes().decode("utf-8")
    bundle = vl_convert.javascript_bundle(vl_version=version)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(str(path)) as tmp:
            tmp.write_bytes(bundle.encode("utf-8"))
    except OSError:
        pass  # a read-only home: build it each time
    return bundle


def save_figures(named: dict[str, alt.TopLevelMixin], figures: Sequence[str]) -> None:
    """Each path …/figures/<chart name>.<png|svg>. A chart's PNG is rasterised from its SVG
    (vl-convert, at altair's scale 1 and 72 ppi): the same bytes as rendering the chart again,
    in a third of the time (0.035 against 0.115 s per chart)."""
    import vl_convert

    svgs: dict[str, str] = {}

    def svg(name: str) -> str:
        if name not in svgs:
            buffer = io.StringIO()
            named[name].save(buffer, format="svg")
            svgs[name] = buffer.getvalue()
        return svgs[name]

    with charts.unbounded_rows():
        for path in figures:
            name, _, fmt_ = Path(path).name.rpartition(".")
            with atomic_path(path) as tmp:
                if fmt_ == "svg":
                    tmp.write_text(svg(name), encoding="utf-8")
                elif fmt_ == "png":
                    tmp.write_bytes(vl_convert.svg_to_png(svg(name), scale=1, ppi=72))
                else:
                    named[name].save(str(tmp), format=fmt_)


def templates() -> jinja2.Environment:
    """The pages' templates; a block tag swallows the newline after it (``trim_blocks``), so
    text that must follow one with a space says so."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, out_html: str, named_charts: dict[str, Any], **context) -> None:
    page = templates().get_template(template)
    with charts.unbounded_rows():
        specs = {n: script_json(c.to_dict()) for n, c in named_charts.items()}
    html = page.render(
        charts=specs,
        vega_bundle=vega_bundle(),
        **context,
    )
    with atomic_path(out_html) as tmp:
        tmp.write_text(html, encoding="utf-8")


def robustness_metric(k: int, recall_at: Sequence[int]) -> str:
    return f"recall_at_{k if k in recall_at else max(recall_at)}"


def reference_rows(references: pl.DataFrame, k: int) -> list[dict[str, Any]]:
    """Published figures beside ours: the difference and whether it is within tolerance."""
    rows = []
    for row in references.iter_rows(named=True):
        metric = row["metric"]
        rows.append(
            {
                **row,
                "direction_label": DIRECTION_TITLES[row["direction"]].split(" (")[0],
                "label": metric_label(metric, k),
                "published_text": fmt(row["published"], metric),
                "ours_text": fmt(row["ours"], metric),
                "ci": f"[{fmt(row['ci_low'], metric)}, {fmt(row['ci_high'], metric)}]",
                "difference_text": f"{row['difference']:+.0f}"
                if metric in COUNTS
                else f"{row['difference']:+.3f}",
                "tolerance_text": fmt(row["tolerance"], metric),
            }
        )
    return rows


@dataclass(frozen=True)
class ModelResults:
    """One model's artifacts on one dataset, by what the report reads from each."""

    name: str
    metrics: str
    histogram: str
    kde: str
    ranks: str
    queries: str
    embeddings: str
    robustness: str | None = None  # when the dataset runs the robustness stage


@dataclass(frozen=True)
class ChartInputs:
    """What one dataset's charts read, per model in the configured order."""

    models: Sequence[str]
    metrics: Sequence[str]
    histograms: Sequence[str]
    kdes: Sequence[str]
    ranks: Sequence[str]

    @functools.cached_property
    def stacked_metrics(self) -> pl.DataFrame:
        """Every model's metrics in one frame, read once for the charts and the tables."""
        return stack(self.metrics, list(self.models))

    def charts(self, k: int, recall_at: Sequence[int]) -> dict[str, alt.TopLevelMixin]:
        """The charts of the report and the figures, by figure name."""
        models, metrics = list(self.models), self.stacked_metrics
        kde = stack(self.kdes, models)
        return {
            "hits_at_k": charts.hits_at_k(metrics, models, k),
            "recall": charts.recall(metrics, models, recall_at),
            "similarity_histogram": charts.similarity_histogram(
                stack(self.histograms, models), kde, models
            ),
            "similarity_separation": charts.similarity_separation(kde, models),
            "rank_cdf": charts.rank_cdf(stack(self.ranks, models), models),
        }

    @classmethod
    def of(cls, results: Sequence[ModelResults]) -> ChartInputs:
        return cls(
            [r.name for r in results],
            [r.metrics for r in results],
            [r.histogram for r in results],
            [r.kde for r in results],
            [r.ranks for r in results],
        )


def build_figures(
    inputs: ChartInputs, figures: Sequence[str], k: int, recall_at: Sequence[int]
) -> None:
    """Each chart named in ``figures`` as png/svg: a job of its own beside `compare`, so the
    report, which waits for the comparisons, does not also wait for the renderer."""
    save_figures(inputs.charts(k, recall_at), figures)


def build_report(
    dataset_name: str,
    dataset_path: str,
    results: Sequence[ModelResults],
    comparisons_path: str,
    references_path: str,
    out_html: str,
    k: int,
    recall_at: Sequence[int],
    thumb_px: int = 128,
) -> None:
    """One dataset's report over its models' ``results``."""
    models = [r.name for r in results]
    inputs = ChartInputs.of(results)
    named, metrics = inputs.charts(k, recall_at), inputs.stacked_metrics
    if all(r.robustness for r in results):
        named["robustness"] = charts.robustness(
            stack([r.robustness for r in results], models), models, robustness_metric(k, recall_at)
        )
    dataset_meta = read_metadata(dataset_path)
    render(
        "report.html.j2",
        out_html,
        named,
        dataset=dataset_name,
        dataset_meta=dataset_meta,
        skipped_note=skipped_rows_note(dataset_meta),
        k=k,
        metric_tables=metric_tables(metrics, k),
        comparison_tables=comparison_tables(
            pl.from_arrow(read_table(comparisons_path)), k, recall_at
        ),
        family=read_metadata(comparisons_path).get("family"),
        references=reference_rows(pl.from_arrow(read_table(references_path)), k),
        bootstrap=read_metadata(results[0].metrics)["bootstrap"],
        galleries=galleries(
            stack([r.queries for r in results], models), dataset_path, models, thumb_px
        ),
        models=[{"name": r.name, **read_metadata(r.embeddings)} for r in results],
        thumb_px=thumb_px,
    )


def build_robustness_figures(
    models: Sequence[str],
    robustness_paths: Sequence[str],
    figures: Sequence[str],
    k: int,
    recall_at: Sequence[int],
) -> None:
    chart = charts.robustness(
        stack(robustness_paths, models), models, robustness_metric(k, recall_at)
    )
    save_figures({"robustness": chart}, figures)


@dataclass(frozen=True)
class DatasetResults:
    """One dataset's artifacts the summary reads: each model's metrics, and the check of its
    published figures."""

    name: str
    metrics: Mapping[str, str]  # model → metrics artifact, in the configured model order
    references: str


def build_summary(
    results: Sequence[DatasetResults],
    out_html: str,
    out_references: str,
    figures: Sequence[str],
    k: int,
    recall_at: Sequence[int],
) -> None:
    """All datasets × models on one page; every dataset's published-figure checks gathered
    into ``out_references`` (with a ``dataset`` column) and counted on the page."""
    datasets = [r.name for r in results]
    models = list(results[0].metrics)
    references = pl.concat(
        [
            pl.from_arrow(read_table(r.references)).with_columns(pl.lit(r.name).alias("dataset"))
            for r in results
        ],
        how="diagonal_relaxed",
    )
    reproduced = int(references["reproduced"].sum())
    write_table(
        references.to_arrow(),
        out_references,
        {"figures": references.height, "reproduced": reproduced},
    )
    metrics = pl.concat(
        [
            stack(list(r.metrics.values()), list(r.metrics)).with_columns(
                pl.lit(r.name).alias("dataset")
            )
            for r in results
        ]
    )
    shown = [f"recall_at_{r}" for r in recall_at] + ["mrr", "hits_at_k"]
    named = {
        "datasets_overview": charts.datasets_overview(
            metrics, models, robustness_metric(k, recall_at)
        )
    }
    save_figures(named, figures)
    rows = []
    for direction, title in DIRECTION_TITLES.items():
        part = metrics.filter(pl.col("direction") == direction, pl.col("metric").is_in(shown))
        for (dataset, model), group in part.group_by("dataset", "model", maintain_order=True):
            by = {r["metric"]: r for r in group.iter_rows(named=True)}
            rows.append(
                {
                    "direction": title.split(" (")[0],
                    "dataset": dataset,
                    "model": model,
                    "n": by[shown[0]]["n_queries"],
                    "cells": [
                        {
                            "value": fmt(by[m]["value"], m),
                            "ci": f"[{fmt(by[m]['ci_low'], m)}, {fmt(by[m]['ci_high'], m)}]",
                            "chance": fmt(by[m]["chance"], m),
                        }
                        for m in shown
                    ],
                }
            )
    render(
        "summary.html.j2",
        out_html,
        named,
        datasets=list(datasets),
        header=[metric_label(m, k) for m in shown],
        rows=rows,
        references=reference_rows(references, k),
    )
