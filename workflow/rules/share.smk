# Stage share (nfpi/stages/share.py), a checkpoint: settings whose solved Gaussians are equal within
# experiments.share_tol (and whose objective is the same) share one fine-tuning; the rules downstream ask
# `shared(setting)` (common.smk) which flow stands for a setting. Library nfpi.share.


checkpoint share:
    input:
        [f"{R}/gaussians/{s}.pt" for s in FINETUNED],
    output:
        f"{R}/gaussians/shared.json",
    log:
        f"{R}/logs/share.log",
    benchmark:
        f"{R}/benchmarks/share.tsv"
    # a one-second job that unlocks the fine-tunings of the settings that do not share: run it first
    priority: 30
    threads: 1
    resources:
        **cpu_resources(),
    params:
        launch=launch("share"),
        cfg=lambda wc: slices(share=share_slice(config, FINETUNED, SHARE_TOL)),
        chash=lambda wc: config_hash({s: lineage_hash(config, s) for s in FINETUNED} | {"tol": SHARE_TOL}),
    shell:
        "{params.launch} --config {params.cfg:q} --config-hash {params.chash} --threads {threads}"
        " --gaussians {input} --out {output} > {log} 2>&1"
