from clipbench.logs import job_log
from clipbench.report import ModelResults, build_report

with job_log(snakemake.log[0]):
    models, given = list(snakemake.params.models), snakemake.input
    # The per-model inputs are listed in model order (rules/common.smk: per_model).
    robustness = list(given.robustness) or [None] * len(models)
    results = [
        ModelResults(*row)
        for row in zip(
            models,
            given.metrics,
            given.histograms,
            given.kdes,
            given.ranks,
            given.queries,
            given.embeddings,
            robustness,
            strict=True,
        )
    ]
    build_report(
        dataset_name=snakemake.wildcards.dataset,
        dataset_path=given.dataset,
        results=results,
        comparisons_path=given.comparisons,
        references_path=given.references,
        out_html=snakemake.output.html,
        k=snakemake.params.top_k,
        recall_at=list(snakemake.params.recall_at),
        thumb_px=snakemake.params.thumbnail_px,
    )
