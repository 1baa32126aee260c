# Stage prepare (nfpi/stages/prepare.py): any dataset source -> uint8 arrays per split + meta.json
# (written last). Config section `data`; library nfpi.data.


rule prepare:
    output:
        meta=f"{R}/data/meta.json",
    log:
        f"{R}/logs/prepare.log",
    benchmark:
        f"{R}/benchmarks/prepare.tsv"
    # A download needs internet, which cluster compute nodes often lack: then prepare runs on the
    # submit host (a local job under the SLURM executor; no effect on a local run).
    localrule: bool(config["data"].get("download", False))
    threads: 1
    resources:
        **cpu_resources(),
    params:
        launch=launch("prepare"),
        cfg=lambda wc: slices(data=config["data"]),
        chash=lambda wc: lineage_hash(config),
        multiple=2**LEVELS,
        out=lambda wc, output: os.path.dirname(output.meta),
    shell:
        "{params.launch} --config {params.cfg:q} --config-hash {params.chash} --threads {threads}"
        " --out-dir {params.out} --size-multiple {params.multiple} > {log} 2>&1"
        # a data error is one line at the end of the log: show it in Snakemake's output too
        " || {{ tail -n 1 {log} >&2; exit 1; }}"
