rule queries:
    input:
        images="results/{dataset}/embeddings/{model}/images.arrow",
        queries="results/{dataset}/embeddings/{model}/queries.arrow",
        dataset="results/{dataset}/dataset.arrow",
    output:
        "results/{dataset}/queries/{model}.arrow",
    log:
        "logs/{dataset}/queries/{model}.log",
    benchmark:
        "benchmarks/{dataset}/queries/{model}.tsv"
    conda:
        "../envs/clipbench.yaml"
    params:
        top_k=config["queries"]["top_k"],
    script:
        "../scripts/queries.py"
