from clipbench.logs import job_log
from clipbench.stages import histogram

with job_log(snakemake.log[0]):
    lo, hi = snakemake.params.range
    histogram(
        snakemake.input[0],
        snakemake.params.bins,
        lo,
        hi,
        snakemake.output.histogram,
        snakemake.output.kde,
    )
