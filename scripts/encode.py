import json

from clipbench.logs import job_log
from clipbench.stages.encode import EncodeSettings, run_encode

with job_log(snakemake.log[0]) as progress:
    run_encode(
        dataset_path=snakemake.input.dataset,
        captions_path=snakemake.input.captions,
        model_name=snakemake.wildcards.model,
        spec=json.loads(snakemake.params.spec),
        # How hub files are retried: from the config, not a param, so that changing it never
        # reruns finished jobs.
        settings=EncodeSettings.parse(
            json.loads(snakemake.params.settings), snakemake.config["download"]
        ),
        queries=list(snakemake.params.queries),
        out_images=snakemake.output.images,
        out_texts=snakemake.output.texts,
        out_queries=snakemake.output.queries,
        threads=snakemake.threads,
        progress=progress,
        pixels_path=snakemake.input.pixels or None,
    )
