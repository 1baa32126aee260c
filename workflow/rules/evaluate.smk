# Stages: evaluate (NF-Acc, bits/dim on val and test) and sample (class-conditional images).


rule evaluate:
    input:
        ckpt=f"{R}/flows/{{setting}}.pt",
        record=f"{R}/gaussians/{{setting}}.json",
        meta=f"{R}/data/meta.json",
    output:
        f"{R}/metrics/{{setting}}.json",
    params:
        cfg=lambda wc: slices(evaluate=config["evaluate"]),
        chash=lambda wc: lineage_hash(config, wc.setting, "evaluate"),
    log:
        f"{R}/logs/evaluate_{{setting}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate_{{setting}}.tsv",
    threads: config["threads"]["other"]
    resources:
        **gpu_resources("infer"),
    shell:
        "{PY} -m nfpi.evaluate --config {params.cfg:q} --config-hash {params.chash} --threads {threads}"
        " --name {wildcards.setting} --checkpoint {input.ckpt} --gaussians-json {input.record}"
        " --data-dir $(dirname {input.meta}) --out {output} > {log} 2>&1"


rule sample:
    input:
        ckpt=f"{R}/flows/{{setting}}.pt",
        meta=f"{R}/data/meta.json",
    output:
        npz=f"{R}/samples/{{setting}}.npz",
        record=f"{R}/samples/{{setting}}.json",
        grid=report(f"{R}/figures/samples_{{setting}}.png", category="Samples", labels={"setting": "{setting}"}),
    params:
        cfg=lambda wc: slices(sample=config["sample"]),
        chash=lambda wc: lineage_hash(config, wc.setting, "sample"),
    log:
        f"{R}/logs/sample_{{setting}}.log",
    benchmark:
        f"{R}/benchmarks/sample_{{setting}}.tsv",
    threads: config["threads"]["other"]
    resources:
        **gpu_resources("infer"),
    shell:
        "{PY} -m nfpi.sample --config {params.cfg:q} --config-hash {params.chash} --threads {threads}"
        " --name {wildcards.setting} --checkpoint {input.ckpt} --data-dir $(dirname {input.meta})"
        " --out {output.npz} --grid {output.grid} > {log} 2>&1"
