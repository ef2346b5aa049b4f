from clipbench.logs import job_log
from clipbench.stages.distributions import histogram

with job_log(snakemake.log[0]):
    lo, hi = snakemake.params.range
    histogram(
        snakemake.input.images,
        snakemake.input.texts,
        snakemake.input.t2i,
        snakemake.input.i2t,
        bins=snakemake.params.bins,
        lo=lo,
        hi=hi,
        max_pairs=snakemake.params.max_pairs,
        seed=snakemake.params.seed,
        out_hist=snakemake.output.histogram,
        out_kde=snakemake.output.kde,
        out_ranks=snakemake.output.ranks,
        ties=snakemake.params.ties,
    )
