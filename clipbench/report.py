"""The HTML report comparing models on one dataset: charts (altair), metrics, query galleries.

The page is one self-contained file: the Vega JavaScript bundle is inlined once, charts carry
their data inline, and thumbnails are data URIs, so it opens offline and can be mailed around.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import altair as alt
import jinja2
import polars as pl

from clipbench.arrow_io import read_metadata, read_table
from clipbench.images import decode_image

TEMPLATES = Path(__file__).with_name("templates")
# Metric column → (label, format) for the metrics table, in display order.
METRIC_COLUMNS = {
    "hits_at_k": ("hits@K", "{:.0f}"),
    "accuracy": ("accuracy", "{:.3f}"),
    "recall_at_1": ("R@1", "{:.3f}"),
    "recall_at_5": ("R@5", "{:.3f}"),
    "recall_at_10": ("R@10", "{:.3f}"),
    "mrr": ("MRR", "{:.3f}"),
    "mean_rank": ("mean rank", "{:.1f}"),
    "median_rank": ("median rank", "{:.1f}"),
}


def _stack(paths: Sequence[str], models: Sequence[str]) -> pl.DataFrame:
    return pl.concat(
        [
            pl.from_arrow(read_table(p)).with_columns(model=pl.lit(m))
            for p, m in zip(paths, models, strict=True)
        ],
        how="diagonal_relaxed",
    )


def model_colors(models: Sequence[str]) -> alt.Scale:
    return alt.Scale(domain=list(models), scheme="tableau10")


def similarity_histogram_chart(
    hist: pl.DataFrame, kde: pl.DataFrame, models: Sequence[str]
) -> alt.LayerChart:
    """The seed's first figure: matched-pair similarity histogram + density curve, overlaid."""
    occupied = hist.filter(pl.col("count") > 0)
    lo, hi = occupied["bin_start"].min(), occupied["bin_end"].max()
    pad = (hi - lo) * 0.05
    domain = [lo - pad, hi + pad]
    color = alt.Color("model:N", scale=model_colors(models), title="model")
    x = alt.X(
        "bin_start:Q",
        scale=alt.Scale(domain=domain, clamp=True),
        title="cosine similarity of a caption and its own image",
    )
    bars = (
        alt.Chart(hist.filter(pl.col("bin_end") >= domain[0], pl.col("bin_start") <= domain[1]))
        .mark_bar(opacity=0.35, binSpacing=0)
        .encode(
            x=x,
            x2="bin_end:Q",
            y=alt.Y("density:Q", stack=None, title="density"),
            y2=alt.datum(0),
            color=color,
            tooltip=[
                "model:N",
                alt.Tooltip("bin_center:Q", format=".3f"),
                "count:Q",
                alt.Tooltip("density:Q", format=".2f"),
            ],
        )
    )
    curves = (
        alt.Chart(kde.filter(pl.col("similarity").is_between(*domain)))
        .mark_line(strokeWidth=2)
        .encode(x="similarity:Q", y="density:Q", color=color)
    )
    return (bars + curves).properties(
        width=640, height=320, title="Matched-pair similarity: histogram and density per model"
    )


def hits_chart(metrics: pl.DataFrame, models: Sequence[str]) -> alt.HConcatChart:
    """The seed's bar chart: hits@K ("score") and accuracy per model."""
    k, n = int(metrics["k"][0]), int(metrics["n"][0])
    data = metrics.select("model", "hits_at_k", "accuracy")
    y = alt.Y("model:N", sort=list(models), title=None)

    def bars(field: str, title: str, fmt: str, color: str) -> alt.LayerChart:
        base = alt.Chart(data).encode(y=y, x=alt.X(f"{field}:Q", title=title))
        return (
            base.mark_bar(color=color)
            + base.mark_text(align="left", dx=3).encode(text=alt.Text(f"{field}:Q", format=fmt))
        ).properties(width=280, height=24 * len(models) + 20)

    return alt.hconcat(
        bars("hits_at_k", f"hits@{k} (of {n} captions)", "d", "#f58518"),
        bars("accuracy", f"accuracy = hits@{k} / {n}", ".3f", "#54a24b"),
    ).properties(title=f"Text→image retrieval: own image in the top {k}")


