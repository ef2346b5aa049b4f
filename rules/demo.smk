# Inputs of the offline demo (tests/demo/config.yaml): a generated dataset in the hub's
# parquet layout and tiny random checkpoints, loaded later exactly like real weights.


# Tiny inputs, made in seconds: on a cluster, on the submit host rather than as queued jobs.
localrules:
    demo_dataset,
    demo_open_clip,
    demo_torchvision,
    demo_bert,
    demo_transformers,


rule demo_dataset:
    output:
        "results/demo/inputs/{variant}.parquet",
    log:
        "logs/demo/inputs/{variant}.log",
    benchmark:
        "benchmarks/demo/inputs/{variant}.tsv"
    wildcard_constraints:
        variant="demo|demo-multi",
    conda:
        "../envs/clipbench.yaml"
    params:
        rows=lambda wildcards: config["demo"][
            "multi_rows" if wildcards.variant == "demo-multi" else "rows"
        ],
        multi=lambda wildcards: wildcards.variant == "demo-multi",
        seed=config["demo"]["seed"],
    script:
        "../scripts/demo_dataset.py"


rule demo_open_clip:
    input:
        "tests/demo/open_clip/{arch}.json",
    output:
        "results/demo/inputs/open_clip/{arch}.safetensors",
    log:
        "logs/demo/inputs/open_clip/{arch}.log",
    benchmark:
        "benchmarks/demo/inputs/open_clip/{arch}.tsv"
    conda:
        "../envs/clipbench.yaml"
    params:
        seed=config["demo"]["seed"],
    script:
        "../scripts/demo_checkpoint.py"


rule demo_torchvision:
    output:
        "results/demo/inputs/torchvision/{arch}.safetensors",
    log:
        "logs/demo/inputs/torchvision/{arch}.log",
    benchmark:
        "benchmarks/demo/inputs/torchvision/{arch}.tsv"
    conda:
        "../envs/clipbench.yaml"
    params:
        seed=config["demo"]["seed"],
    script:
        "../scripts/demo_checkpoint.py"


rule demo_bert:
    output:
        directory("results/demo/inputs/bert"),
    log:
        "logs/demo/inputs/bert.log",
    benchmark:
        "benchmarks/demo/inputs/bert.tsv"
    conda:
        "../envs/clipbench.yaml"
    params:
        seed=config["demo"]["seed"],
    script:
        "../scripts/demo_checkpoint.py"


rule demo_transformers:
    output:
        directory("results/demo/inputs/transformers/{model_type}"),
    log:
        "logs/demo/inputs/transformers/{model_type}.log",
    benchmark:
        "benchmarks/demo/inputs/transformers/{model_type}.tsv"
    wildcard_constraints:
        model_type="clip|siglip",
    conda:
        "../envs/clipbench.yaml"
    params:
        seed=config["demo"]["seed"],
    script:
        "../scripts/demo_checkpoint.py"
