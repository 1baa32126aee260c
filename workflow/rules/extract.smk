# Stage extract (nfpi/stages/extract.py): the latents z = f(x) of a trained flow, per split. Config
# section `extract`; library nfpi.evaluation, nfpi.latents.


rule extract:
    input:
        ckpt=f"{R}/flows/{{flow}}.pt",
        meta=f"{R}/data/meta.json",
    output:
        expand(f"{R}/latents/{{{{flow}}}}/{{split}}.{config['extract']['format']}", split=["train", "val", "test"]),
    log:
        f"{R}/logs/extract_{{flow}}.log",
    benchmark:
        f"{R}/benchmarks/extract_{{flow}}.tsv"
    priority: 40
    threads: config["threads"]["other"]
    resources:
        **gpu_resources("infer"),
    params:
        launch=launch("extract"),
        cfg=lambda wc: slices(extract=config["extract"]),
        chash=lambda wc: lineage_hash(config, None if wc.flow == "pretrain" else wc.flow, "extract"),
        out=lambda wc: f"{R}/latents/{wc.flow}",
    shell:
        "{params.launch} --config {params.cfg:q} --config-hash {params.chash} --threads {threads}"
        " --checkpoint {input.ckpt} --data-dir $(dirname {input.meta}) --out-dir {params.out} > {log} 2>&1"
