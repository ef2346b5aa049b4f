from clipbench.logs import job_log
from clipbench.report import ChartInputs, build_figures

with job_log(snakemake.log[0]):
    given = snakemake.input
    build_figures(
        # The per-model inputs are listed in model order (rules/common.smk: per_model).
        ChartInputs(
            list(snakemake.params.models),
            list(given.metrics),
            list(given.histograms),
            list(given.kdes),
            list(given.ranks),
        ),
        list(snakemake.output),
        k=snakemake.params.top_k,
        recall_at=list(snakemake.params.recall_at),
    )
