from clipbench.demo import write_demo_parquet
from clipbench.logs import job_log

with job_log(snakemake.log[0]):
    write_demo_parquet(
        snakemake.output[0], snakemake.params.rows, snakemake.params.seed, snakemake.params.multi
    )
