# Stage finetune (nfpi/stages/finetune.py): the pretrained flow trained on a setting's solved class
# Gaussians (Eq. 4 by block coordinate descent). Config section `finetune` and the setting's solver spec;
# library nfpi.training, nfpi.fpi.


rule finetune:
    input:
        init=f"{R}/flows/pretrain.pt",
        gaussians=f"{R}/gaussians/{{setting}}.pt",
        meta=f"{R}/data/meta.json",
    output:
        ckpt=f"{R}/flows/{{setting}}.pt",
        metrics=f"{R}/flows/{{setting}}.json",
        curve=f"{R}/flows/{{setting}}.jsonl",
    log:
        f"{R}/logs/finetune_{{setting}}.log",
    benchmark:
        f"{R}/benchmarks/finetune_{{setting}}.tsv"
    priority: 20
    threads: config["threads"]["other"]
    resources:
        **gpu_resources("train"),
    params:
        # The setting's solver spec too: rounds > 1 re-solve the Gaussians on the current latents.
        cfg=lambda wc: slices(train=config["finetune"], setting=SETTINGS[wc.setting].spec),
        chash=lambda wc: lineage_hash(config, wc.setting),
        launch=lambda wc, resources: launch("finetune", resources.gpu),
    shell:
        "{params.launch} --config {params.cfg:q} --config-hash {params.chash}"
        " --threads {threads} --data-dir $(dirname {input.meta}) --init {input.init} --gaussians {input.gaussians}"
        " --out {output.ckpt} --metrics {output.metrics} --log-jsonl {output.curve} > {log} 2>&1"