def thumbnail_uri(blob: bytes, row_id: int, size: int) -> str:
    image = decode_image(blob, row_id)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def galleries(
    queries: pl.DataFrame, dataset_path: str, models: Sequence[str], thumb_px: int
) -> list[dict[str, Any]]:
    """Per query, per model: the top-K images with scores, as data-URI thumbnails."""
    wanted = set(queries["image_id"].to_list())
    data = pl.from_arrow(read_table(dataset_path)).filter(pl.col("id").is_in(list(wanted)))
    thumbs = {
        i: thumbnail_uri(b, i, thumb_px) for i, b in zip(data["id"], data["image"], strict=True)
    }
    out = []
    for (query,), rows in queries.sort("query_id", "rank").group_by("query", maintain_order=True):
        per_model = []
        for model in models:
            hits = rows.filter(pl.col("model") == model).to_dicts()
            per_model.append(
                {"model": model, "hits": [{**h, "src": thumbs[h["image_id"]]} for h in hits]}
            )
        out.append({"query": query, "models": per_model})
    return out


def metrics_rows(metrics: pl.DataFrame) -> tuple[list[str], list[list[str]]]:
    k = int(metrics["k"][0])
    columns = [c for c in METRIC_COLUMNS if c in metrics.columns]
    header = ["model"] + [METRIC_COLUMNS[c][0].replace("K", str(k)) for c in columns]
    rows = [
        [row["model"]] + [METRIC_COLUMNS[c][1].format(row[c]) for c in columns]
        for row in metrics.to_dicts()
    ]
    return header, rows


def script_json(value: Any) -> str:
    # JSON placed inside <script>: a caption containing "</script>" must not end the element.
    return json.dumps(value).replace("</", "<\\/")


def vega_bundle() -> str:
    import vl_convert
    from altair.utils._importers import vl_version_for_vl_convert

    return vl_convert.javascript_bundle(vl_version=vl_version_for_vl_convert())


def build_report(
    dataset_name: str,
    dataset_path: str,
    models: Sequence[str],
    metrics_paths: Sequence[str],
    hist_paths: Sequence[str],
    kde_paths: Sequence[str],
    query_paths: Sequence[str],
    embedding_paths: Sequence[str],
    out_html: str,
    figures: Sequence[str],
    thumb_px: int = 128,
) -> None:
    """Render ``out_html`` and write each chart to the ``figures`` paths (png/svg)."""
    metrics = _stack(metrics_paths, models)
    charts = {
        "similarity_histogram": similarity_histogram_chart(
            _stack(hist_paths, models), _stack(kde_paths, models), models
        ),
        "hits_at_k": hits_chart(metrics, models),
    }
    for path in figures:  # figures/<chart name>.<png|svg>
        name, _, fmt = Path(path).name.rpartition(".")
        charts[name].save(path, format=fmt)
    header, rows = metrics_rows(metrics)
    dataset_meta = read_metadata(dataset_path)
    model_meta = [
        {"name": m, **read_metadata(p)} for m, p in zip(models, embedding_paths, strict=True)
    ]
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    html = env.get_template("report.html.j2").render(
        dataset=dataset_name,
        dataset_meta=dataset_meta,
        header=header,
        rows=rows,
        k=int(metrics["k"][0]),
        n=int(metrics["n"][0]),
        charts={name: script_json(chart.to_dict()) for name, chart in charts.items()},
        galleries=galleries(_stack(query_paths, models), dataset_path, models, thumb_px),
        models=model_meta,
        vega_bundle=vega_bundle(),
        thumb_px=thumb_px,
    )
    Path(out_html).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out_html).with_suffix(".html.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out_html)
