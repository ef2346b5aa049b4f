"""The benchmark's arithmetic: what each tower's share is a share of."""

import pytest

from clipbench.bench.__main__ import shares


def test_float32_towers_are_measured_against_the_best_float32_exact_peak():
    rows = [
        {"section": "peak", "name": "fp32", "gflops": 320.0, "relative_error": 5e-7},
        {"section": "peak", "name": "fp32 matmul medium", "gflops": 250.0, "relative_error": 1e-6},
        # bf16 inside (an AMX CPU): faster, but not float32, so no float32 tower's peak
        {"section": "peak", "name": "fp32 matmul high", "gflops": 900.0, "relative_error": 2e-3},
        {"section": "peak", "name": "bf16", "gflops": 2000.0, "relative_error": 4e-3},
        {"section": "model", "peak": "fp32 matmul medium", "gflops": 240.0},
        {"section": "model", "peak": "bf16", "gflops": 1500.0},
    ]
    shares(rows)
    assert rows[4]["share_of_peak"] == 240.0 / 320.0  # not 240 / 250
    assert rows[5]["share_of_peak"] == 1500.0 / 2000.0


def test_an_emulated_reduced_precision_is_timed_at_the_smallest_shape_only(monkeypatch):
    import torch

    from clipbench.bench import kernels

    calls = []
    real_randn = torch.randn

    def recording_randn(*shape, **kwargs):
        if kwargs.get("dtype") in (torch.float32, torch.bfloat16) and len(shape) == 2:
            calls.append((kwargs["dtype"], shape))
        return real_randn(*shape, **kwargs)

    monkeypatch.setattr(kernels.torch, "randn", recording_randn)
    shapes = [(64, 64, 64), (32, 48, 16), (96, 64, 32)]
    cpu = torch.device("cpu")
    for native, bf16_shapes in ((None, [(32, 48), (48, 16)]), ("bf16", None)):
        calls.clear()
        monkeypatch.setattr(kernels, "native_reduced", lambda device, native=native: native)
        rows = {r["name"]: r for r in kernels.gemm_peaks(cpu, shapes, repeats=1)}
        timed_bf16 = [s for dtype, s in calls if dtype == torch.bfloat16]
        expected = bf16_shapes or [s for m, k, n in shapes for s in ((m, k), (k, n))]
        assert timed_bf16 == expected
        assert rows["bf16"]["emulated"] is (native is None)
        assert rows["fp32"]["emulated"] is False
        # float32 always searches every shape
        assert len([s for dtype, s in calls if dtype == torch.float32]) == 3 * 2 * len(shapes)


def test_a_peer_run_is_extrapolated_along_the_line_through_two_prefixes():
    from clipbench.bench.peer import extrapolate

    # 5 s of start-up, 0.5 s per row: 37 s at 64 rows, 69 at 128, 421.5 at 833
    assert extrapolate({128: 69.0, 64: 37.0}, 833) == 5.0 + 0.5 * 833
    assert extrapolate({64: 37.0, 128: 69.0}, 64) == 37.0


