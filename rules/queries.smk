rule queries:
    input:
        images="results/{dataset}/embeddings/{model}/images.arrow",
        queries="results/{dataset}/embeddings/{model}/queries.arrow",
        dataset="results/{dataset}/dataset.arrow",
    output:
        "results/{dataset}/queries/{model}.arrow",
    params:
        top_k=config["queries"]["top_k"],
    log:
        "logs/{dataset}/queries/{model}.log",
    benchmark:
        "benchmarks/{dataset}/queries/{model}.tsv"
    conda:
        "../envs/clipbench.yaml"
    script:
        "../scripts/queries.py"
