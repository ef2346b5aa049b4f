"""Benchmark this machine: matmul peaks, encoder throughput, and the hits stage at scale.

    python -m clipbench.bench                  # everything, default sizes
    python -m clipbench.bench --quick          # fewer batches, N = 10k only
    python -m clipbench.bench --sections peaks models

Encoders run with **random weights of the real architectures** (open_clip RN50, ViT-B-32,
ViT-B-16, torchvision resnet50, BERT-base): the FLOPs are those of the real weights, no hub
access needed. FLOPs per item come from ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs
per multiply-add); each throughput is also given as a fraction of the GEMM peaks measured in
the same run, since absolute numbers drift on shared machines. Tables are printed and written
as Arrow under ``results/bench/``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from clipbench.arrow_io import write_table

# A typical Pokémon BLIP caption ("a drawing of a green pokemon with red eyes") is ~12 tokens.
CAPTION = "a cartoon drawing of a small yellow pokemon with red eyes"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def gemm_peaks(device: torch.device, n: int, repeats: int) -> list[dict]:
    """GFLOP/s of an n³ matmul per precision path, with the error vs float64 on a sample."""
    rows = []
    a64 = torch.randn(512, 512, dtype=torch.float64)
    b64 = torch.randn(512, 512, dtype=torch.float64)
    exact = a64 @ b64
    paths = [
        ("fp32 default", torch.float32, "highest"),
        ("fp32 matmul precision medium (oneDNN)", torch.float32, "medium"),
        ("bf16", torch.bfloat16, "highest"),
    ]
    if device.type == "cuda":
        paths.insert(1, ("tf32", torch.float32, "high"))
        paths.append(("fp16", torch.float16, "highest"))
    before = torch.get_float32_matmul_precision()
    try:
        for name, dtype, precision in paths:
            torch.set_float32_matmul_precision(precision)
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            seconds = timed(lambda a=a, b=b: a @ b, device, repeats)
            approx = (a64.to(device, dtype) @ b64.to(device, dtype)).double().cpu()
            error = float((approx - exact).abs().max() / exact.abs().max())
            rows.append(
                {
                    "section": "peak",
                    "name": name,
                    "gflops": 2 * n**3 / seconds / 1e9,
                    "relative_error": error,
                }
            )
    finally:
        torch.set_float32_matmul_precision(before)
    return rows


def model_cases(device: torch.device, channels_last: bool):
    """(name, kind, owner module, callable, input maker(batch), convolutional) for each encoder
    tower, random weights."""
    import open_clip
    import torchvision
    from transformers import BertConfig, BertModel

    from clipbench.encoders import encode_text_truncated

    def image_input(size):
        def make(batch):
            x = torch.randn(batch, 3, size, size, device=device)
            return x.contiguous(memory_format=torch.channels_last) if channels_last else x

        return make

    for arch in ("RN50", "ViT-B-32", "ViT-B-16"):
        model = open_clip.create_model(arch).to(device).eval()
        visual = model.visual
        if channels_last and arch.startswith("RN"):
            visual = visual.to(memory_format=torch.channels_last)
        conv = arch.startswith("RN")
        yield f"clip {arch} image", "image", visual, visual, image_input(224), conv
        if arch == "ViT-B-32":
            tokens = open_clip.get_tokenizer(arch)([CAPTION])[0].to(device)

            def text_input(batch, tokens=tokens):
                return tokens.expand(batch, -1).contiguous()

            yield "clip text, padded to 77", "text", model, model.encode_text, text_input, False
            yield (
                "clip text, truncated",
                "text",
                model,
                lambda t, model=model: encode_text_truncated(model, t),
                text_input,
                False,
            )
    resnet = torchvision.models.resnet50().to(device).eval()
    if channels_last:
        resnet = resnet.to(memory_format=torch.channels_last)
    yield "torchvision resnet50", "image", resnet, resnet, image_input(224), True
    bert = BertModel(BertConfig()).to(device).eval()
    n_tokens = 14  # [CLS] + the caption's word pieces + [SEP]

    for label, length in (
        ("bert-base, dynamic padding", n_tokens),
        ("bert-base, padded to 77", 77),
    ):

        def bert_input(batch, length=length):
            ids = torch.randint(1000, 30000, (batch, length), device=device)
            mask = torch.zeros_like(ids)
            mask[:, :n_tokens] = 1
            return ids, mask

        yield (
            label,
            "text",
            bert,
            lambda x, bert=bert: bert(input_ids=x[0], attention_mask=x[1]),
            bert_input,
            False,
        )


def flops_per_item(module, make_input) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    # With autograd on, nn.MultiheadAttention skips its fused inference kernel, which the
    # counter cannot see into: the count then includes the attention projections.
    with torch.enable_grad(), counter:
        module(make_input(1))
    return float(counter.get_total_flops())


def model_throughput(
    device, batch: int | str, repeats: int, precision: str, channels_last: bool
) -> list[dict]:
    """Each tower run as the workflow runs it at ``precision`` (see
    :func:`clipbench.encode.precision_context`; bf16 on CPU casts the weights), at ``batch``
    or, for "auto", at the batch the workflow's ``batch_size: auto`` picks for it."""
    from clipbench.encode import AUTO_BATCH, precision_context

    rows = []
    cast = precision == "bf16" and device.type == "cpu"
    auto = AUTO_BATCH["cuda" if device.type == "cuda" else "cpu"]
    for name, kind, owner, module, make_input, conv in model_cases(device, channels_last):
        size = auto["convolutional" if conv else "other"] if batch == "auto" else int(batch)
        flops = flops_per_item(module, make_input)
        x = make_input(size)
        if cast:
            owner.to(torch.bfloat16)
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                x = x.to(torch.bfloat16)

        def run(module=module, x=x):
            with torch.inference_mode(), precision_context(device, precision):
                return module(x)

        seconds = timed(run, device, repeats)
        rows.append(
            {
                "section": "model",
                "name": name,
                "kind": kind,
                "precision": precision,
                "batch": size,
                "gflop_per_item": flops / 1e9,
                "items_per_s": size / seconds,
                "gflops": flops * size / seconds / 1e9,
            }
        )
    return rows


