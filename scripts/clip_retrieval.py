from clipbench.exports import write_clip_retrieval
from clipbench.logs import job_log

with job_log(snakemake.log[0]):
    write_clip_retrieval(
        snakemake.input.images,
        snakemake.input.texts,
        snakemake.input.captions,
        snakemake.output.images,
        snakemake.output.texts,
        snakemake.output.metadata,
    )
