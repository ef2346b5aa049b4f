"""LAION's CLIP_benchmark, run the way its CLI runs zero-shot retrieval, on one of our parquet
datasets: for the benchmark command's side-by-side section only (``pip install --no-deps
clip-benchmark``; never a dependency of the workflow).

Its CLI (``clip_benchmark eval --task zeroshot_retrieval``) loads each open_clip model with
``create_model_and_transforms``, iterates a ``DataLoader`` (``--batch_size`` 64,
``--num_workers`` 4, its image–captions collate function) and calls
``metrics.zeroshot_retrieval.evaluate`` with ``amp`` on unless ``--no_amp``. This module does
exactly that on the rows of a Hugging Face Image parquet file, in a fresh process per run, so
its imports and start-up count as they would for a user.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

# CLIP_benchmark's CLI defaults (clip_benchmark/cli.py).
BATCH_SIZE, NUM_WORKERS = 64, 4

CHILD = r"""
import io, json, sys, time
start = time.perf_counter()
import open_clip, pyarrow.parquet as pq, torch
from PIL import Image
from clip_benchmark.datasets.builder import image_captions_collate_fn
from clip_benchmark.metrics import zeroshot_retrieval

parquet, models, amp, batch_size, workers = sys.argv[1], json.loads(sys.argv[2]), \
    sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5])
table = pq.read_table(parquet)
blobs = [row["bytes"] for row in table.column("image").to_pylist()]
texts = table.column("text").to_pylist()

class Rows(torch.utils.data.Dataset):
    def __init__(self, transform):
        self.transform = transform
    def __len__(self):
        return len(blobs)
    def __getitem__(self, i):
        image = Image.open(io.BytesIO(blobs[i])).convert("RGB")
        return self.transform(image), [texts[i]]

device = "cuda" if torch.cuda.is_available() else "cpu"
out = {"models": {}}
for name, (arch, checkpoint) in models.items():
    began = time.perf_counter()
    model, _, transform = open_clip.create_model_and_transforms(arch, pretrained=checkpoint)
    # As its CLI's loader (models/open_clip.py) does: evaluate moves only the batches.
    model = model.to(device).eval()
    tokenizer = open_clip.get_tokenizer(arch)
    loader = torch.utils.data.DataLoader(
        Rows(transform), batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=image_captions_collate_fn,
    )
    metrics = zeroshot_retrieval.evaluate(
        model, loader, tokenizer, device, amp=amp, recall_k_list=[1, 5, 10],
    )
    out["models"][name] = {"seconds": time.perf_counter() - began, "metrics": metrics}
out["seconds_in_process"] = time.perf_counter() - start
print(json.dumps(out))
"""


def available() -> bool:
    from importlib.util import find_spec

    return find_spec("clip_benchmark") is not None


def run(
    parquet: Path,
    models: dict[str, tuple[str, str]],
    amp: bool,
    batch_size: int = BATCH_SIZE,
    workers: int = NUM_WORKERS,
) -> dict:
    """Wall time of one CLIP_benchmark process evaluating ``models`` ({name: (arch,
    checkpoint)}) on ``parquet``, with each model's own seconds and metrics."""
    args = [str(parquet), json.dumps(models), "1" if amp else "0", str(batch_size), str(workers)]
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"CLIP_benchmark failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": wall, **result}


def extrapolate(seconds_by_rows: dict[int, float], rows: int) -> float:
    """Seconds at ``rows`` on the line through two measured (rows, seconds): the intercept is
    the model's start-up, the slope its time per row."""
    (small, at_small), (large, at_large) = sorted(seconds_by_rows.items())
    per_row = (at_large - at_small) / (large - small)
    return at_small + (rows - small) * per_row


def run_extrapolated(
    parquet: Path,
    models: dict[str, tuple[str, str]],
    amp: bool,
    rows: int,
    prefixes: tuple[int, int] = (64, 128),
) -> dict:
    """As :func:`run`, on the first ``prefixes`` rows of ``parquet``, each model's seconds
    extrapolated to ``rows`` (:func:`extrapolate`), plus the smaller run's process start:
    for a run that would take hours. CLIP_benchmark's AMP on a CPU without AVX-512 BF16 or
    AMX emulates bf16 (2-core Zen 3: its bf16 GEMM ~1 GFLOP/s against float32's 180)."""
    import pyarrow.parquet as pq

    table = pq.read_table(parquet)
    runs = {}
    for size in prefixes:
        part = parquet.with_name(f"{parquet.stem}-first-{size}.parquet")
        pq.write_table(table.slice(0, size), part)
        runs[size] = run(part, models, amp)
    first = runs[prefixes[0]]
    start_up = first["seconds"] - sum(m["seconds"] for m in first["models"].values())
    per_model = {
        name: extrapolate({size: runs[size]["models"][name]["seconds"] for size in runs}, rows)
        for name in models
    }
    return {
        "seconds": start_up + sum(per_model.values()),
        "models": {name: {"seconds": seconds} for name, seconds in per_model.items()},
    }
