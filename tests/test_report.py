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
