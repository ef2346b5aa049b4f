# Optional (export.clip_retrieval): each model's embeddings in clip-retrieval's layout. The
# CLIP_benchmark JSON comes from `hits` and the tidy metrics table from `summary`.


rule clip_retrieval:
    input:
        images="results/{dataset}/embeddings/{model}/images.arrow",
        texts="results/{dataset}/embeddings/{model}/texts.arrow",
        captions="results/{dataset}/captions.arrow",
    output:
        images="results/{dataset}/clip_retrieval/{model}/img_emb/img_emb_0.npy",
        texts="results/{dataset}/clip_retrieval/{model}/text_emb/text_emb_0.npy",
        metadata="results/{dataset}/clip_retrieval/{model}/metadata/metadata_0.parquet",
    log:
        "logs/{dataset}/clip_retrieval/{model}.log",
    benchmark:
        "benchmarks/{dataset}/clip_retrieval/{model}.tsv"
    conda:
        "../envs/clipbench.yaml"
    script:
        "../scripts/clip_retrieval.py"
