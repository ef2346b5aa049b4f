from clipbench.logs import job_log
from clipbench.stages.scores import similarity

with job_log(snakemake.log[0]):
    similarity(
        snakemake.input.images,
        snakemake.input.texts,
        snakemake.output[0],
        max_rows=snakemake.params.max_rows,
        tile_scores=snakemake.params.tile_scores,
    )
