# Stage classify (nfpi/stages/classify.py), one rule per classifier config section: cnn (CNN-Acc on
# generated images), swin and eva02 (real images, with and without NF augmentation and standard
# augmentation; Tables 5-6). Library nfpi.classifiers.


rule cnn:
    input:
        npz=f"{R}/samples/{{setting}}.npz",
        meta=f"{R}/data/meta.json",
    output:
        f"{R}/cnn/{{setting}}.json",
    log:
        f"{R}/logs/cnn_{{setting}}.log",
    benchmark:
        f"{R}/benchmarks/cnn_{{setting}}.tsv"
    threads: config["threads"]["other"]
    resources:
        **gpu_resources("infer"),
    params:
        launch=launch("classify"),
        cfg=lambda wc: slices(classifier=config["cnn"]),
        chash=lambda wc: lineage_hash(config, wc.setting, "sample", "cnn"),
    shell:
        "{params.launch} --section cnn --config {params.cfg:q} --config-hash {params.chash} --threads {threads}"
        " --name cnn_{wildcards.setting} --train-npz {input.npz} --data-dir $(dirname {input.meta})"
        " --out {output} > {log} 2>&1"


for _model in ("swin", "eva02"):

    rule:
        name:
            f"{_model}"
        input:
            unpack(_aug_inputs),
        output:
            f"{R}/{_model}/{{nfa}}_{{sa}}.json",
        log:
            f"{R}/logs/{_model}_{{nfa}}_{{sa}}.log",
        benchmark:
            f"{R}/benchmarks/{_model}_{{nfa}}_{{sa}}.tsv"
        threads: config["threads"]["other"]
        # resources.gpus > 1: torchrun with one process per GPU (DDP in nfpi.classifiers, as the flow rules).
        resources:
            **gpu_resources("train"),
        params:
            cfg=lambda wc, m=_model: slices(classifier={**config[m], "standard_aug": wc.sa == "sa"}),
            chash=lambda wc, m=_model: lineage_hash(config, "nfpi", "augment", m),
            extra=lambda wc, input: f"--extra-npz {input.extra}" if wc.nfa == "nf" else "",
            model=_model,
            launch=lambda wc, resources: launch("classify", resources.gpu),
        shell:
            "{params.launch} --section {params.model} --config {params.cfg:q}"
            " --config-hash {params.chash} --threads {threads}"
            " --name {params.model}_{wildcards.nfa}_{wildcards.sa} --real-train {params.extra}"
            " --data-dir $(dirname {input.meta}) --out {output} > {log} 2>&1"
