rule similarity:
    input:
        images="results/{dataset}/embeddings/{model}/images.arrow",
        texts="results/{dataset}/embeddings/{model}/texts.arrow",
    output:
        "results/{dataset}/similarity/{model}.arrow",
    log:
        "logs/{dataset}/similarity/{model}.log",
    benchmark:
        "benchmarks/{dataset}/similarity/{model}.tsv"
    conda:
        "../envs/clipbench.yaml"
    params:
        max_rows=config["similarity"]["max_rows"],
        tile_scores=config["retrieval"]["tile_scores"],
    script:
        "../scripts/similarity.py"
