# Shared definitions: config validation, the run's results folder, settings, config slices,
# resources and the launcher (python, or torchrun with one process per GPU).
import json
import os
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from nfpi.config import ConfigError
from nfpi.validation import check_config, schema_error_line

# Before anything else (and before torch is imported, for a misspelt key): every key's type and range and
# every cross-key rule (nfpi.validation, docs/config.md). A bad config stops here with ONE line naming the
# key, the value and the fix, exit status 1, no traceback, no job run, no results folder. Snakemake's
# schema validation stays as a second net (and fills in the defaults), its failure shown as one line too.
try:
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
from nfpi.share import share_slice, shareable_settings

RUN = config["run"]
R = f"results/{RUN}"
SETTINGS = settings_from_config(config)
TABLES = table_settings(config)
SETTING_RE = "|".join(SETTINGS)
FLOW_RE = "pretrain|" + SETTING_RE
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
    cnn = [pick(s) for t in ("table2", "table3") for s in TABLES.get(t, [])]
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


# Stage sections with a `seed`: a replicate run (`seed: s`, e.g. `make seeds`) adds s to each of them,
# so every source of training randomness changes while the data split (data.split_seed) stays.
SEEDED = ("train", "sample", "classifier", "augment", "extract", "latent_ot", "flowfactor", "figures")


def slices(**sections):
    """The JSON a stage receives: only the config sections it needs (so edits rerun only it)."""
    offset = int(config.get("seed", 0))
    if offset:
        sections = {k: {**v, "seed": int(v.get("seed", 0)) + offset} if k in SEEDED and isinstance(v, dict) else v
                    for k, v in sections.items()}
    return json.dumps(sections, sort_keys=True)


# The interpreter running Snakemake runs the stages too (the venv / container python), whatever PATH says.
PY = shlex.quote(sys.executable)


def launcher(gpus):
    """The interpreter for CPU / one GPU; torchrun with one process per GPU otherwise (one code path)."""
    if int(gpus) > 1:
        return f"{PY} -m torch.distributed.run --standalone --nproc_per_node={int(gpus)}"
    return PY


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
    t = table_files(rep=None) + [f"{R}/tables/README.md", f"{R}/config.resolved.yaml", f"{R}/figures/fig1_tsne.png", f"{R}/figures/fig2_augment.png",
         f"{R}/figures/training_curves.png"]
    t += [f"{R}/figures/samples_{s}.png" for s in SETTINGS if s in ("baseline1", "nfpi")]
    if config["fpi"].get("lam") == "auto":
        t.append(f"{R}/figures/lambda_path.png")
    if config["experiments"].get("latent_ot", True):
        t.append(f"{R}/latent_ot/metrics.json")
    if config["experiments"].get("flowfactor", True):
        t.append(f"{R}/flowfactor/metrics.json")
    return t
