# Optional (robustness.enabled): retrieval under seeded image noise and caption typos.


rule robustness:
    input:
        dataset="results/{dataset}/dataset.arrow",
        captions="results/{dataset}/captions.arrow",
        images="results/{dataset}/embeddings/{model}/images.arrow",
        texts="results/{dataset}/embeddings/{model}/texts.arrow",
        local_files=model_files,
    output:
        "results/{dataset}/robustness/{model}.arrow",
    log:
        "logs/{dataset}/robustness/{model}.log",
    benchmark:
        "benchmarks/{dataset}/robustness/{model}.tsv"
    conda:
        "../envs/clipbench.yaml"
    threads: CPU_JOB_THREADS
    resources:
        gpu=MODEL_JOB_GPUS,
    params:
        spec=model_spec_param,
        settings=canonical(config["encode"]),
        perturbations=SETTINGS.robustness.perturbations_param(),
        top_k=config["retrieval"]["top_k"],
        recall_at=config["retrieval"]["recall_at"],
        ties=config["retrieval"]["ties"],
    script:
        "../scripts/robustness.py"
