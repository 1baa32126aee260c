# Stage tabulate (nfpi/stages/tabulate.py): Tables 1-6 and the results summary. Outputs marked report()
# make up `snakemake --report` (categories Summary, Tables, Figures, Samples). Library nfpi.report.tables.


rule tabulate:
    input:
        _table_inputs,
    output:
        f"{R}/tables/README.md",
        f"{R}/summary.json",
        # the report (snakemake --report): a results summary page and one page per table
        report(f"{R}/summary.html", category="Summary", labels={"page": "Results summary"}),
        [report(f"{R}/tables/{t}.html", category="Tables", labels={"table": f"Table {t[5:]}"}) for t in _table_names()],
    log:
        f"{R}/logs/tabulate.log",
    benchmark:
        f"{R}/benchmarks/tabulate.tsv"
    threads: 1
    resources:
        **cpu_resources(),
    params:
        launch=launch("tabulate"),
        # only what the tables depend on: editing figures.* or latent_ot.* does not rebuild them
        cfg=lambda wc: json.dumps(tables_slice(config), sort_keys=True),
        out=lambda wc, output: os.path.dirname(output[0]),
        results=lambda wc, output: os.path.dirname(output[1]),
        shared=f"--shared {R}/gaussians/shared.json" if SHAREABLE else "",
    shell:
        "{params.launch} --config {params.cfg:q} --results {params.results} --out-dir {params.out}"
        " {params.shared} > {log} 2>&1"
