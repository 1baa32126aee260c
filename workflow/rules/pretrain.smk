# Stage pretrain (nfpi/stages/pretrain.py): the flow trained on an N(0, I) prior. Config sections `flow`,
# `pretrain`; library nfpi.training, nfpi.flows.


rule pretrain:
    input:
        meta=f"{R}/data/meta.json",
    output:
        ckpt=f"{R}/flows/pretrain.pt",
        metrics=f"{R}/flows/pretrain.json",
        curve=f"{R}/flows/pretrain.jsonl",
    log:
        f"{R}/logs/pretrain.log",
    benchmark:
        f"{R}/benchmarks/pretrain.tsv"
    # The critical path: start it before the jobs that only need the data (Swin / EVA02 baselines).
    priority: 50
    threads: config["threads"]["train"]
    resources:
        **gpu_resources("train"),
    params:
        cfg=lambda wc: slices(flow=config["flow"], train=config["pretrain"]),
        chash=lambda wc: lineage_hash(config),
        launch=lambda wc, resources: launch("pretrain", resources.gpu),
    shell:
        "{params.launch} --config {params.cfg:q} --config-hash {params.chash}"
        " --threads {threads} --data-dir $(dirname {input.meta}) --out {output.ckpt} --metrics {output.metrics}"
        " --log-jsonl {output.curve} > {log} 2>&1"
