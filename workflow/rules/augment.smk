# Stage augment (nfpi/stages/augment.py): the NF-augmented training images of Tables 5-6 and
# Fig. 2. Config section `augment`; library nfpi.augment.


rule augment:
    input:
        ckpt=f"{R}/flows/nfpi.pt",
        latents=f"{R}/latents/nfpi/train.{config['extract']['format']}",
        meta=f"{R}/data/meta.json",
    output:
        npz=f"{R}/augment/nf_train.npz",
        record=f"{R}/augment/nf_train.json",
        figure=report(
            f"{R}/figures/fig2_augment.png", category="Figures", labels={"figure": "Fig. 2 (NF augmentation)"}
        ),
    log:
        f"{R}/logs/augment.log",
    benchmark:
        f"{R}/benchmarks/augment.tsv"
    threads: config["threads"]["other"]
    resources:
        **gpu_resources("infer"),
    params:
        launch=launch("augment"),
        cfg=lambda wc: slices(augment=config["augment"]),
        chash=lambda wc: lineage_hash(config, "nfpi", "augment"),
    shell:
        "{params.launch} --config {params.cfg:q} --config-hash {params.chash} --threads {threads}"
        " --checkpoint {input.ckpt} --latents {input.latents} --data-dir $(dirname {input.meta})"
        " --out {output.npz} --figure {output.figure} > {log} 2>&1"
