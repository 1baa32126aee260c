# Stage: transport (latent-space optimal transport prior, Liu et al. 2018) beside NFPI's Gaussians on the
# NFPI flow's latents: fits the per-class OT maps, generates class-conditional images through the flow's
# inverse and writes the comparison table (docs/latent_ot.md).  Opt out with experiments.latent_ot: false.


rule latent_ot:
    input:
        flow=f"{R}/flows/nfpi.pt",
        gaussians=f"{R}/gaussians/nfpi.pt",
        train=f"{R}/latents/nfpi/train.{config['extract']['format']}",
        test=f"{R}/latents/nfpi/test.{config['extract']['format']}",
        meta=f"{R}/data/meta.json",
    output:
        metrics=f"{R}/latent_ot/metrics.json",
        config=f"{R}/latent_ot/config.json",
        prior=f"{R}/latent_ot/prior.pt",
        samples=f"{R}/latent_ot/samples.npz",
        table_md=f"{R}/tables/latent_ot.md",
        table_csv=f"{R}/tables/latent_ot.csv",
        table_html=report(f"{R}/tables/latent_ot.html", category="Tables", labels={"table": "latent OT"}),
        grid=report(f"{R}/figures/samples_latent_ot.png", category="Figures", labels={"figure": "latent OT samples"}),
    log:
        f"{R}/logs/latent_ot.log",
    benchmark:
        f"{R}/benchmarks/latent_ot.tsv"
    threads: config["threads"]["other"]
    resources:
        **gpu_resources("infer"),
    params:
        launch=launch("latent_ot"),
        cfg=lambda wc: slices(latent_ot=config["latent_ot"]),
        chash=lambda wc: lineage_hash(config, "nfpi", "latent_ot"),
        out=lambda wc, output: os.path.dirname(output.metrics),
        tables=lambda wc, output: os.path.dirname(output.table_md),
    shell:
        "{params.launch} --config {params.cfg:q} --config-hash {params.chash} --threads {threads}"
        " --flow {input.flow} --gaussians {input.gaussians} --latents-train {input.train} --latents-test {input.test}"
        " --data-dir $(dirname {input.meta}) --out-dir {params.out} --tables-dir {params.tables}"
        " --grid {output.grid} > {log} 2>&1"
