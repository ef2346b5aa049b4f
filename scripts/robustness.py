import json

from clipbench.kinds import parse_model
from clipbench.logs import job_log
from clipbench.settings import EncodeSettings, RetrySettings, RobustnessSettings
from clipbench.stages.robustness import run_robustness

with job_log(snakemake.log[0], model_job=True) as progress:
    run_robustness(
        dataset_path=snakemake.input.dataset,
        captions_path=snakemake.input.captions,
        images_path=snakemake.input.images,
        texts_path=snakemake.input.texts,
        model_name=snakemake.wildcards.model,
        spec=parse_model(json.loads(snakemake.params.spec)),
        settings=EncodeSettings.parse(json.loads(snakemake.params.settings)),
        robustness=RobustnessSettings.from_param(snakemake.params.perturbations),
        k=snakemake.params.top_k,
        recall_at=list(snakemake.params.recall_at),
        out_path=snakemake.output[0],
        threads=snakemake.threads,
        progress=progress,
        # How hub files are retried: from the config, not a param, so that changing it never
        # reruns finished jobs.
        retry=RetrySettings.parse(snakemake.config["download"]),
        ties=snakemake.params.ties,
    )
