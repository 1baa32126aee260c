# Stage resolved_config (nfpi/stages/resolved_config.py): the whole resolved config beside the results.


rule resolved_config:
    # The whole resolved config beside the results (nfpi.stages.spread reads it); cheap, reruns on any edit.
    output:
        f"{R}/config.resolved.yaml",
    log:
        f"{R}/logs/resolved_config.log",
    benchmark:
        f"{R}/benchmarks/resolved_config.tsv"
    threads: 1
    resources:
        **cpu_resources(),
    params:
        launch=launch("resolved_config"),
        cfg=lambda wc: json.dumps(config, sort_keys=True),
    shell:
        "{params.launch} --config {params.cfg:q} --out {output} > {log} 2>&1"
