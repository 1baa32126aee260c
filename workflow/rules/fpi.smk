# Stage: solve. Class Gaussians for each setting (Baseline 1, Baseline 2 = GD, NFPI, lambda sweep,
# ablations) from one streaming pass over the pretrained flow's training latents.


rule solve:
    priority: 30
    input:
        latents=f"{R}/latents/pretrain/train.{config['extract']['format']}",
        meta=f"{R}/data/meta.json",
    output:
        gaussians=f"{R}/gaussians/{{setting}}.pt",
        record=f"{R}/gaussians/{{setting}}.json",
    params:
        cfg=lambda wc: slices(setting=SETTINGS[wc.setting].spec),
        chash=lambda wc: lineage_hash(config, wc.setting),
    log:
        f"{R}/logs/solve_{{setting}}.log",
    benchmark:
        f"{R}/benchmarks/solve_{{setting}}.tsv",
    threads: 1
    resources:
        **cpu_resources(),
    shell:
        "{PY} -m nfpi.solve --config {params.cfg:q} --config-hash {params.chash} --threads {threads}"
        " --name {wildcards.setting} --latents {input.latents} --data-dir $(dirname {input.meta})"
        " --out {output.gaussians} --out-json {output.record} > {log} 2>&1"
