"""The whole workflow's wall time on Pokémon-shaped data, and side by side with CLIP_benchmark
on the same data and models."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from clipbench.bench import peer

REPO = Path(__file__).parents[2]
CLIP_MODELS = {"clip-rn50": "RN50", "clip-vit-b-32": "ViT-B-32", "clip-vit-b-16": "ViT-B-16"}
# The README's command: the profile's greedy scheduler and `gpu=1` come with it.
README_FLAGS = ["--cores", "4", "--resources", "gpu=1"]
ENCODE_RULES = ("pixels", "encode")


def pokemon_shaped_row(i: int, seed: int) -> tuple[bytes, str]:
    """Row ``i``: a 1280×1280 JPEG of ~120 kB and its caption, from its own seed."""
    from PIL import Image

    from clipbench import demo

    color, bg, shape = list(demo.COLORS)[i % 6], list(demo.BACKGROUNDS)[i % 3], demo.SHAPES[i % 4]
    image = demo.draw_shape(shape, demo.COLORS[color], demo.BACKGROUNDS[bg], (1280, 1280))
    # Faint texture: ~120 kB at quality 90, what the real images weigh.
    noise = np.random.default_rng([seed, i]).integers(0, 7, (1280, 1280, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image) - noise).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), f"a drawing of a {color} {shape} pokemon on a {bg} background"


def write_dataset(parquet: Path, rows: int, seed: int = 0) -> None:
    """``rows`` 1280×1280 JPEGs of ~120 kB (as the Pokémon BLIP-captions images: 1000–1300 px,
    mostly flat backgrounds) with BLIP-like captions, in the Hugging Face Image layout. Drawn
    on every usable CPU (JPEG encoding and numpy's arithmetic release the GIL): 833 rows took
    a minute or more on one, device time on a lent GPU."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    from clipbench.arrow_io import atomic_path
    from clipbench.cpus import usable_cpus

    with ThreadPoolExecutor(usable_cpus()) as pool:
        blobs, captions = zip(
            *pool.map(pokemon_shaped_row, range(rows), [seed] * rows), strict=True
        )
    table = pa.table(
        {
            "image": pa.array(
                [{"bytes": b, "path": None} for b in blobs],
                pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            ),
            "text": captions,
        }
    )
    with atomic_path(str(parquet)) as tmp:
        pq.write_table(table, tmp)


def workflow_inputs(root: Path, rows: int, seed: int = 0) -> dict:
    """The dataset and random checkpoints of the default models' real architectures; returns
    the datasets and models of a config that runs them (CLIP models first)."""
    import open_clip
    import torchvision
    from transformers import BertConfig, BertModel, BertTokenizer

    from clipbench import demo

    root.mkdir(parents=True, exist_ok=True)
    parquet = root / f"pokemon-shaped-{rows}.parquet"
    if not parquet.exists():
        write_dataset(parquet, rows, seed)
    models = {}
    for name, arch in CLIP_MODELS.items():
        path = root / f"{arch}.safetensors"
        if not path.exists():
            demo.save_safetensors(open_clip.create_model(arch), str(path))
        # The -quickgelu configs: what OpenAI's weights were trained with (and what the
        # workflow builds for `pretrained: openai`).
        models[name] = {"kind": "open_clip", "arch": f"{arch}-quickgelu", "checkpoint": str(path)}
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
    return {"datasets": {"bench": {"source": {"parquet": str(parquet)}}}, "models": models}


def job_seconds(work: Path) -> dict[str, float]:
    """Each job's own wall time from its `benchmark:` file, by path under benchmarks/."""
    out = {}
    for tsv in (work / "benchmarks").rglob("*.tsv"):
        with tsv.open() as handle:
            row = next(csv.DictReader(handle, delimiter="\t"))
        out[str(tsv.relative_to(work / "benchmarks").with_suffix(""))] = float(row["s"])
    return out


def run_workflow(root: Path, config: dict, label: str, targets: tuple[str, ...] = ()) -> dict:
    """The README command on ``config`` from an empty results folder (for ``targets`` where
    given, else the whole DAG): wall time, and the jobs' own times summed by stage (encode and
    pixels, and everything after them)."""
    import yaml

    work = root / label
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    command = [
        sys.executable,
        "-m",
        "snakemake",
        *targets,  # first: --configfile and --quiet take every word after them
        "--snakefile",
        str(REPO / "Snakefile"),
        "--workflow-profile",
        str(REPO / "profiles" / "default"),
        "--directory",
        str(work),
        "--configfile",
        str(work / "config.yaml"),
        *README_FLAGS,
        "--quiet",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    finished = time.time()
    if done.returncode:
        raise RuntimeError(f"the workflow failed:\n{done.stderr[-4000:]}")
    jobs = job_seconds(work)
    # The tail the stages after encode add to the wall: from the last embeddings written.
    last_encode = max(p.stat().st_mtime for p in (work / "results").glob("*/embeddings/*/*"))
    # Each encode job's own time, less what it waited for another model job's compute.
    encode = {
        k.rsplit("/", 1)[-1]: v - waited_for_cpus(work / "logs" / f"{k}.log")
        for k, v in jobs.items()
        if "/encode/" in k
    }
    return {
        "seconds": wall,
        "jobs": len(jobs),
        "encode_jobs": encode,
        "pixels_seconds": sum(v for k, v in jobs.items() if "/pixels/" in k),
        "after_encode_seconds": sum(
            v
            for k, v in jobs.items()
            if not any(f"/{rule}" in f"/{k}" for rule in (*ENCODE_RULES, "download"))
        ),
        "after_last_encode_seconds": finished - last_encode,
        "after_last_encode_share": (finished - last_encode) / wall,
        "noop_seconds": _noop(command),
    }


def waited_for_cpus(log: Path) -> float:
    """Seconds a model job's log says it waited for the CPUs (clipbench.cpus)."""
    text = log.read_text() if log.exists() else ""
    return sum(float(s) for s in re.findall(r"CPUs free after ([0-9.]+) s", text))


def _noop(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, text=True, check=True)
    return time.perf_counter() - start


def whole_workflow(root: Path, rows: int) -> list[dict]:
    """The whole default workflow (the four default architectures) from empty results."""
    inputs = workflow_inputs(root / "inputs", rows)
    result = run_workflow(root, inputs, "default-4-models")
    return [
        {
            "section": "workflow",
            "name": f"whole default workflow (4 models, {rows} rows)",
            "n": rows,
            **_flat(result),
        }
    ]


SETTINGS = {"default": ("auto", True), "fp32": ("fp32", False)}  # ours, CLIP_benchmark's amp


def side_by_side(root: Path, rows: int, settings: tuple[str, ...] = tuple(SETTINGS)) -> list[dict]:
    """The three CLIP models on the same data through this workflow (the README command) and
    through CLIP_benchmark's evaluate as its CLI runs it: at each tool's default precision
    (ours `auto`, theirs AMP) and at float32 (ours `fp32`, theirs `--no_amp`)."""
    if not peer.available():
        raise RuntimeError(
            "CLIP_benchmark is not installed: pip install --no-deps clip-benchmark==1.6.2 "
            "(for this benchmark only)"
        )
    inputs = workflow_inputs(root / "inputs", rows)
    models = {m: inputs["models"][m] for m in CLIP_MODELS}
    parquet = Path(inputs["datasets"]["bench"]["source"]["parquet"])
    theirs_models = {m: (spec["arch"], spec["checkpoint"]) for m, spec in models.items()}
    # Without the chart libraries (a lent GPU machine, below) ours runs through every model's
    # metrics, which is what CLIP_benchmark computes, and the row says so.
    through = "report" if renders_charts() else "metrics"
    targets = (
        () if through == "report" else tuple(f"results/bench/metrics/{m}.arrow" for m in models)
    )
    rows_out = []
    for label in settings:
        precision, amp = SETTINGS[label]
        config = {**inputs, "models": models, "encode": {"precision": precision}}
        ours = run_workflow(root, config, f"clip-{label}", targets)
        # Their AMP on a CPU that only emulates bf16 would take hours: measured on the first
        # rows and extrapolated, and the row says so.
        extrapolated = amp and emulates_bf16()
        if extrapolated:
            theirs = peer.run_extrapolated(parquet, theirs_models, amp, rows)
        else:
            theirs = peer.run(parquet, theirs_models, amp=amp)
        rows_out.append(
            {
                "section": "versus",
                "name": f"3 CLIP models, {label}: ours {precision}, CLIP_benchmark amp={amp}",
                "n": rows,
                "ours_seconds": ours["seconds"],
                "theirs_seconds": theirs["seconds"],
                "speedup": theirs["seconds"] / ours["seconds"],
                "theirs_extrapolated": extrapolated,
                "ours_through": through,
                **{f"ours_{k}": v for k, v in _flat(ours).items() if k != "seconds"},
                **{f"theirs_{m}_seconds": r["seconds"] for m, r in theirs["models"].items()},
                # Per model, each tool's whole model run (loading, images and captions), as
                # images of this dataset a second.
                **{
                    f"{who}_{m}_images_per_s": rows / seconds
                    for who, per_model in (
                        ("ours", ours["encode_jobs"]),
                        ("theirs", {m: r["seconds"] for m, r in theirs["models"].items()}),
                    )
                    for m, seconds in per_model.items()
                },
            }
        )
    return rows_out


def renders_charts() -> bool:
    """Whether the report's chart libraries import here. A lent GPU machine has torch but
    none of the workflow's other libraries, which travel there as wheels within 64 MiB
    (clipbench/bench/device.sh), and polars' and vl-convert's 84 MB do not fit."""
    from importlib.util import find_spec

    return all(find_spec(name) for name in ("polars", "altair", "vl_convert"))


def emulates_bf16() -> bool:
    """Whether CLIP_benchmark's AMP (bf16 autocast where there is no GPU) runs emulated here."""
    import torch

    from clipbench.precision import native_reduced

    return not torch.cuda.is_available() and native_reduced(torch.device("cpu")) is None


def _flat(result: dict) -> dict:
    out = {k: v for k, v in result.items() if k != "encode_jobs"}
    out |= {f"encode_{m}_seconds": s for m, s in result["encode_jobs"].items()}
    return out
