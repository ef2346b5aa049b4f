rule histogram:
    input:
        "results/{dataset}/hits/{model}.arrow",
    output:
        histogram="results/{dataset}/histograms/{model}.arrow",
        kde="results/{dataset}/histograms/{model}.kde.arrow",
    log:
        "logs/{dataset}/histogram/{model}.log",
    benchmark:
        "benchmarks/{dataset}/histogram/{model}.tsv"
    conda:
        "../envs/clipbench.yaml"
    params:
        bins=config["histogram"]["bins"],
        range=config["histogram"]["range"],
    script:
        "../scripts/histogram.py"
