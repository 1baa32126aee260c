# Stage: prepare. Any dataset source -> uint8 arrays per split + meta.json (written last).


rule prepare:
    output:
        meta=f"{R}/data/meta.json",
    params:
        cfg=lambda wc: slices(data=config["data"]),
        chash=lambda wc: lineage_hash(config),
        multiple=2**LEVELS,
        out=f"{R}/data",
    log:
        f"{R}/logs/prepare.log",
    benchmark:
        f"{R}/benchmarks/prepare.tsv",
    threads: 1
    resources:
        **cpu_resources(),
    shell:
        "{PY} -m nfpi.prepare --config {params.cfg:q} --config-hash {params.chash} --threads {threads}"
        " --out-dir {params.out} --size-multiple {params.multiple} > {log} 2>&1"
        # a data error is one line at the end of the log: show it in Snakemake's output too
        " || {{ tail -n 1 {log} >&2; exit 1; }}"
