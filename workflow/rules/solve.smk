# Stage solve (nfpi/stages/solve.py). Class Gaussians for each setting (Baseline 1, Baseline 2 = GD, NFPI, lambda sweep,
# ablations) from one streaming pass over the pretrained flow's training latents. With fpi.lam: auto,
# the NFPI settings run the lambda path (nfpi.lampath) and choose lambda on the validation latents; the
# GD settings then use the lambda the `nfpi` setting chose. Rule lambda_path (lambda_path.smk):
# its table and figure.


rule solve:
    input:
        unpack(_solve_inputs),
    output:
        gaussians=f"{R}/gaussians/{{setting}}.pt",
        record=f"{R}/gaussians/{{setting}}.json",
    log:
        f"{R}/logs/solve_{{setting}}.log",
    benchmark:
        f"{R}/benchmarks/solve_{{setting}}.tsv"
    priority: 30
    threads: 1
    resources:
        **cpu_resources(),
    params:
        launch=launch("solve"),
        cfg=lambda wc: slices(setting=SETTINGS[wc.setting].spec),
        chash=lambda wc: lineage_hash(config, wc.setting),
        extra=_solve_extra,
    shell:
        "{params.launch} --config {params.cfg:q} --config-hash {params.chash} --threads {threads}"
        " --name {wildcards.setting} --latents {input.latents} --data-dir $(dirname {input.meta}) {params.extra}"
        " --out {output.gaussians} --out-json {output.record} > {log} 2>&1"
