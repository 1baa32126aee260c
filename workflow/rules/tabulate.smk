# Stage tabulate (nfpi/stages/tabulate.py): Tables 1-6 and the results summary. Outputs marked report()
# make up `snakemake --report` (categories Summary, Tables, Figures, Samples). Library nfpi.report.tables.


def _table_inputs(wc):
    files = [f"{R}/metrics/{s}.json" for t in TABLES.values() for s in t]
    files += [f"{R}/cnn/{s}.json" for t in ("table2", "table3") for s in TABLES.get(t, [])]
    for m in ("swin", "eva02"):
        if config["experiments"].get(m, True):
            files += [f"{R}/{m}/{a}_{b}.json" for a in ("none", "nf") for b in ("none", "sa")]
    return sorted(set(files))


def _table_names():
    """The tables tabulate writes (as nfpi.stages.tabulate.main decides): 1-3 per experiments, 4 always, 5-6 per model."""
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
        launch=launch("tabulate"),
        # only what the tables depend on: editing figures.* or latent_ot.* does not rebuild them
        cfg=lambda wc: json.dumps(tables_slice(config), sort_keys=True),
        out=f"{R}/tables",
    log:
        f"{R}/logs/tabulate.log",
    benchmark:
        f"{R}/benchmarks/tabulate.tsv",
    threads: 1
    resources:
        **cpu_resources(),
    shell:
        "{params.launch} --config {params.cfg:q} --results {R} --out-dir {params.out} > {log} 2>&1"
