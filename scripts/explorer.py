from clipbench.cpus import compute_threads
from clipbench.explorer import ModelHits, write_explorer
from clipbench.logs import job_log

with job_log(snakemake.log[0]):
    models = list(snakemake.params.models)
    # The rule lists each direction's hits in model order.
    hits = {
        model: ModelHits(t2i, i2t)
        for model, t2i, i2t in zip(models, snakemake.input.t2i, snakemake.input.i2t, strict=True)
    }
    write_explorer(
        snakemake.input.dataset,
        snakemake.input.captions,
        hits,
        snakemake.output[0],
        snakemake.params.thumbnail_px,
        snakemake.params.max_thumbnails,
        workers=compute_threads(snakemake.threads),
    )
