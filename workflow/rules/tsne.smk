# Stage tsne (nfpi/stages/tsne.py): Fig. 1, t-SNE of the latents under Baseline 1 and NFPI Gaussians.
# Config section `figures`; library nfpi.report.figures.


rule tsne:
    input:
        latents=f"{R}/latents/pretrain/train.{config['extract']['format']}",
        meta=f"{R}/data/meta.json",
        gaussians=lambda wc: list(_fig1_gaussians(wc).values()),
    output:
        report(f"{R}/figures/fig1_tsne.png", category="Figures", labels={"figure": "Fig. 1 (t-SNE)"}),
    log:
        f"{R}/logs/tsne.log",
    benchmark:
        f"{R}/benchmarks/tsne.tsv"
    threads: 1
    resources:
        **cpu_resources(),
    params:
        launch=launch("tsne"),
        cfg=lambda wc: slices(figures=config["figures"]),
        run=RUN,  # titles a user's npz / ImageFolder data by the run's name
        pairs=lambda wc: " ".join(shlex.quote(f"{k}={v}") for k, v in _fig1_gaussians(wc).items()),
    shell:
        "{params.launch} --config {params.cfg:q} --threads {threads} --latents {input.latents}"
        " --gaussians {params.pairs} --data-dir $(dirname {input.meta}) --run {params.run:q} --out {output} > {log} 2>&1"
