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
