# Stages: pretrain (N(0, I) prior), extract (latents of a trained flow), finetune (on solved Gaussians).


rule pretrain:
    # The critical path: start it before the jobs that only need the data (Swin / EVA02 baselines).
    priority: 50
    input:
        meta=f"{R}/data/meta.json",
    output:
        ckpt=f"{R}/flows/pretrain.pt",
        metrics=f"{R}/flows/pretrain.json",
        curve=f"{R}/flows/pretrain.jsonl",
    params:
        cfg=lambda wc: slices(flow=config["flow"], train=config["pretrain"]),
        chash=lambda wc: lineage_hash(config),
        launch=lambda wc, resources: launcher(resources.gpu),
    log:
        f"{R}/logs/pretrain.log",
    benchmark:
        f"{R}/benchmarks/pretrain.tsv",
    threads: config["threads"]["train"]
    resources:
        **gpu_resources("train"),
    shell:
        "{params.launch} -m nfpi.pretrain --config {params.cfg:q} --config-hash {params.chash}"
        " --threads {threads} --data-dir $(dirname {input.meta}) --out {output.ckpt} --metrics {output.metrics}"
        " --log-jsonl {output.curve} > {log} 2>&1"


rule extract:
    priority: 40
    input:
        ckpt=f"{R}/flows/{{flow}}.pt",
        meta=f"{R}/data/meta.json",
    output:
        expand(f"{R}/latents/{{{{flow}}}}/{{split}}.{config['extract']['format']}", split=["train", "val", "test"]),
    params:
        cfg=lambda wc: slices(extract=config["extract"]),
        chash=lambda wc: lineage_hash(config, None if wc.flow == "pretrain" else wc.flow, "extract"),
        out=lambda wc: f"{R}/latents/{wc.flow}",
    log:
        f"{R}/logs/extract_{{flow}}.log",
    benchmark:
        f"{R}/benchmarks/extract_{{flow}}.tsv",
    threads: config["threads"]["other"]
    resources:
        **gpu_resources("infer"),
    shell:
        "{PY} -m nfpi.extract --config {params.cfg:q} --config-hash {params.chash} --threads {threads}"
        " --checkpoint {input.ckpt} --data-dir $(dirname {input.meta}) --out-dir {params.out} > {log} 2>&1"


rule finetune:
    priority: 20
    input:
        init=f"{R}/flows/pretrain.pt",
        gaussians=f"{R}/gaussians/{{setting}}.pt",
        meta=f"{R}/data/meta.json",
    output:
        ckpt=f"{R}/flows/{{setting}}.pt",
        metrics=f"{R}/flows/{{setting}}.json",
        curve=f"{R}/flows/{{setting}}.jsonl",
    params:
        # The setting's solver spec too: rounds > 1 re-solve the Gaussians on the current latents.
        cfg=lambda wc: slices(train=config["finetune"], setting=SETTINGS[wc.setting].spec),
        chash=lambda wc: lineage_hash(config, wc.setting),
        launch=lambda wc, resources: launcher(resources.gpu),
    log:
        f"{R}/logs/finetune_{{setting}}.log",
    benchmark:
        f"{R}/benchmarks/finetune_{{setting}}.tsv",
    threads: config["threads"]["other"]
    resources:
        **gpu_resources("train"),
    shell:
        "{params.launch} -m nfpi.finetune --config {params.cfg:q} --config-hash {params.chash}"
        " --threads {threads} --data-dir $(dirname {input.meta}) --init {input.init} --gaussians {input.gaussians}"
        " --out {output.ckpt} --metrics {output.metrics} --log-jsonl {output.curve} > {log} 2>&1"
