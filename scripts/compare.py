import json

from clipbench.logs import job_log
from clipbench.settings import BootstrapSettings
from clipbench.stages.scores import compare

with job_log(snakemake.log[0]):
    compare(
        list(snakemake.params.models),
        list(snakemake.input.t2i),
        list(snakemake.input.i2t),
        k=snakemake.params.top_k,
        recall_at=list(snakemake.params.recall_at),
        bootstrap=BootstrapSettings.parse(json.loads(snakemake.params.bootstrap)),
        out_path=snakemake.output[0],
        ties=snakemake.params.ties,
    )
