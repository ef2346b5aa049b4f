"""Altair charts of the benchmark's artifacts (polars frames in, Vega-Lite specs out)."""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import polars as pl

DIRECTION_LABELS = {"text_to_image": "text → image", "image_to_text": "image → text"}
CHANCE_COLOR = "#444"
# Points a rank CDF is drawn from, per model and direction: its 320-px log axis shows no
# more, and every distinct rank of 833 captions, 4 models and 2 directions (5,685 rows with
# random weights) already passed altair's 5,000-row guard and failed the report.
PLOTTED_RANKS = 256


def model_colors(models: Sequence[str]) -> alt.Scale:
    return alt.Scale(domain=list(models), scheme="tableau10")


def _label_directions(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.col("direction").replace(DIRECTION_LABELS))


def similarity_histogram(
    hist: pl.DataFrame, kde: pl.DataFrame, models: Sequence[str]
) -> alt.LayerChart:
    """The seed's first figure: matched-pair similarity histogram + density curve, overlaid."""
    hist = hist.filter(pl.col("pairs") == "matched")
    kde = kde.filter(pl.col("pairs") == "matched")
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


def similarity_separation(kde: pl.DataFrame, models: Sequence[str]) -> alt.FacetChart:
    """Matched vs non-matched pair similarity per model: how far apart the two sit."""
    return (
        alt.Chart(kde)
        .mark_area(opacity=0.45, interpolate="monotone")
        .encode(
            x=alt.X("similarity:Q", title="cosine similarity"),
            y=alt.Y("density:Q", stack=None, title="density"),
            color=alt.Color(
                "pairs:N",
                scale=alt.Scale(domain=["matched", "non-matched"], range=["#e45756", "#9d9d9d"]),
            ),
        )
        .properties(width=300, height=150)
        .facet(facet=alt.Facet("model:N", sort=list(models), title=None), columns=2)
        .resolve_scale(y="independent")
        .properties(title="Similarity of matched vs non-matched caption–image pairs")
    )


def hits_at_k(metrics: pl.DataFrame, models: Sequence[str], k: int) -> alt.HConcatChart:
    """The seed's bar chart, text→image: hits@K ("score") and accuracy per model, with 95%
    bootstrap intervals and the chance level as a dashed rule."""
    t2i = metrics.filter(pl.col("direction") == "text_to_image")
    n = int(t2i["n_queries"][0])
    y = alt.Y("model:N", sort=list(models), title=None)

    def panel(metric: str, title: str, fmt: str, color: str) -> alt.LayerChart:
        data = t2i.filter(pl.col("metric") == metric)
        base = alt.Chart(data).encode(y=y)
        bars = base.mark_bar(color=color).encode(x=alt.X("value:Q", title=title))
        labels = base.mark_text(align="left", dx=3, dy=-7, fontSize=10).encode(
            x="value:Q", text=alt.Text("value:Q", format=fmt)
        )
        errors = base.mark_errorbar(ticks=True).encode(
            x=alt.X("ci_low:Q", title=title), x2="ci_high:Q"
        )
        chance = (
            alt.Chart(data.head(1))
            .mark_rule(color=CHANCE_COLOR, strokeDash=[5, 3], strokeWidth=1.5)
            .encode(x=alt.X("chance:Q", title=title))
        )
        return (bars + errors + labels + chance).properties(width=280, height=28 * len(models) + 20)

    return alt.hconcat(
        panel("hits_at_k", f"hits@{k} (of {n} captions)", ".0f", "#f58518"),
        panel("accuracy", f"accuracy = hits@{k} / {n}", ".3f", "#54a24b"),
    ).properties(
        title=f"Text→image: own image in the top {k} (bars: 95% bootstrap interval; dashed: chance)"
    )


