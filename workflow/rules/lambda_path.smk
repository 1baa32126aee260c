# Stage lambda_path (nfpi/stages/lambda_path.py): the table and figure of the lambda path the `nfpi`
# setting's solve ran (fpi.lam: auto). Library nfpi.lampath, nfpi.report.figures.


rule lambda_path:
    input:
        record=f"{R}/gaussians/nfpi.json",
    output:
        table=f"{R}/tables/lambda_path.md",
        figure=report(f"{R}/figures/lambda_path.png", category="Figures", labels={"figure": "lambda path"}),
    log:
        f"{R}/logs/lambda_path.log",
    benchmark:
        f"{R}/benchmarks/lambda_path.tsv"
    threads: 1
    resources:
        **cpu_resources(),
    params:
        launch=launch("lambda_path"),
        tables=lambda wc, output: os.path.dirname(output.table),
    shell:
        "{params.launch} --record {input.record} --tables-dir {params.tables} --figure {output.figure}" " > {log} 2>&1"
