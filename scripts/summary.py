from clipbench.logs import job_log
from clipbench.report import build_summary

with job_log(snakemake.log[0]):
    models = list(snakemake.params.models)
    paths = list(snakemake.input.metrics)
    build_summary(
        datasets=list(snakemake.params.datasets),
        models=models,
        # Inputs are listed dataset by dataset, each in model order.
        metrics_paths=[paths[i : i + len(models)] for i in range(0, len(paths), len(models))],
        references_paths=list(snakemake.input.references),
        out_html=snakemake.output.html,
        out_references=snakemake.output.references,
        figures=list(snakemake.output.figures),
        k=snakemake.params.top_k,
        recall_at=list(snakemake.params.recall_at),
    )
