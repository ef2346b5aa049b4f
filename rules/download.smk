rule download:
    input:
        dataset_files,
    output:
        images="results/{dataset}/dataset.arrow",
        captions="results/{dataset}/captions.arrow",
    log:
        "logs/{dataset}/download.log",
    benchmark:
        "benchmarks/{dataset}/download.tsv"
    conda:
        "../envs/clipbench.yaml"
    params:
        cfg=dataset_param,
    script:
        "../scripts/download.py"
