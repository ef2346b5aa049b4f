import json

from clipbench.logs import job_log
from clipbench.stages.references import references

with job_log(snakemake.log[0]):
    references(
        list(snakemake.input.metrics),
        list(snakemake.input.tables),
        dataset_key=snakemake.params.dataset_key,
        model_keys=json.loads(snakemake.params.model_keys),
        k=snakemake.params.top_k,
        tolerance=snakemake.params.tolerance,
        out_path=snakemake.output[0],
    )
