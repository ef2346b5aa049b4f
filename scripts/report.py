from clipbench.logs import job_log
from clipbench.report import build_report

with job_log(snakemake.log[0]):
    build_report(
        dataset_name=snakemake.wildcards.dataset,
        dataset_path=snakemake.input.dataset,
        models=list(snakemake.params.models),
        metrics_paths=list(snakemake.input.metrics),
        comparisons_path=snakemake.input.comparisons,
        references_path=snakemake.input.references,
        hist_paths=list(snakemake.input.histograms),
        kde_paths=list(snakemake.input.kdes),
        rank_paths=list(snakemake.input.ranks),
        query_paths=list(snakemake.input.queries),
        embedding_paths=list(snakemake.input.embeddings),
        robustness_paths=list(snakemake.input.robustness),
        out_html=snakemake.output.html,
        figures=list(snakemake.output.figures),
        k=snakemake.params.top_k,
        recall_at=list(snakemake.params.recall_at),
        thumb_px=snakemake.params.thumbnail_px,
    )
