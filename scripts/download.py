import json

from clipbench.logs import job_log
from clipbench.settings import RetrySettings
from clipbench.stages.download import download

with job_log(snakemake.log[0]):
    download(
        json.loads(snakemake.params.cfg),
        snakemake.wildcards.dataset,
        snakemake.output.images,
        snakemake.output.captions,
        # How often to retry does not change the artifact: from the config, not a param, so
        # tuning it reruns nothing.
        RetrySettings.parse(snakemake.config["download"]),
    )
