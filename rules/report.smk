FIGURES = [
    "hits_at_k",
    "recall",
    "similarity_histogram",
    "similarity_separation",
    "rank_cdf",
]


rule report:
    input:
        dataset="results/{dataset}/dataset.arrow",
        metrics=per_model("results/{dataset}/metrics/{model}.arrow"),
        comparisons="results/{dataset}/comparisons.arrow",
        references="results/{dataset}/references.arrow",
        histograms=per_model("results/{dataset}/histograms/{model}.arrow"),
        kdes=per_model("results/{dataset}/histograms/{model}.kde.arrow"),
        ranks=per_model("results/{dataset}/histograms/{model}.ranks.arrow"),
        queries=per_model("results/{dataset}/queries/{model}.arrow"),
        embeddings=per_model("results/{dataset}/embeddings/{model}/images.arrow"),
        robustness=robustness_files,
    output:
        html="results/{dataset}/report.html",
        figures=expand(
            "results/{{dataset}}/figures/{figure}.{ext}",
            figure=FIGURES,
            ext=["png", "svg"],
        ),
    log:
        "logs/{dataset}/report.log",
    benchmark:
        "benchmarks/{dataset}/report.tsv"
    conda:
        "../envs/clipbench.yaml"
    params:
        models=MODELS,
        top_k=config["retrieval"]["top_k"],
        recall_at=config["retrieval"]["recall_at"],
        thumbnail_px=config["report"]["thumbnail_px"],
    script:
        "../scripts/report.py"


rule robustness_figures:
    input:
        robustness_files,
    output:
        expand("results/{{dataset}}/figures/robustness.{ext}", ext=["png", "svg"]),
    log:
        "logs/{dataset}/robustness_figures.log",
    benchmark:
        "benchmarks/{dataset}/robustness_figures.tsv"
    conda:
        "../envs/clipbench.yaml"
    params:
        models=MODELS,
        top_k=config["retrieval"]["top_k"],
        recall_at=config["retrieval"]["recall_at"],
    script:
        "../scripts/robustness_figures.py"


rule summary:
    input:
        metrics=[
            expand("results/{dataset}/metrics/{model}.arrow", dataset=d, model=MODELS)
            for d in DATASETS
        ],
        references=expand("results/{dataset}/references.arrow", dataset=DATASETS),
    output:
        html="results/report.html",
        references="results/references.arrow",
        figures=expand("results/figures/datasets_overview.{ext}", ext=["png", "svg"]),
        tidy_csv="results/metrics.csv",
        tidy_parquet="results/metrics.parquet",
    log:
        "logs/summary.log",
    benchmark:
        "benchmarks/summary.tsv"
    conda:
        "../envs/clipbench.yaml"
    params:
        datasets=DATASETS,
        models=MODELS,
        top_k=config["retrieval"]["top_k"],
        recall_at=config["retrieval"]["recall_at"],
    script:
        "../scripts/summary.py"