def recall(
    metrics: pl.DataFrame, models: Sequence[str], recall_at: Sequence[int]
) -> alt.FacetChart:
    """R@k in both directions with intervals; grey ticks mark chance."""
    names = [f"recall_at_{r}" for r in recall_at]
    data = _label_directions(metrics.filter(pl.col("metric").is_in(names))).with_columns(
        pl.col("metric").str.replace("recall_at_", "R@")
    )
    x = alt.X("model:N", sort=list(models), title=None, axis=alt.Axis(labels=False, ticks=False))
    base = alt.Chart().encode(x=x)
    layers = alt.layer(
        base.mark_bar().encode(
            y=alt.Y("value:Q", title="recall", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("model:N", scale=model_colors(models)),
            tooltip=[
                "model:N",
                "metric:N",
                alt.Tooltip("value:Q", format=".3f"),
                alt.Tooltip("ci_low:Q", format=".3f"),
                alt.Tooltip("ci_high:Q", format=".3f"),
                alt.Tooltip("chance:Q", format=".4f"),
            ],
        ),
        base.mark_errorbar(ticks=True).encode(y=alt.Y("ci_low:Q", title="recall"), y2="ci_high:Q"),
        base.mark_tick(color=CHANCE_COLOR, thickness=2, size=18).encode(
            y=alt.Y("chance:Q", title="recall")
        ),
        data=data,
    ).properties(width=30 * len(models) + 20, height=200)
    return layers.facet(
        column=alt.Column(
            "metric:N", title=None, sort=[n.replace("recall_at_", "R@") for n in names]
        ),
        row=alt.Row("direction:N", title=None, sort=list(DIRECTION_LABELS.values())),
    ).properties(title="Recall@k in both directions (95% bootstrap interval; grey tick: chance)")


def unbounded_rows() -> alt.PluginEnabler:
    """Altair without its 5,000-row guard, as a context: every chart here is bounded by
    construction (fixed bins and KDE points, :func:`thinned_rank_cdf`) but grows with the
    models compared (10 models' KDE curves: 5,120 rows)."""
    return alt.data_transformers.disable_max_rows()


def thinned_rank_cdf(ranks: pl.DataFrame, points: int = PLOTTED_RANKS) -> pl.DataFrame:
    """Per model and direction, the highest rank of each of ``points`` equal steps of
    log(rank), and the lowest rank: exact CDF values at the ranks kept, so a step-after line
    through them strays from the full curve only within one step (1/``points`` of the axis)."""
    keys = ["model", "direction"]
    rank = pl.col("rank").cast(pl.Float64)
    top = pl.col("rank").max().over(keys).cast(pl.Float64)
    step = (rank.log() / (top + 1).log() * points).floor().alias("_step")
    return (
        ranks.sort([*keys, "rank"])
        .with_columns(step)
        .filter(
            (pl.col("_step") != pl.col("_step").shift(-1).over(keys)).fill_null(True)
            | (pl.col("rank") == pl.col("rank").min().over(keys))
        )
        .drop("_step")
    )


def rank_cdf(ranks: pl.DataFrame, models: Sequence[str]) -> alt.FacetChart:
    """Share of queries whose best positive ranks at or above r, log-scaled r (drawn through
    :func:`thinned_rank_cdf`)."""
    return (
        alt.Chart(_label_directions(thinned_rank_cdf(ranks)))
        .mark_line(interpolate="step-after", strokeWidth=2)
        .encode(
            x=alt.X("rank:Q", scale=alt.Scale(type="log"), title="rank of the best positive"),
            y=alt.Y("cdf:Q", title="share of queries", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("model:N", scale=model_colors(models)),
            tooltip=["model:N", "rank:Q", alt.Tooltip("cdf:Q", format=".3f")],
        )
        .properties(width=320, height=220)
        .facet(column=alt.Column("direction:N", title=None, sort=list(DIRECTION_LABELS.values())))
        .properties(title="Rank distribution (CDF of the positive's rank)")
    )


def robustness(results: pl.DataFrame, models: Sequence[str], metric: str) -> alt.FacetChart:
    """Retrieval as image noise or caption typos grow (the other side stays clean)."""
    data = _label_directions(results.filter(pl.col("metric") == metric)).with_columns(
        pl.col("perturbation").replace(
            {"image_noise": "Gaussian pixel noise σ", "caption_typos": "caption typo rate"}
        )
    )
    return (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x=alt.X("level:Q", title=None),
            y=alt.Y(
                "value:Q", title=metric.replace("recall_at_", "R@"), scale=alt.Scale(domain=[0, 1])
            ),
            color=alt.Color("model:N", scale=model_colors(models)),
            tooltip=["model:N", "level:Q", alt.Tooltip("value:Q", format=".3f")],
        )
        .properties(width=260, height=180)
        .facet(
            column=alt.Column("perturbation:N", title=None),
            row=alt.Row("direction:N", title=None, sort=list(DIRECTION_LABELS.values())),
        )
        .resolve_scale(x="independent")
        .properties(title="Robustness: seeded image noise and caption typos")
    )


def datasets_overview(metrics: pl.DataFrame, models: Sequence[str], metric: str) -> alt.FacetChart:
    """One metric per dataset and model, both directions, with intervals and chance."""
    data = _label_directions(metrics.filter(pl.col("metric") == metric))
    base = alt.Chart().encode(
        x=alt.X("model:N", sort=list(models), title=None, axis=alt.Axis(labels=False, ticks=False))
    )
    title = metric.replace("recall_at_", "R@")
    return (
        alt.layer(
            base.mark_bar().encode(
                y=alt.Y("value:Q", title=title, scale=alt.Scale(domain=[0, 1])),
                color=alt.Color("model:N", scale=model_colors(models)),
            ),
            base.mark_errorbar(ticks=True).encode(y=alt.Y("ci_low:Q", title=title), y2="ci_high:Q"),
            base.mark_tick(color=CHANCE_COLOR, thickness=2, size=18).encode(
                y=alt.Y("chance:Q", title=title)
            ),
            data=data,
        )
        .properties(width=30 * len(models) + 20, height=180)
        .facet(
            column=alt.Column("dataset:N", title=None),
            row=alt.Row("direction:N", title=None, sort=list(DIRECTION_LABELS.values())),
        )
        .properties(
            title=f"{metric.replace('recall_at_', 'R@')} per dataset and model "
            "(95% bootstrap interval; grey tick: chance)"
        )
    )
