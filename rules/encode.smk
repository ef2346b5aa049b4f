# Decoded once per dataset and view, for every model that resizes/crops alike. Built from the
# geometry-relevant config alone (no weights), so a model's other settings never rerun it.
rule pixels:
    input:
        dataset="results/{dataset}/dataset.arrow",
        model_config=view_config_file,
    output:
        "results/{dataset}/pixels/{view}.arrow",
    log:
        "logs/{dataset}/pixels/{view}.log",
    benchmark:
        "benchmarks/{dataset}/pixels/{view}.tsv"
    conda:
        "../envs/clipbench.yaml"
    threads: CPU_JOB_THREADS
    params:
        geometry=view_geometry_param,
    script:
        "../scripts/pixels.py"


rule encode:
    input:
        dataset="results/{dataset}/dataset.arrow",
        captions="results/{dataset}/captions.arrow",
        local_files=model_files,
        pixels=model_pixels,
    output:
        images="results/{dataset}/embeddings/{model}/images.arrow",
        texts="results/{dataset}/embeddings/{model}/texts.arrow",
        queries="results/{dataset}/embeddings/{model}/queries.arrow",
    log:
        "logs/{dataset}/encode/{model}.log",
    benchmark:
        "benchmarks/{dataset}/encode/{model}.tsv"
    conda:
        "../envs/clipbench.yaml"
    threads: CPU_JOB_THREADS
    resources:
        gpu=MODEL_JOB_GPUS,
    params:
        spec=model_spec_param,
        settings=canonical(config["encode"]),
        queries=config["queries"]["texts"],
    script:
        "../scripts/encode.py"
