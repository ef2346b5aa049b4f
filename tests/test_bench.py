"""The benchmark's arithmetic: what each tower's share is a share of."""

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
