# CLIP-style models benchmarked on text-to-image retrieval.
#   snakemake --cores 4 --resources gpu=1                             (config.yaml)
#   snakemake --cores 2 --configfile tests/demo/config.yaml           (offline demo)
import sys

from snakemake.utils import min_version, validate

min_version("9.0")


# `snakemake --report report.zip`: the outputs marked with report() in the rules, their
# provenance, and this description.
report: "report/workflow.rst"


# A --configfile on the command line replaces config.yaml instead of merging into it, so the
# demo config does not inherit the default datasets and models.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


sys.path.insert(0, workflow.basedir)
from clipbench.presets import expand_presets

# A preset is a dataset entry written for you: filled in before validation, checked the same.
config["datasets"] = expand_presets(config.get("datasets") or {})
validate(config, "schemas/config.schema.yaml")


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/encode.smk"
include: "rules/similarity.smk"
include: "rules/hits.smk"
include: "rules/compare.smk"
include: "rules/references.smk"
include: "rules/histogram.smk"
include: "rules/queries.smk"
include: "rules/robustness.smk"
include: "rules/report.smk"
include: "rules/exports.smk"


# On a cluster these render pages and figures on the submit host, in seconds, instead of
# waiting in the queue as jobs of their own.
localrules:
    report,
    explorer,
    robustness_figures,
    figures,
    summary,


if "demo" in config:

    include: "rules/demo.smk"


rule all:
    default_target: True
    input:
        all_targets(),


# Exit as soon as the last job is done (rules/common.smk: cancel_pending_timers).
onsuccess:
    cancel_pending_timers()


onerror:
    cancel_pending_timers()
