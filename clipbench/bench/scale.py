"""The hits stage at scale: time, achieved GFLOP/s of its score matrix, and peak memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time
import numpy as np, pyarrow as pa
from clipbench.arrow_io import write_table
from clipbench.embeddings import embedding_table, l2_normalize
from clipbench.settings import BootstrapSettings
from clipbench.stages.scores import hits
n, d, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(0)
meta = {"model": "synthetic", "dataset": f"unit-{n}"}
write_table(embedding_table(range(n), l2_normalize(rng.standard_normal((n, d), np.float32))),
            out + "/i.arrow", meta)
write_table(embedding_table(range(n), l2_normalize(rng.standard_normal((n, d), np.float32)),
            image_id=pa.array(range(n), pa.int64())), out + "/t.arrow", meta)
start = time.perf_counter()
hits(out + "/i.arrow", out + "/t.arrow", 5, [1, 5, 10],
     BootstrapSettings.parse({"resamples": 1000}),
     out + "/t2i.arrow", out + "/i2t.arrow", out + "/m.arrow")
seconds = time.perf_counter() - start
# VmHWM is this process's own high-water mark (ru_maxrss would carry the parent's over exec).
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "peak_rss_mb": int(hwm.split()[1]) / 1024}))
"""


# The tile reductions each hits run uses: the default (the C pass where it builds) and the torch
# path it replaced, which every machine without a C compiler runs.
KERNELS = {"auto": {}, "torch": {"CLIPBENCH_NATIVE": "0"}}


def hits_scaling(
    sizes: list[int], dim: int, repeats: int = 1, kernels: tuple[str, ...] = ("auto",)
) -> list[dict]:
    """The whole hits stage (both directions, 1,000 bootstrap resamples, artifacts written) on
    synthetic unit vectors, in a fresh process each (best of ``repeats``): its time, the
    GFLOP/s of the N × N × d score matrix it computes over that whole time, and its peak
    resident memory; once per tile kernel in ``kernels``."""
    rows = []
    for n, kernel in ((n, kernel) for n in sizes for kernel in kernels):
        results = []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                done = subprocess.run(
                    [sys.executable, "-c", CHILD, str(n), str(dim), tmp],
                    capture_output=True,
                    text=True,
                    check=True,
                    env={
                        **os.environ,
                        **KERNELS[kernel],
                        "PYTHONPATH": str(Path(__file__).parents[2]),
                    },
                )
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        best = min(results, key=lambda r: r["seconds"])
        rows.append(
            {
                "section": "hits",
                "name": f"hits stage, N = {n:,}, d = {dim}"
                + ("" if kernel == "auto" else f", {kernel} tile kernel"),
                "n": n,
                "peak": "fp32",
                "gflops": 2 * n * n * dim / best["seconds"] / 1e9,
                **best,
            }
        )
    return rows
