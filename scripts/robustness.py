import json

from clipbench.logs import job_log
from clipbench.stages.encode import EncodeSettings
from clipbench.stages.robustness import run_robustness

with job_log(snakemake.log[0]) as progress:
    run_robustness(
        dataset_path=snakemake.input.dataset,
        captions_path=snakemake.input.captions,
        images_path=snakemake.input.images,
        texts_path=snakemake.input.texts,
        model_name=snakemake.wildcards.model,
        spec=json.loads(snakemake.params.spec),
        # How hub files are retried: from the config, not a param, so that changing it never
        # reruns finished jobs.
        settings=EncodeSettings.parse(
            json.loads(snakemake.params.settings), snakemake.config["download"]
        ),
        robustness=json.loads(snakemake.params.robustness),
        k=snakemake.params.top_k,
        recall_at=list(snakemake.params.recall_at),
        out_path=snakemake.output[0],
        threads=snakemake.threads,
        progress=progress,
        ties=snakemake.params.ties,
    )
