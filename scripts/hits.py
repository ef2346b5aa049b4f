from clipbench.logs import job_log
from clipbench.stages import hits

with job_log(snakemake.log[0]):
    hits(
        snakemake.input.images,
        snakemake.input.texts,
        k=snakemake.params.top_k,
        recall_at=list(snakemake.params.recall_at),
        out_hits=snakemake.output.hits,
        out_metrics=snakemake.output.metrics,
    )
