# Stage evaluate (nfpi/stages/evaluate.py): NF-Acc and bits/dim on val and test. Config section
# `evaluate`; library nfpi.evaluation.


rule evaluate:
    input:
        ckpt=f"{R}/flows/{{setting}}.pt",
        record=f"{R}/gaussians/{{setting}}.json",
        meta=f"{R}/data/meta.json",
    output:
        f"{R}/metrics/{{setting}}.json",
    log:
        f"{R}/logs/evaluate_{{setting}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate_{{setting}}.tsv"
    threads: config["threads"]["other"]
    resources:
        **gpu_resources("infer"),
    params:
        launch=launch("evaluate"),
        cfg=lambda wc: slices(evaluate=config["evaluate"]),
        chash=lambda wc: lineage_hash(config, wc.setting, "evaluate"),
    shell:
        "{params.launch} --config {params.cfg:q} --config-hash {params.chash} --threads {threads}"
        " --name {wildcards.setting} --checkpoint {input.ckpt} --gaussians-json {input.record}"
        " --data-dir $(dirname {input.meta}) --out {output} > {log} 2>&1"
