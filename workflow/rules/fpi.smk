# Stage: solve. Class Gaussians for each setting (Baseline 1, Baseline 2 = GD, NFPI, lambda sweep,
# ablations) from one streaming pass over the pretrained flow's training latents. With fpi.lam: auto,
# the NFPI settings run the lambda path (nfpi.lampath) and choose lambda on the validation latents; the
# GD settings then use the lambda the `nfpi` setting chose. Stage lambda_path: its table and figure.


def _solve_inputs(wc):
    spec = SETTINGS[wc.setting].spec
    i = {"latents": f"{R}/latents/pretrain/train.{config['extract']['format']}", "meta": f"{R}/data/meta.json"}
    if spec.get("lam") == "auto":
        if spec.get("method", "fpi") == "fpi":
            i["val"] = f"{R}/latents/pretrain/val.{config['extract']['format']}"
        else:
            i["lam_from"] = f"{R}/gaussians/nfpi.json"
    return i


def _solve_extra(wc, input):
    extra = []
    if "val" in input.keys():
        extra.append(f"--val-latents {input.val}")
    if "lam_from" in input.keys():
        extra.append(f"--lam-from {input.lam_from}")
    return " ".join(extra)


rule solve:
    priority: 30
    input:
        unpack(_solve_inputs),
    output:
        gaussians=f"{R}/gaussians/{{setting}}.pt",
        record=f"{R}/gaussians/{{setting}}.json",
    params:
        cfg=lambda wc: slices(setting=SETTINGS[wc.setting].spec),
        chash=lambda wc: lineage_hash(config, wc.setting),
        extra=_solve_extra,
    log:
        f"{R}/logs/solve_{{setting}}.log",
    benchmark:
        f"{R}/benchmarks/solve_{{setting}}.tsv",
    threads: 1
    resources:
        **cpu_resources(),
    shell:
        "{PY} -m nfpi.solve --config {params.cfg:q} --config-hash {params.chash} --threads {threads}"
        " --name {wildcards.setting} --latents {input.latents} --data-dir $(dirname {input.meta}) {params.extra}"
        " --out {output.gaussians} --out-json {output.record} > {log} 2>&1"


checkpoint share:
    # Settings whose Gaussians are equal within experiments.share_tol (and whose objective is the same)
    # share one fine-tuning; the rules downstream ask `shared(setting)` which flow stands for a setting.
    # A one-second job that unlocks the fine-tunings of the settings that do not share: run it first.
    priority: 30
    input:
        [f"{R}/gaussians/{s}.pt" for s in FINETUNED],
    output:
        f"{R}/gaussians/shared.json",
    params:
        cfg=lambda wc: slices(share=share_slice(config, FINETUNED, SHARE_TOL)),
        chash=lambda wc: config_hash({s: lineage_hash(config, s) for s in FINETUNED} | {"tol": SHARE_TOL}),
    log:
        f"{R}/logs/share.log",
    benchmark:
        f"{R}/benchmarks/share.tsv",
    threads: 1
    resources:
        **cpu_resources(),
    shell:
        "{PY} -m nfpi.share --config {params.cfg:q} --config-hash {params.chash} --threads {threads}"
        " --gaussians {input} --out {output} > {log} 2>&1"


rule lambda_path:
    input:
        record=f"{R}/gaussians/nfpi.json",
    output:
        table=f"{R}/tables/lambda_path.md",
        figure=report(f"{R}/figures/lambda_path.png", category="Figures", labels={"figure": "lambda path"}),
    params:
        tables=f"{R}/tables",
    log:
        f"{R}/logs/lambda_path.log",
    benchmark:
        f"{R}/benchmarks/lambda_path.tsv",
    threads: 1
    resources:
        **cpu_resources(),
    shell:
        "{PY} -m nfpi.lambda_path --record {input.record} --tables-dir {params.tables} --figure {output.figure}"
        " > {log} 2>&1"