HITS_CHILD = """
import json, sys, time
import numpy as np, pyarrow as pa
from clipbench.arrow_io import write_table
from clipbench.embeddings import embedding_table, l2_normalize
from clipbench.stages import hits
n, d, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(0)
meta = {"model": "synthetic", "dataset": f"unit-{n}"}
write_table(embedding_table(range(n), l2_normalize(rng.standard_normal((n, d), np.float32))),
            out + "/i.arrow", meta)
write_table(embedding_table(range(n), l2_normalize(rng.standard_normal((n, d), np.float32)),
            image_id=pa.array(range(n), pa.int64())), out + "/t.arrow", meta)
start = time.perf_counter()
hits(out + "/i.arrow", out + "/t.arrow", 5, [1, 5, 10],
     {"resamples": 1000, "seed": 0, "level": 0.95},
     out + "/t2i.arrow", out + "/i2t.arrow", out + "/m.arrow")
seconds = time.perf_counter() - start
# VmHWM is this process's own high-water mark (ru_maxrss would carry the parent's over exec).
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "peak_rss_mb": int(hwm.split()[1]) / 1024}))
"""


def hits_scaling(sizes: list[int], dim: int) -> list[dict]:
    """The hits stage (both directions, 1,000 bootstrap resamples) on synthetic unit vectors,
    in a fresh process each, for its time and peak resident memory."""
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run(
                [sys.executable, "-c", HITS_CHILD, str(n), str(dim), tmp],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
            )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(
            {"section": "hits", "name": f"hits stage, N = {n:,}, d = {dim}", "n": n, **result}
        )
    return rows


