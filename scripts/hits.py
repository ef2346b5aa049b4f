import json

from clipbench.exports import write_clip_benchmark
from clipbench.logs import job_log
from clipbench.settings import BootstrapSettings
from clipbench.stages.scores import hits

with job_log(snakemake.log[0]):
    hits(
        snakemake.input.images,
        snakemake.input.texts,
        k=snakemake.params.top_k,
        recall_at=list(snakemake.params.recall_at),
        bootstrap=BootstrapSettings.parse(json.loads(snakemake.params.bootstrap)),
        out_t2i=snakemake.output.t2i,
        out_i2t=snakemake.output.i2t,
        out_metrics=snakemake.output.metrics,
        tile_scores=snakemake.params.tile_scores,
        ties=snakemake.params.ties,
    )
    # The same metrics in CLIP_benchmark's result shape, for the tools that read it.
    write_clip_benchmark(
        snakemake.output.metrics, snakemake.input.texts, snakemake.output.clip_benchmark
    )
