import json

import torch

from clipbench.encoders import Geometry
from clipbench.logs import job_log
from clipbench.pixels import write_pixels

with job_log(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    write_pixels(
        Geometry(json.loads(snakemake.params.geometry)),
        snakemake.input.dataset,
        snakemake.output[0],
        workers=snakemake.threads,
    )