def test_an_extrapolated_peer_run_times_each_model_on_row_prefixes_and_adds_one_start_up(
    monkeypatch, tmp_path
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipbench.bench import peer

    parquet = tmp_path / "data.parquet"
    pq.write_table(pa.table({"row": list(range(300))}), parquet)
    seen = []

    def fake_run(part, models, amp):
        # the prefix is the first rows of the data, in order
        rows = pq.read_table(part)["row"].to_pylist()
        assert rows == list(range(len(rows)))
        seen.append((len(rows), amp))
        per_model = {"a": 1.0 + 0.5 * len(rows), "b": 2.0 + 0.25 * len(rows)}
        start_up = 7.0 if len(rows) == 64 else 9.0  # process start, counted once from 64 rows
        return {
            "seconds": start_up + sum(per_model.values()),
            "models": {name: {"seconds": s} for name, s in per_model.items()},
        }

    monkeypatch.setattr(peer, "run", fake_run)
    models = {"a": ("RN50", "a.pt"), "b": ("ViT-B-32", "b.pt")}
    result = peer.run_extrapolated(parquet, models, amp=True, rows=833)
    assert seen == [(64, True), (128, True)]
    assert result["models"]["a"]["seconds"] == 1.0 + 0.5 * 833
    assert result["models"]["b"]["seconds"] == 2.0 + 0.25 * 833
    assert result["seconds"] == 7.0 + (1.0 + 0.5 * 833) + (2.0 + 0.25 * 833)


def test_a_gpu_timing_spans_back_to_back_calls_and_reports_one(monkeypatch):
    # One synchronised call of a sub-millisecond GPU kernel would time its launch and the
    # synchronisation too: the calls per timing are sized from a second, untuned call.
    from types import SimpleNamespace

    import torch

    from clipbench.bench import kernels

    clock = [0.0]
    monkeypatch.setattr(kernels, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(kernels, "sync", lambda device: None)
    monkeypatch.setattr(kernels, "GPU_SPAN_S", 0.02)
    calls = []

    def kernel():
        calls.append(None)
        clock[0] += 0.004

    seconds = kernels.timed(kernel, torch.device("cuda"), repeats=2)
    assert len(calls) == 2 + 2 * 5  # warm-up, sizing call, then 2 timings of 0.02 / 0.004
    assert seconds == pytest.approx(0.004)
    calls.clear()
    kernels.timed(kernel, torch.device("cpu"), repeats=2)
    assert len(calls) == 3  # a CPU call is long enough to time alone


def test_each_section_is_written_as_it_ends_so_a_failing_one_keeps_the_rest(monkeypatch, tmp_path):
    import pyarrow.ipc as ipc

    from clipbench.bench import __main__ as bench

    peak = {"section": "peak", "name": "fp32", "gflops": 100.0, "relative_error": 5e-7}
    monkeypatch.setattr(bench, "gemm_peaks", lambda *args: [dict(peak)])

    def versus(*args):
        raise RuntimeError("CLIP_benchmark failed")

    monkeypatch.setattr(bench, "side_by_side", versus)
    with pytest.raises(RuntimeError, match="CLIP_benchmark failed"):
        bench.main(["--sections", "versus", "peaks", "--device", "cpu", "--out", str(tmp_path)])
    with ipc.open_file(tmp_path / "bench-cpu.arrow") as saved:
        table = saved.read_all()
    assert table.to_pylist() == [peak]


def test_the_benchmark_dataset_is_drawn_in_parallel_and_the_same_every_time(tmp_path):
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    from clipbench.bench.workflow import write_dataset

    first, again = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write_dataset(first, 5, seed=1)
    write_dataset(again, 5, seed=1)
    table = pq.read_table(first)
    assert table.equals(pq.read_table(again))  # each row from its own seed, whatever the order
    assert table.schema.field("image").type.names == ["bytes", "path"]  # the HF Image layout
    blobs = [row["bytes"] for row in table.column("image").to_pylist()]
    assert len(set(blobs)) == 5 and all(60_000 < len(b) < 250_000 for b in blobs)
    assert Image.open(io.BytesIO(blobs[0])).size == (1280, 1280)
    captions = table.column("text").to_pylist()
    assert len(set(captions)) == 5 and all(c.startswith("a drawing of a ") for c in captions)


@pytest.mark.parametrize("charts", [True, False])
def test_versus_runs_through_the_metrics_where_the_chart_libraries_did_not_travel(
    monkeypatch, tmp_path, charts
):
    from clipbench.bench import workflow

    models = {
        m: {"kind": "open_clip", "arch": a, "checkpoint": "x"}
        for m, a in workflow.CLIP_MODELS.items()
    }
    inputs = {
        "datasets": {"bench": {"source": {"parquet": str(tmp_path / "d.parquet")}}},
        "models": models,
    }
    monkeypatch.setattr(workflow, "workflow_inputs", lambda root, rows: inputs)
    monkeypatch.setattr(workflow.peer, "available", lambda: True)
    monkeypatch.setattr(workflow, "renders_charts", lambda: charts)
    monkeypatch.setattr(workflow, "emulates_bf16", lambda: False)
    asked = []

    def ours(root, config, label, targets=()):
        asked.append(targets)
        return {"seconds": 50.0, "encode_jobs": {m: 10.0 for m in models}}

    def theirs(parquet, theirs_models, amp):
        return {"seconds": 100.0, "models": {m: {"seconds": 25.0} for m in theirs_models}}

    monkeypatch.setattr(workflow, "run_workflow", ours)
    monkeypatch.setattr(workflow.peer, "run", theirs)
    (row,) = workflow.side_by_side(tmp_path, 100, ("default",))
    expected = () if charts else tuple(f"results/bench/metrics/{m}.arrow" for m in models)
    assert asked == [expected]
    assert row["ours_through"] == ("report" if charts else "metrics")
    assert row["speedup"] == 2.0
    assert row["ours_clip-rn50_images_per_s"] == 10.0
    assert row["theirs_clip-vit-b-16_images_per_s"] == 4.0
