import json

from clipbench.cpus import compute_threads
from clipbench.kinds import geometry_of
from clipbench.logs import job_log
from clipbench.pixels import write_pixels

with job_log(snakemake.log[0]) as progress:
    write_pixels(
        geometry_of(json.loads(snakemake.params.geometry)),
        snakemake.input.dataset,
        snakemake.output[0],
        workers=compute_threads(snakemake.threads),
        progress=progress,
    )
