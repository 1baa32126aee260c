# Stage sample (nfpi/stages/sample.py): class-conditional images of a fine-tuned flow. Config section
# `sample`; library nfpi.evaluation, nfpi.report.figures.


rule sample:
    input:
        ckpt=f"{R}/flows/{{setting}}.pt",
        meta=f"{R}/data/meta.json",
    output:
        npz=f"{R}/samples/{{setting}}.npz",
        record=f"{R}/samples/{{setting}}.json",
        grid=report(f"{R}/figures/samples_{{setting}}.png", category="Samples", labels={"setting": "{setting}"}),
    log:
        f"{R}/logs/sample_{{setting}}.log",
    benchmark:
        f"{R}/benchmarks/sample_{{setting}}.tsv"
    threads: config["threads"]["other"]
    resources:
        **gpu_resources("infer"),
    params:
        launch=launch("sample"),
        cfg=lambda wc: slices(sample=config["sample"]),
        chash=lambda wc: lineage_hash(config, wc.setting, "sample"),
    shell:
        "{params.launch} --config {params.cfg:q} --config-hash {params.chash} --threads {threads}"
        " --name {wildcards.setting} --checkpoint {input.ckpt} --data-dir $(dirname {input.meta})"
        " --out {output.npz} --grid {output.grid} > {log} 2>&1"
