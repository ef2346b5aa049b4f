"""Benchmark this machine: matmul peaks, encoder throughput, the hits stage at scale, the whole
workflow, and the workflow against CLIP_benchmark.

    python -m clipbench.bench                       # peaks, models, mechanisms, hits
    python -m clipbench.bench --quick               # fewer repeats, N = 10k only
    python -m clipbench.bench --sections versus     # against CLIP_benchmark (pip install
                                                    #   --no-deps clip-benchmark==1.6.2 first)
    python -m clipbench.bench --sections workflow   # the whole default workflow (4 models)

Random weights of the real architectures throughout (same FLOPs as the real weights). Tables
are printed and written as Arrow under ``results/bench/``.
"""

from __future__ import annotations

import argparse
import platform
import resource
from pathlib import Path

import pyarrow as pa
import torch

from clipbench.allocator import keep_freed_memory
from clipbench.arrow_io import write_table
from clipbench.bench.kernels import (
    epilogues,
    gemm_peaks,
    gemm_shapes,
    mechanisms,
    model_throughput,
)
from clipbench.bench.scale import KERNELS, hits_scaling
from clipbench.bench.workflow import side_by_side, whole_workflow
from clipbench.cpus import usable_cpus
from clipbench.fp32_modes import FP32_LEVEL_ERROR
from clipbench.precision import resolve_device
from clipbench.stages.encode import library_versions

SECTIONS = ["peaks", "models", "mechanisms", "hits", "workflow", "versus"]
DEFAULT_SECTIONS = ["peaks", "models", "mechanisms", "hits"]


def cpu_name() -> str:
    flags, model = set(), platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    extras = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{model} ({usable_cpus()} usable CPUs{', ' + ', '.join(extras) if extras else ''})"


def shares(rows: list[dict]) -> None:
    """Each throughput row's share of the same-run peak of its precision: for bf16 and fp16
    the peak of that dtype, for float32 the best float32 mode at float32 error (whichever
    mode the tower runs: a mode whose peak merely measured lower is no excuse)."""
    peaks = {r["name"]: r["gflops"] for r in rows if r["section"] == "peak"}
    exact = [
        r["gflops"]
        for r in rows
        if r["section"] == "peak"
        and r["name"].startswith("fp32")
        and r["relative_error"] <= FP32_LEVEL_ERROR
    ]
    for row in rows:
        if row.get("peak") not in peaks or "gflops" not in row:
            continue
        peak = max(exact) if row["peak"].startswith("fp32") and exact else peaks[row["peak"]]
        row["share_of_peak"] = row["gflops"] / peak


def save(rows: list[dict], path: Path, meta: dict) -> None:
    columns = sorted({k for r in rows for k in r}, key=lambda k: (k != "section", k != "name", k))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table(pa.table({c: [r.get(c) for r in rows] for c in columns}), path, meta)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", default=DEFAULT_SECTIONS, choices=SECTIONS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=usable_cpus())
    parser.add_argument(
        "--batch",
        default="auto",
        type=lambda v: v if v == "auto" else int(v),
        help="items per forward pass; auto: what the workflow's batch_size: auto picks per tower",
    )
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["auto", "fp32"],
        choices=["auto", "fp32", "fp32-strict", "bf16", "fp16"],
    )
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--hits-sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument(
        "--hits-kernels",
        nargs="+",
        default=["auto"],
        choices=sorted(KERNELS),
        help="tile kernels to time the hits stage with (torch: the path without a C compiler)",
    )
    parser.add_argument("--rows", type=int, default=833, help="dataset rows of workflow/versus")
    parser.add_argument(
        "--versus",
        nargs="+",
        default=["default", "fp32"],
        choices=["default", "fp32"],
        help="versus: each tool at its default precision, and both at float32",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 repeat, small GEMMs, N = 10k")
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cpu":  # every section under the allocator the encode jobs run with
        keep_freed_memory()
    if device.type == "cuda":  # as the encode jobs run: cuDNN's fastest convolutions
        torch.backends.cudnn.benchmark = True
    repeats = 1 if args.quick else args.repeats
    out = Path(args.out).resolve()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    meta = {
        "device": device_name,
        "threads": args.threads,
        "repeats": repeats,
        "libraries": library_versions(),
        "weights": "random, real architectures",
    }
    print(
        f"# device: {device_name}; {args.threads} threads; torch {torch.__version__}; random "
        f"weights of the real architectures; best of {repeats} repeat(s)",
        flush=True,
    )
    squares = [1024, 2048] if args.quick else [1024, 2048, 4096]
    runs = {
        "peaks": lambda: gemm_peaks(device, gemm_shapes(squares), repeats),
        "models": lambda: [
            row
            for precision in args.precision
            for row in model_throughput(
                device, args.batch, repeats, precision, not args.no_channels_last
            )
        ],
        "mechanisms": lambda: mechanisms(device, repeats) + epilogues(device, max(repeats, 5)),
        "hits": lambda: hits_scaling(
            args.hits_sizes[:1] if args.quick else args.hits_sizes,
            512,
            kernels=tuple(args.hits_kernels),
        ),
        "workflow": lambda: whole_workflow(out / "workflow", args.rows),
        "versus": lambda: side_by_side(out / "versus", args.rows, args.versus),
    }
    rows: list[dict] = []
    for section in SECTIONS:
        if section not in args.sections:
            continue
        added = runs[section]()
        if device.type == "cuda":  # the workflow and the peer run as processes of their own
            torch.cuda.empty_cache()
        rows += added
        shares(rows)
        # Written after every section: a later one that fails or runs out of time (a lent
        # GPU's minutes) keeps what came before.
        save(rows, out / f"bench-{device.type}.arrow", meta)
        for row in added:
            print(
                "  ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                ),
                flush=True,
            )
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
    print(f"# peak RSS of this process: {peak_rss} MB")


if __name__ == "__main__":
    main()
