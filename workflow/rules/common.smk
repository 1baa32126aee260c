# Shared definitions: config validation, the run's results folder, settings, config slices,
# resources and the one launcher of every rule (`python -m nfpi <stage>`, or torchrun with one process per GPU).
import json
import os
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from nfpi.config import ConfigError
from nfpi.validation import check_config, coerce_cli_strings, schema_error_line

# Before anything else (and before torch is imported, for a misspelt key): every key's type and range and
# every cross-key rule (nfpi.validation, docs/config.md). A bad config stops here with ONE line naming the
# key, the value and the fix, exit status 1, no traceback, no job run, no results folder. Snakemake's
# schema validation stays as a second net (and fills in the defaults), its failure shown as one line too.
try:
    coerce_cli_strings(config)  # --config 'pretrain={n_bits: 5}' reaches Snakemake's config as the string "5"
    check_config(config)
    validate(config, "../schemas/config.schema.yaml")
except ConfigError as exc:
    sys.exit(f"nfpi config error: {exc}")
except WorkflowError as exc:
    sys.exit(f"nfpi config error: {schema_error_line(exc)}")

sys.path.insert(0, os.path.join(workflow.basedir, "profiles", "slurm"))
from preflight import check_workflow as slurm_preflight  # noqa: E402

from nfpi.config import config_hash, from_mapping
from nfpi.experiments import aug_variants, lineage_hash, settings_from_config, table_settings, tables_slice
from nfpi.flows import FlowConfig, resolve_preset
from nfpi.seeds import replicate_seed
from nfpi.share import share_slice, shareable_settings

RUN = config["run"]
R = f"results/{RUN}"
SETTINGS = settings_from_config(config)
TABLES = table_settings(config)
SETTING_RE = "|".join(SETTINGS)
FLOW_RE = "|".join(["pretrain", *SETTINGS])
LEVELS = resolve_preset(from_mapping(FlowConfig, config["flow"], where="flow")).levels
RES = config["resources"]
# Settings whose solved Gaussians are equal within experiments.share_tol share one fine-tuning (the
# `share` checkpoint, nfpi.share). FINETUNED: the candidates (every setting a table reports), NFPI first
# so that it is always its own representative (Tables 5-6, Fig. 2 and the related methods use its flow).
# SHAREABLE: those with the objective of an earlier candidate (in practice the GD policies); only they
# wait for the checkpoint, every other setting's jobs are scheduled from the start.
SHARE_TOL = float(config["experiments"].get("share_tol") or 0.0)
FINETUNED = [s for s in dict.fromkeys(["nfpi", *SETTINGS]) if s in SETTINGS and any(s in t for t in TABLES.values())]
SHAREABLE = shareable_settings(config, FINETUNED, SHARE_TOL)


def shared(setting):
    """The setting whose fine-tuned flow and metrics stand for `setting` (itself unless it shares one)."""
    if setting not in SHAREABLE:
        return setting
    with open(checkpoints.share.get().output[0]) as fh:
        return json.load(fh)["representative"].get(setting, setting)


def table_files(rep=shared):
    """The metrics files the tables read, each setting mapped by `rep` (None: leave the shareable out)."""
    pick = (lambda s: None if s in SHAREABLE else s) if rep is None else rep
    names = [pick(s) for t in TABLES.values() for s in t]
    cnn_tables = ("table2", "table3")
    if config["experiments"].get("table1_cnn", False):  # CNN-Acc for every Table 1 row
        cnn_tables = ("table1",) + cnn_tables
    cnn = [pick(s) for t in cnn_tables for s in TABLES.get(t, [])]
    files = [f"{R}/metrics/{s}.json" for s in names if s] + [f"{R}/cnn/{s}.json" for s in cnn if s]
    for m in ("swin", "eva02"):
        if config["experiments"].get(m, True):
            files += [f"{R}/{m}/{v}.json" for v, _ in aug_variants(config)]
    return sorted(set(files))


wildcard_constraints:
    setting=SETTING_RE,
    flow=FLOW_RE,
    split="train|val|test",
    nfa="none|nf",
    sa="none|sa",


# Stage sections with a `seed`: a replicate run (`seed: s`, e.g. `make seeds`) derives each of their seeds
# from (seed, s) (nfpi.seeds.replicate_seed), so every source of training randomness changes while the data
# split (data.split_seed) stays.
SEEDED = ("train", "sample", "classifier", "augment", "extract", "latent_ot", "flowfactor", "figures")


