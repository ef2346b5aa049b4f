from clipbench.logs import job_log
from clipbench.stages.scores import queries

with job_log(snakemake.log[0]):
    queries(
        snakemake.input.images,
        snakemake.input.queries,
        snakemake.input.dataset,
        snakemake.params.top_k,
        snakemake.output[0],
    )
