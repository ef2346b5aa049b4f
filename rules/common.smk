import json
import os
import re
import sys

# The scripts import the clipbench package that sits beside this Snakefile; jobs on a
# cluster re-read the Snakefile, so they get the same path.
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        p for p in (workflow.basedir, os.environ.get("PYTHONPATH")) if p
    )
)

sys.path.insert(0, workflow.basedir)
from clipbench.config_checks import config_problems
from clipbench.cpus import cuda_visible, shared_cpu_environment, usable_cpus
from clipbench.settings import Settings
from clipbench.webdataset import expand_braces

# Local jobs share the CPUs with the model job computing (clipbench.cpus.shared_cpu_environment).
os.environ.update(shared_cpu_environment(workflow.local_exec, os.environ))

# Beyond the schema: a key repeated in a config file (the loader keeps the last one silently)
# and names equal but for case (they share paths on case-insensitive filesystems).
_config_problems = config_problems(config, workflow.configfiles)
if _config_problems:
    raise WorkflowError("config refused:\n" + "\n".join(_config_problems))

# The validated config as typed values: each model's spec (clipbench.kinds), the sections.
SETTINGS = Settings.from_config(config)
DATASETS = list(config["datasets"])
MODELS = list(SETTINGS.models)
DATASET_FILE_KEYS = ("parquet", "hf_folder")
# Models expected to resize/crop alike share one decoded copy of each dataset (ModelSpec.view).
VIEWS = {model: spec.view() for model, spec in SETTINGS.models.items()}
VIEW_MODEL = {}
for _model, _view in VIEWS.items():
    if _view is not None:
        VIEW_MODEL.setdefault(_view, _model)


# What the CPU-heavy jobs (pixels, encode, robustness, explorer) claim of --cores. A local run
# claims no more than the CPUs a job can use (its compute threads are capped there anyway), so
# the README's `--cores 4` on 2 CPUs leaves slots for the one-thread stages of a model already
# encoded: they run beside the next encode job, whose start is single-threaded imports, instead
# of all after the last one. A cluster job claims encode.threads: its allocation is the cap.
CPU_JOB_THREADS = (
    min(config["encode"]["threads"], usable_cpus())
    if workflow.local_exec
    else config["encode"]["threads"]
)

# The `gpu` a model job (encode, robustness) holds. A local run on a machine without a GPU
# holds none: the next model job then imports and loads its model (seconds, single-threaded)
# while this one computes, and they take turns at the CPUs (clipbench.cpus.cpu_compute_slot).
MODEL_JOB_GPUS = (
    0
    if workflow.local_exec
    and (config["encode"]["device"] == "cpu" or not cuda_visible())
    else 1
)


wildcard_constraints:
    dataset="|".join(map(re.escape, DATASETS)),
    model="|".join(map(re.escape, MODELS)),
    view="|".join(map(re.escape, VIEW_MODEL)) or "(?!)",


def dataset_files(wildcards):
    source = config["datasets"][wildcards.dataset]["source"]
    files = [source[key] for key in DATASET_FILE_KEYS if key in source]
    shards = source.get("webdataset", {})
    if "shards" in shards and "hub" not in shards:  # local shards are inputs too
        files += expand_braces(shards["shards"])
    return files


def canonical(value):
    """Params as sorted JSON: reordering keys in a config file must not trigger reruns."""
    return json.dumps(value, sort_keys=True)


def dataset_param(wildcards):
    """The dataset entry less its `reference` key, which only says what its results should
    reproduce: naming one must never rerun the jobs that compute them."""
    entry = config["datasets"][wildcards.dataset]
    return canonical({key: value for key, value in entry.items() if key != "reference"})


def view_geometry_param(wildcards):
    """The settings of the view's first model that decide its resize/crop: no weights."""
    return canonical(SETTINGS.models[VIEW_MODEL[wildcards.view]].geometry_entry())


def view_config_file(wildcards):
    return SETTINGS.models[VIEW_MODEL[wildcards.view]].geometry_files()


def model_spec_param(wildcards):
    """What decides the model's results (its `reference` key does not)."""
    return SETTINGS.models[wildcards.model].param()


def model_files(wildcards):
    """Local files the model reads: inputs, so edits rerun it and demo rules chain in."""
    return SETTINGS.models[wildcards.model].local_files()


def model_pixels(wildcards):
    """The dataset's shared decoded images for this model's view (none: it decodes itself)."""
    view = VIEWS[wildcards.model]
    return [] if view is None else f"results/{wildcards.dataset}/pixels/{view}.arrow"


def reference_tables():
    """The shipped table of published figures, then the config's own (later rows win)."""
    return [
        f"{workflow.basedir}/references/retrieval.csv",
        *config["references"]["tables"],
    ]


def per_model(pattern):
    """Input function: ``pattern`` expanded over every configured model, in config order."""
    return lambda wildcards: expand(pattern, dataset=wildcards.dataset, model=MODELS)


def robustness_datasets():
    return [d for d in DATASETS if SETTINGS.robustness.runs_on(d)]


def robustness_files(wildcards):
    if wildcards.dataset not in robustness_datasets():
        return []
    return expand(
        "results/{dataset}/robustness/{model}.arrow",
        dataset=wildcards.dataset,
        model=MODELS,
    )


def figure_outputs(pattern, names, category, **labels):
    """Each named figure (``{figure}`` in ``pattern``) as PNG and SVG; the PNG also goes into
    Snakemake's own report (``snakemake --report report.zip``), captioned by
    report/figures/<name>.rst."""
    files = []
    for name in names:
        path = pattern.replace("{figure}", name)
        caption = f"../report/figures/{name}.rst"
        labels_of = {"figure": name.replace("_", " "), **labels}
        png = report(
            f"{path}.png", caption=caption, category=category, labels=labels_of
        )
        files += [png, f"{path}.svg"]
    return files


def all_targets():
    return [
        "results/report.html",
        *expand(
            [
                "results/{dataset}/report.html",
                "results/{dataset}/explorer.html",
                "results/{dataset}/similarity/{model}.arrow",
            ],
            dataset=DATASETS,
            model=MODELS,
        ),
        *expand(
            "results/{dataset}/figures/{figure}.{ext}",
            dataset=DATASETS,
            figure=FIGURES,
            ext=["png", "svg"],
        ),
        *expand(
            "results/{dataset}/figures/robustness.{ext}",
            dataset=robustness_datasets(),
            ext=["png", "svg"],
        ),
        *expand(
            "results/{dataset}/clip_retrieval/{model}/metadata/metadata_0.parquet",
            dataset=DATASETS if config["export"]["clip_retrieval"] else [],
            model=MODELS,
        ),
    ]


def cancel_pending_timers():
    """Snakemake's job rate limiter (--max-jobs-per-timespan, 100/1s unless set) leaves a
    one-second threading.Timer pending after its last scheduling round, and the interpreter
    waits for it before exiting: about 1 s added to every run. Called once nothing is left to
    schedule."""
    import threading

    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer):
            thread.cancel()
