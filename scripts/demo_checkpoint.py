# One adapter for the demo's random-checkpoint rules.
from clipbench import demo
from clipbench.logs import job_log

with job_log(snakemake.log[0]):
    seed, out = snakemake.params.seed, snakemake.output[0]
    if snakemake.rule == "demo_open_clip":
        demo.write_open_clip_checkpoint(snakemake.input[0], out, seed)
    elif snakemake.rule == "demo_torchvision":
        demo.write_torchvision_checkpoint(snakemake.wildcards.arch, out, seed)
    elif snakemake.rule == "demo_transformers":
        demo.write_hf_dual_encoder(out, snakemake.wildcards.model_type, seed)
    else:
        demo.write_bert(out, seed)