def slices(**sections):
    """The JSON a stage receives: only the config sections it needs (so edits rerun only it)."""
    offset = int(config.get("seed", 0))
    if offset:
        sections = {
            k: (
                {**v, "seed": replicate_seed(int(v.get("seed", 0)), offset)}
                if k in SEEDED and isinstance(v, dict)
                else v
            )
            for k, v in sections.items()
        }
    return json.dumps(sections, sort_keys=True)


# The interpreter running Snakemake runs the stages too (the venv / container python), whatever PATH says.
PY = shlex.quote(sys.executable)


def launch(stage, gpus=1):
    """The one launcher of every rule: ``python -m nfpi <stage>`` (nfpi/stages/<stage>.py); with more than one
    GPU, torchrun with one process per GPU running the same command (one code path)."""
    if int(gpus) > 1:
        return f"{PY} -m torch.distributed.run --standalone --nproc_per_node={int(gpus)} -m nfpi {stage}"
    return f"{PY} -m nfpi {stage}"


def gpu_resources(kind="train"):
    """Resources of a GPU-capable rule: GPUs (from config), memory and runtime."""
    return dict(
        mem_mb=RES["mem_mb"][kind],
        runtime=RES["runtime_min"][kind],
        gpu=RES["gpus"] if kind == "train" else min(RES["gpus"], 1),
    )


def cpu_resources(kind="cpu"):
    return dict(mem_mb=RES["mem_mb"][kind], runtime=RES["runtime_min"][kind])


def all_targets():
    # the tables' inputs that wait for no `share` checkpoint are listed too: the scheduler sees them from the start
    t = table_files(rep=None) + [
        f"{R}/tables/README.md",
        f"{R}/config.resolved.yaml",
        f"{R}/figures/fig1_tsne.png",
        f"{R}/figures/fig2_augment.png",
        f"{R}/figures/training_curves.png",
    ]
    t += [f"{R}/figures/samples_{s}.png" for s in SETTINGS if s in ("baseline1", "nfpi")]
    if config["fpi"].get("lam") == "auto":
        t.append(f"{R}/figures/lambda_path.png")
    if config["experiments"].get("latent_ot", True):
        t.append(f"{R}/latent_ot/metrics.json")
    if config["experiments"].get("flowfactor", True):
        t.append(f"{R}/flowfactor/metrics.json")
    return t


# The rules' input and parameter functions (snakemake --lint: functions live here, rules in <stage>.smk).


# rule solve
def _solve_inputs(wc):
    spec = SETTINGS[wc.setting].spec
    i = {"latents": f"{R}/latents/pretrain/train.{config['extract']['format']}", "meta": f"{R}/data/meta.json"}
    if spec.get("lam") == "auto":
        if spec.get("method", "fpi") == "fpi":
            i["val"] = f"{R}/latents/pretrain/val.{config['extract']['format']}"
        else:
            i["lam_from"] = f"{R}/gaussians/nfpi.json"
    return i


# rule solve
def _solve_extra(wc, input):
    extra = []
    if "val" in input.keys():
        extra.append(f"--val-latents {input.val}")
    if "lam_from" in input.keys():
        extra.append(f"--lam-from {input.lam_from}")
    return " ".join(extra)


# rule classify
def _aug_inputs(wc):
    i = {"meta": f"{R}/data/meta.json"}
    if wc.nfa == "nf":
        i["extra"] = f"{R}/augment/nf_train.npz"
    return i


# rule tabulate
def _table_inputs(wc):
    # a setting that shares another's fine-tuning (nfpi.share) reads the representative's files
    return table_files() + ([f"{R}/gaussians/shared.json"] if SHAREABLE else [])


# rule tabulate
def _table_names():
    """The tables tabulate writes (as nfpi.stages.tabulate.main decides): 1-3 per experiments, 4 always, 5-6 per model."""
    names = [t for t in ("table1", "table2", "table3") if t in TABLES] + ["table4"]
    return names + [t for m, t in (("swin", "table5"), ("eva02", "table6")) if config["experiments"].get(m, True)]


# rule tsne
def _fig1_gaussians(wc):
    lams = config["experiments"]["figure_lambdas"]
    from nfpi.experiments import lambda_setting_name

    g = {"baseline1": f"{R}/gaussians/baseline1.pt"}
    for lam in lams:
        g[f"NFPI lambda={lam:g}"] = f"{R}/gaussians/{lambda_setting_name(config, lam)}.pt"
    return g


# rule flowfactor
def _flowfactor_flow():
    return config["flowfactor"].get("flow", "nfpi")
