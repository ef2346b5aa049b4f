rule hits:
    input:
        images="results/{dataset}/embeddings/{model}/images.arrow",
        texts="results/{dataset}/embeddings/{model}/texts.arrow",
    output:
        hits="results/{dataset}/hits/{model}.arrow",
        metrics="results/{dataset}/metrics/{model}.arrow",
    log:
        "logs/{dataset}/hits/{model}.log",
    benchmark:
        "benchmarks/{dataset}/hits/{model}.tsv"
    conda:
        "../envs/clipbench.yaml"
    params:
        top_k=config["retrieval"]["top_k"],
        recall_at=config["retrieval"]["recall_at"],
    script:
        "../scripts/hits.py"
