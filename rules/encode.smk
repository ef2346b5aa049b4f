rule encode:
    input:
        dataset="results/{dataset}/dataset.arrow",
        captions="results/{dataset}/captions.arrow",
        local_files=model_files,
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
    threads: config["encode"]["threads"]
    resources:
        gpu=1,
    params:
        spec=model_spec_param,
        settings=canonical(config["encode"]),
        queries=config["queries"]["texts"],
    script:
        "../scripts/encode.py"
