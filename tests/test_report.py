"""The report's JavaScript bundle is built once per library version and then read back."""

from clipbench import report


def test_vega_bundle_is_cached_by_library_version(tmp_path, monkeypatch):
    import vl_convert

    monkeypatch.setenv("CLIPBENCH_CACHE", str(tmp_path))
    calls = []
    real = vl_convert.javascript_bundle
    monkeypatch.setattr(
        vl_convert, "javascript_bundle", lambda **kw: calls.append(kw) or real(**kw)
    )
    first = report.vega_bundle()
    second = report.vega_bundle()
    assert first == second and len(calls) == 1 and "vegaEmbed" in first
    (cached,) = tmp_path.glob("vega-bundle-*.js")
    assert vl_convert.__version__ in cached.name and cached.read_bytes().decode() == first


def test_summary_page_keeps_the_space_after_its_dataset_links():
    html = (
        report.templates()
        .get_template("summary.html.j2")
        .render(charts={}, vega_bundle="", datasets=["a", "b"], header=[], rows=[], references=[])
    )
    words = " ".join(html.split())  # as a browser lays it out
    assert '<a href="b/report.html">b</a> (each link opens' in words


def test_no_template_joins_text_across_a_block_tag():
    """A line that ends in a block tag loses its newline (trim_blocks): text on the next line
    would run into the text before the tag, as "chance.R@k" once did."""
    import re

    for template in sorted(report.TEMPLATES.glob("*.j2")):
        lines = template.read_text().splitlines()
        for number, (line, after) in enumerate(zip(lines, lines[1:], strict=False), 1):
            joined = re.search(r"%}\s*$", line) and re.match(r"[\w(&]", after)
            assert not joined, f"{template.name}:{number}: text after a block tag needs a space"


def test_a_rank_cdf_is_drawn_from_at_most_its_plotted_points_exactly():
    """833 distinct ranks per curve thin to one point per log step, each at its exact CDF,
    the lowest and highest rank kept; a curve of few ranks keeps them all."""
    import numpy as np
    import polars as pl

    from clipbench.charts import PLOTTED_RANKS, thinned_rank_cdf
    from clipbench.histogram import rank_cdf_table

    rng = np.random.default_rng(0)
    frames = []
    for model in ("a", "b", "c"):
        for direction in ("text_to_image", "image_to_text"):
            ranks = rng.permutation(833) + 1 if model != "c" else np.array([1, 1, 2, 5])
            frames.append(
                pl.from_arrow(rank_cdf_table(ranks)).with_columns(
                    model=pl.lit(model), direction=pl.lit(direction)
                )
            )
    full = pl.concat(frames)
    thin = thinned_rank_cdf(full)
    for (model, direction), curve in thin.group_by(["model", "direction"]):
        whole = full.filter(model=model, direction=direction)
        assert curve.height <= PLOTTED_RANKS + 1
        assert curve["rank"].min() == 1 and curve["rank"].max() == whole["rank"].max()
        exact = whole.join(curve.select("rank", kept="cdf"), on="rank")
        assert exact.height == curve.height and (exact["cdf"] == exact["kept"]).all()
        if model == "c":
            assert curve.height == whole.height  # 3 distinct ranks: all kept
        else:
            assert curve.height > PLOTTED_RANKS // 2  # a thinned curve, not a few points
        # One rank per step of log(rank) that holds any (and the lowest): none left out.
        ranks = whole["rank"].to_numpy()
        steps = np.floor(np.log(ranks) / np.log(ranks.max() + 1) * PLOTTED_RANKS)
        assert curve.height == len(set(steps)) + int(steps[0] == steps[1])


def test_charts_of_many_models_render_past_altairs_row_guard():
    """Ten models' KDE curves are 5,120 rows: the report renders them."""
    import numpy as np
    import polars as pl

    from clipbench import charts
    from clipbench.histogram import kde_table

    models = [f"m{i}" for i in range(10)]
    kde = pl.concat(
        pl.from_arrow(kde_table(np.random.default_rng(i).normal(size=50))).with_columns(
            model=pl.lit(m), pairs=pl.lit(p)
        )
        for i, m in enumerate(models)
        for p in ("matched", "non-matched")
    )
    chart = charts.similarity_separation(kde, models)
    with charts.unbounded_rows():
        spec = chart.to_dict()
    assert len(spec["datasets"][spec["data"]["name"]]) == kde.height == 5120
