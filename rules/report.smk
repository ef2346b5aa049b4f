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
        html=report(
            "results/{dataset}/report.html",
            caption="../report/dataset_report.rst",
            category="Reports",
            labels={"dataset": "{dataset}"},
        ),
    log:
        "logs/{dataset}/report.log",
    benchmark:
        "benchmarks/{dataset}/report.tsv"
    priority: 1  # the chain the run ends with: compare → references → report
    conda:
        "../envs/clipbench.yaml"
    params:
        models=MODELS,
        top_k=config["retrieval"]["top_k"],
        recall_at=config["retrieval"]["recall_at"],
        thumbnail_px=config["report"]["thumbnail_px"],
    script:
        "../scripts/report.py"


# The same charts as PNG/SVG files, rendered beside `compare` rather than after it.
rule figures:
    input:
        metrics=per_model("results/{dataset}/metrics/{model}.arrow"),
        histograms=per_model("results/{dataset}/histograms/{model}.arrow"),
        kdes=per_model("results/{dataset}/histograms/{model}.kde.arrow"),
        ranks=per_model("results/{dataset}/histograms/{model}.ranks.arrow"),
    output:
        figure_outputs(
            "results/{dataset}/figures/{figure}",
            FIGURES,
            "Figures",
            dataset="{dataset}",
        ),
    log:
        "logs/{dataset}/figures.log",
    benchmark:
        "benchmarks/{dataset}/figures.tsv"
    conda:
        "../envs/clipbench.yaml"
    params:
        models=MODELS,
        top_k=config["retrieval"]["top_k"],
        recall_at=config["retrieval"]["recall_at"],
    script:
        "../scripts/figures.py"


rule explorer:
    input:
        dataset="results/{dataset}/dataset.arrow",
        captions="results/{dataset}/captions.arrow",
        t2i=per_model("results/{dataset}/hits/{model}.arrow"),
        i2t=per_model("results/{dataset}/hits/{model}.i2t.arrow"),
    output:
        report(
            "results/{dataset}/explorer.html",
            caption="../report/explorer.rst",
            category="Reports",
            labels={"dataset": "{dataset}", "page": "explorer"},
        ),
    log:
        "logs/{dataset}/explorer.log",
    benchmark:
        "benchmarks/{dataset}/explorer.tsv"
    conda:
        "../envs/clipbench.yaml"
    threads: CPU_JOB_THREADS  # decoding thumbnails
    params:
        models=MODELS,
        thumbnail_px=config["explorer"]["thumbnail_px"],
        max_thumbnails=config["explorer"]["max_thumbnails"],
    script:
        "../scripts/explorer.py"


rule robustness_figures:
    input:
        robustness_files,
    output:
        figure_outputs(
            "results/{dataset}/figures/{figure}",
            ["robustness"],
            "Figures",
            dataset="{dataset}",
        ),
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
        html=report(
            "results/report.html",
            caption="../report/summary.rst",
            category="Reports",
            labels={"dataset": "all datasets"},
        ),
        references="results/references.arrow",
        figures=figure_outputs(
            "results/figures/{figure}", ["datasets_overview"], "Figures", dataset="all"
        ),
        tidy_csv=report(
            "results/metrics.csv",
            caption="../report/metrics.rst",
            category="Metrics",
            labels={"table": "every dataset × model × direction × metric"},
        ),
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
