rule references:
    input:
        metrics=per_model("results/{dataset}/metrics/{model}.arrow"),
        tables=reference_tables(),
    output:
        "results/{dataset}/references.arrow",
    log:
        "logs/{dataset}/references.log",
    benchmark:
        "benchmarks/{dataset}/references.tsv"
    priority: 1  # the chain the run ends with: compare → references → report
    conda:
        "../envs/clipbench.yaml"
    params:
        dataset_key=lambda wildcards: config["datasets"][wildcards.dataset].get(
            "reference"
        ),
        model_keys=canonical({m: s.reference for m, s in SETTINGS.models.items()}),
        top_k=config["retrieval"]["top_k"],
        tolerance=config["references"]["tolerance"],
    script:
        "../scripts/references.py"
