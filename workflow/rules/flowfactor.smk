# Stage flowfactor (nfpi/stages/flowfactor.py; flow-factorized latent transformations, Song et al. 2023): one learned potential per
# pixel-space transformation (rotation, scale, intensity) in the latent space of a trained flow
# (flowfactor.flow: "nfpi" -> flows/nfpi.pt, "pretrain" -> flows/pretrain.pt); equivariance, composition,
# extrapolation, sequence likelihood and a classifier augmentation comparison (docs/flowfactor.md).
# By default (flowfactor.adapt_steps > 0) the stage first fine-tunes a copy of that flow on the training images
# plus randomly transformed copies (nfpi.training.train_flow) and works in the adapted flow's latent space; the
# adapted checkpoint is flowfactor/adapted_flow.pt (not a declared output: its resume state
# flowfactor/adapted_flow.pt.resume/ survives a failed job, so a rerun does not repeat the adaptation).
# The table goes through nfpi.report.tables (.md, .csv, .tex, .html, .sources.json) like the paper's tables.
# Opt out with experiments.flowfactor: false.


rule flowfactor:
    input:
        flow=f"{R}/flows/{_flowfactor_flow()}.pt",
        meta=f"{R}/data/meta.json",
    output:
        metrics=f"{R}/flowfactor/metrics.json",
        config=f"{R}/flowfactor/config.json",
        potentials=f"{R}/flowfactor/potentials.pt",
        history=f"{R}/flowfactor/history.json",
        table_md=f"{R}/tables/flowfactor.md",
        table_csv=f"{R}/tables/flowfactor.csv",
        table_html=report(f"{R}/tables/flowfactor.html", category="Tables", labels={"table": "flowfactor"}),
        figure=report(
            f"{R}/figures/flowfactor_trajectories.png",
            category="Figures",
            labels={"figure": "flowfactor trajectories"},
        ),
    log:
        f"{R}/logs/flowfactor.log",
    benchmark:
        f"{R}/benchmarks/flowfactor.tsv"
    threads: config["threads"]["other"]
    resources:
        **cpu_resources("cpu"),
    params:
        launch=launch("flowfactor"),
        cfg=lambda wc: slices(flowfactor=config["flowfactor"]),
        chash=lambda wc: (
            lineage_hash(config, "nfpi", "flowfactor")
            if _flowfactor_flow() == "nfpi"
            else lineage_hash(config, None, "flowfactor")
        ),
        out=lambda wc, output: os.path.dirname(output.metrics),
        tables=lambda wc, output: os.path.dirname(output.table_md),
    shell:
        "{params.launch} --config {params.cfg:q} --config-hash {params.chash} --threads {threads}"
        " --flow {input.flow} --data-dir $(dirname {input.meta}) --out-dir {params.out}"
        " --tables-dir {params.tables} --figure {output.figure} > {log} 2>&1"
