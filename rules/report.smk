FIGURES = ["similarity_histogram", "hits_at_k"]


rule report:
    input:
        dataset="results/{dataset}/dataset.arrow",
        metrics=per_model("results/{dataset}/metrics/{model}.arrow"),
        histograms=per_model("results/{dataset}/histograms/{model}.arrow"),
        kdes=per_model("results/{dataset}/histograms/{model}.kde.arrow"),
        queries=per_model("results/{dataset}/queries/{model}.arrow"),
        embeddings=per_model("results/{dataset}/embeddings/{model}/images.arrow"),
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
        thumbnail_px=config["report"]["thumbnail_px"],
    script:
        "../scripts/report.py"
