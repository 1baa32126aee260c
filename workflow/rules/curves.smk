# Stage curves (nfpi/stages/curves.py): the training curves of pretraining and fine-tuning. Library
# nfpi.report.figures.


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
        f"{R}/benchmarks/curves.tsv"
    threads: 1
    resources:
        **cpu_resources(),
    params:
        launch=launch("curves"),
    shell:
        "{params.launch} --out {output} {input.pretrain} {input.finetune} > {log} 2>&1"
