# Stage tsne (nfpi/stages/tsne.py): Fig. 1, t-SNE of the latents under Baseline 1 and NFPI Gaussians.
# Config section `figures`; library nfpi.report.figures.


def _fig1_gaussians(wc):
    lams = config["experiments"]["figure_lambdas"]
    from nfpi.experiments import lambda_setting_name

    g = {"baseline1": f"{R}/gaussians/baseline1.pt"}
    for lam in lams:
        g[f"NFPI lambda={lam:g}"] = f"{R}/gaussians/{lambda_setting_name(config, lam)}.pt"
    return g


rule tsne:
    input:
        latents=f"{R}/latents/pretrain/train.{config['extract']['format']}",
        meta=f"{R}/data/meta.json",
        gaussians=lambda wc: list(_fig1_gaussians(wc).values()),
    output:
        report(f"{R}/figures/fig1_tsne.png", category="Figures", labels={"figure": "Fig. 1 (t-SNE)"}),
    params:
        launch=launch("tsne"),
        cfg=lambda wc: slices(figures=config["figures"]),
        pairs=lambda wc: " ".join(shlex.quote(f"{k}={v}") for k, v in _fig1_gaussians(wc).items()),
    log:
        f"{R}/logs/tsne.log",
    benchmark:
        f"{R}/benchmarks/tsne.tsv",
    threads: 1
    resources:
        **cpu_resources(),
    shell:
        "{params.launch} --config {params.cfg:q} --threads {threads} --latents {input.latents}"
        " --gaussians {params.pairs} --data-dir $(dirname {input.meta}) --out {output} > {log} 2>&1"
