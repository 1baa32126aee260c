# Stages: tabulate (Tables 1-6 and the results summary), tsne (Fig. 1), curves (training curves).
# Outputs marked report() make up `snakemake --report` (categories Summary, Tables, Figures, Samples).


def _table_inputs(wc):
    # a setting that shares another's fine-tuning (nfpi.share) reads the representative's files
    return table_files() + ([f"{R}/gaussians/shared.json"] if SHAREABLE else [])


def _table_names():
    """The tables tabulate writes (as nfpi.tabulate.main decides): 1-3 per experiments, 4 always, 5-6 per model."""
    names = [t for t in ("table1", "table2", "table3") if t in TABLES] + ["table4"]
    return names + [t for m, t in (("swin", "table5"), ("eva02", "table6")) if config["experiments"].get(m, True)]


rule tabulate:
    input:
        _table_inputs,
    output:
        f"{R}/tables/README.md",
        f"{R}/summary.json",
        # the report (snakemake --report): a results summary page and one page per table
        report(f"{R}/summary.html", category="Summary", labels={"page": "Results summary"}),
        [report(f"{R}/tables/{t}.html", category="Tables", labels={"table": f"Table {t[5:]}"}) for t in _table_names()],
    params:
        # only what the tables depend on: editing figures.* or latent_ot.* does not rebuild them
        cfg=lambda wc: json.dumps(tables_slice(config), sort_keys=True),
        shared=f"--shared {R}/gaussians/shared.json" if SHAREABLE else "",
        out=f"{R}/tables",
    log:
        f"{R}/logs/tabulate.log",
    benchmark:
        f"{R}/benchmarks/tabulate.tsv",
    threads: 1
    resources:
        **cpu_resources(),
    shell:
        "{PY} -m nfpi.tabulate --config {params.cfg:q} --results {R} --out-dir {params.out} {params.shared}"
        " > {log} 2>&1"


rule resolved_config:
    # The whole resolved config beside the results (nfpi.spread reads it); cheap, reruns on any edit.
    output:
        f"{R}/config.resolved.yaml",
    params:
        cfg=lambda wc: json.dumps(config, sort_keys=True),
    log:
        f"{R}/logs/resolved_config.log",
    benchmark:
        f"{R}/benchmarks/resolved_config.tsv",
    threads: 1
    resources:
        **cpu_resources(),
    shell:
        "{PY} -m nfpi.resolved_config --config {params.cfg:q} --out {output} > {log} 2>&1"


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
        "{PY} -m nfpi.tsne --config {params.cfg:q} --threads {threads} --latents {input.latents}"
        " --gaussians {params.pairs} --data-dir $(dirname {input.meta}) --out {output} > {log} 2>&1"


rule curves:
    input:
        pretrain=f"{R}/flows/pretrain.jsonl",
        # one curve per fine-tuned flow: a setting that shares another's fine-tuning has no curve of its own
        finetune=lambda wc: list(dict.fromkeys(f"{R}/flows/{shared(s)}.jsonl" for s in TABLES.get("table1", ["nfpi"]))),
    output:
        report(f"{R}/figures/training_curves.png", category="Figures", labels={"figure": "training curves"}),
    log:
        f"{R}/logs/curves.log",
    benchmark:
        f"{R}/benchmarks/curves.tsv",
    threads: 1
    resources:
        **cpu_resources(),
    shell:
        "{PY} -m nfpi.curves --out {output} {input.pretrain} {input.finetune} > {log} 2>&1"
