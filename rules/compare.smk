rule compare:
    input:
        t2i=per_model("results/{dataset}/hits/{model}.arrow"),
        i2t=per_model("results/{dataset}/hits/{model}.i2t.arrow"),
    output:
        "results/{dataset}/comparisons.arrow",
    log:
        "logs/{dataset}/compare.log",
    benchmark:
        "benchmarks/{dataset}/compare.tsv"
    priority: 1  # the chain the run ends with: compare → references → report
    conda:
        "../envs/clipbench.yaml"
    params:
        models=MODELS,
        top_k=config["retrieval"]["top_k"],
        recall_at=config["retrieval"]["recall_at"],
        ties=config["retrieval"]["ties"],
        bootstrap=canonical(config["retrieval"]["bootstrap"]),
    script:
        "../scripts/compare.py"