def workflow_inputs(root: Path, rows: int, seed: int = 0) -> Path:
    """An 833-row dataset of 1280×1280 JPEGs (the Pokémon images' size) and random checkpoints
    of the default models' real architectures; returns the config that runs them."""
    import io

    import open_clip
    import torchvision
    import yaml
    from PIL import Image
    from transformers import BertConfig, BertModel, BertTokenizer

    from clipbench import demo

    root.mkdir(parents=True, exist_ok=True)
    parquet = root / "dataset.parquet"
    if not parquet.exists():
        rng = np.random.default_rng(seed)
        blobs, captions = [], []
        for i in range(rows):
            color, bg, shape = (
                list(demo.COLORS)[i % 6],
                list(demo.BACKGROUNDS)[i % 3],
                demo.SHAPES[i % 4],
            )
            image = demo.draw_shape(shape, demo.COLORS[color], demo.BACKGROUNDS[bg], (1280, 1280))
            noise = rng.integers(0, 24, (1280, 1280, 3), dtype=np.uint8)  # texture for the codec
            image = Image.fromarray(np.asarray(image) - noise)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            blobs.append(buffer.getvalue())
            captions.append(f"a {color} {shape} on a {bg} background")
        pa_table = pa.table(
            {
                "image": pa.array(
                    [{"bytes": b, "path": None} for b in blobs],
                    pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
                ),
                "text": captions,
            }
        )
        import pyarrow.parquet as pq

        pq.write_table(pa_table, parquet)
    models = {}
    for name, arch in (
        ("clip-rn50", "RN50"),
        ("clip-vit-b-32", "ViT-B-32"),
        ("clip-vit-b-16", "ViT-B-16"),
    ):
        path = root / f"{arch}.safetensors"
        if not path.exists():
            demo.save_safetensors(open_clip.create_model(arch), str(path))
        models[name] = {"kind": "open_clip", "arch": arch, "checkpoint": str(path)}
    resnet, bert = root / "resnet50.safetensors", root / "bert-base"
    if not resnet.exists():
        demo.save_safetensors(torchvision.models.resnet50(), str(resnet))
    if not bert.exists():
        demo.write_bert(str(bert), seed)  # the demo vocabulary covers these captions
        BertModel(
            BertConfig(vocab_size=BertTokenizer.from_pretrained(bert).vocab_size)
        ).save_pretrained(bert)
    models["bert-resnet50"] = {
        "kind": "bert_resnet",
        "text_model_dir": str(bert),
        "image_arch": "resnet50",
        "image_checkpoint": str(resnet),
    }
    config = {
        "datasets": {"bench": {"source": {"parquet": str(parquet)}}},
        "models": models,
        "encode": {"device": "auto", "threads": os.cpu_count()},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def workflow_wall(root: Path, rows: int) -> list[dict]:
    """Wall time of the whole workflow (4 default architectures, random weights) from a clean
    results folder, and of a no-op rerun."""
    root = root.resolve()  # the workflow runs in another directory
    config = workflow_inputs(root / "inputs", rows)
    work = root / "work"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    repo = Path(__file__).parents[1]
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(repo / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(config),
        "--cores",
        str(os.cpu_count()),
        "--quiet",
    ]
    out = []
    for label in ("whole default workflow (4 models, 833 rows)", "no-op rerun"):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"the workflow failed:\n{done.stderr[-4000:]}")
        out.append(
            {
                "section": "workflow",
                "name": label,
                "seconds": time.perf_counter() - start,
                "n": rows,
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["peaks", "models", "hits"],
        choices=["peaks", "models", "hits", "workflow"],
        help="workflow (not in the default set): the whole default workflow's wall time",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--batch",
        default="auto",
        type=lambda v: v if v == "auto" else int(v),
        help="items per forward pass; auto: what the workflow's batch_size: auto picks per tower",
    )
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["fp32", "bf16"],
        choices=["fp32", "fp32-strict", "bf16", "fp16"],
    )
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--hits-sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--quick", action="store_true", help="1 repeat, small GEMM, N = 10k")
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args(argv)

    from clipbench.encode import library_versions, resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    repeats = 1 if args.quick else 3
    rows: list[dict] = []
    if "peaks" in args.sections:
        rows += gemm_peaks(device, 2048 if args.quick else 4096, repeats)
    if "models" in args.sections:
        for precision in args.precision:
            rows += model_throughput(
                device, args.batch, repeats, precision, not args.no_channels_last
            )
    if "hits" in args.sections:
        rows += hits_scaling(args.hits_sizes[:1] if args.quick else args.hits_sizes, 512)
    if "workflow" in args.sections:
        rows += workflow_wall(Path(args.out) / "workflow", 833)

    peaks = {r["name"]: r["gflops"] for r in rows if r["section"] == "peak"}
    for row in rows:
        if row["section"] == "model":
            key = {
                "fp32": "fp32 matmul precision medium (oneDNN)",
                "fp32-strict": "fp32 default",
                "bf16": "bf16",
                "fp16": "fp16",
            }[row["precision"]]
            if key in peaks:
                row["share_of_peak"] = row["gflops"] / peaks[key]
    columns = sorted({k for r in rows for k in r}, key=lambda k: (k != "section", k != "name", k))
    table = pa.table({c: [r.get(c) for r in rows] for c in columns})
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({os.cpu_count()} cores, {args.threads} threads)"
    )
    meta = {
        "device": device_name,
        "threads": args.threads,
        "libraries": library_versions(),
        "weights": "random, real architectures",
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_table(table, Path(args.out) / f"bench-{device.type}.arrow", meta)
    print(
        f"# device: {device_name}; torch {torch.__version__}; random weights of the real "
        "architectures"
    )
    for row in rows:
        print(
            "  ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            )
        )
    print(
        f"# peak RSS of this process: "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )


if __name__ == "__main__":
    main()
