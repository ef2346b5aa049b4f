rule download:
    input:
        dataset_files,
    output:
        "results/{dataset}/dataset.arrow",
    params:
        cfg=lambda wildcards: config["datasets"][wildcards.dataset],
    log:
        "logs/{dataset}/download.log",
    benchmark:
        "benchmarks/{dataset}/download.tsv"
    conda:
        "../envs/clipbench.yaml"
    script:
        "../scripts/download.py"
