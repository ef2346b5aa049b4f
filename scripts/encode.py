import json

from clipbench.kinds import parse_model
from clipbench.logs import job_log
from clipbench.settings import EncodeSettings, RetrySettings
from clipbench.stages.encode import run_encode

with job_log(snakemake.log[0], model_job=True) as progress:
    run_encode(
        dataset_path=snakemake.input.dataset,
        captions_path=snakemake.input.captions,
        model_name=snakemake.wildcards.model,
        spec=parse_model(json.loads(snakemake.params.spec)),
        settings=EncodeSettings.parse(json.loads(snakemake.params.settings)),
        queries=list(snakemake.params.queries),
        out_images=snakemake.output.images,
        out_texts=snakemake.output.texts,
        out_queries=snakemake.output.queries,
        threads=snakemake.threads,
        progress=progress,
        # How hub files are retried: from the config, not a param, so that changing it never
        # reruns finished jobs.
        retry=RetrySettings.parse(snakemake.config["download"]),
        pixels_path=snakemake.input.pixels or None,
    )
