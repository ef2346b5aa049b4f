from clipbench.logs import job_log
from clipbench.report import build_robustness_figures

with job_log(snakemake.log[0]):
    build_robustness_figures(
        list(snakemake.params.models),
        list(snakemake.input),
        list(snakemake.output),
        k=snakemake.params.top_k,
        recall_at=list(snakemake.params.recall_at),
    )
