import json

from clipbench.logs import job_log
from clipbench.stages import download

with job_log(snakemake.log[0]):
    download(
        json.loads(snakemake.params.cfg),
        snakemake.wildcards.dataset,
        snakemake.output.images,
        snakemake.output.captions,
    )
