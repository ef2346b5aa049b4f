from clipbench.exports import write_tidy
from clipbench.logs import job_log
from clipbench.report import DatasetResults, build_summary

with job_log(snakemake.log[0]):
    datasets, models = list(snakemake.params.datasets), list(snakemake.params.models)
    # The rule lists the metrics dataset by dataset, each in model order.
    metrics = iter(snakemake.input.metrics)
    results = [
        DatasetResults(name, {m: next(metrics) for m in models}, references)
        for name, references in zip(datasets, snakemake.input.references, strict=True)
    ]
    build_summary(
        results,
        out_html=snakemake.output.html,
        out_references=snakemake.output.references,
        figures=list(snakemake.output.figures),
        k=snakemake.params.top_k,
        recall_at=list(snakemake.params.recall_at),
    )
    # Every dataset × model × direction × metric in one table (CSV and Parquet).
    write_tidy(
        list(snakemake.input.metrics), snakemake.output.tidy_csv, snakemake.output.tidy_parquet
    )
