from clipbench.logs import job_log
from clipbench.stages import encode

with job_log(snakemake.log[0]) as progress:
    encode(
        dataset_path=snakemake.input.dataset,
        model_name=snakemake.wildcards.model,
        spec=dict(snakemake.params.spec),
        settings=dict(snakemake.params.settings),
        queries=list(snakemake.params.queries),
        out_images=snakemake.output.images,
        out_texts=snakemake.output.texts,
        out_queries=snakemake.output.queries,
        threads=snakemake.threads,
        progress=progress,
    )
