# NFPI: conditionally untangled latent spaces by fixed-point iteration (Enescu & Sahbi, BMVC 2024).
# Table of contents of the workflow; each stage's rule lives in workflow/rules/<stage>.smk and is a thin
# shell over `python -m nfpi <stage>` (nfpi/stages/<stage>.py), started by common.smk's launch().
#
#   snakemake --profile profiles/local all          # the embedded default (sklearn digits, CPU, minutes)
#   snakemake --profile slurm all                   # the same on a SLURM cluster
#   snakemake --profile profiles/local --configfile config/cifar10.yaml all
#   snakemake --profile slurm --sdm apptainer all   # every job in the nfpi image (config key `container`)
#
# DAG: prepare -> pretrain -> extract -> solve (per setting) -> finetune -> evaluate / sample -> classify
#      -> tabulate (Tables 1-6) + figures (Fig. 1, Fig. 2, curves) + latent OT + flow factorization

import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version
from snakemake_interface_executor_plugins.settings import DeploymentMethod

min_version("9.0")


# The default config is found next to this file, whatever the working directory (--directory).
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


include: "workflow/rules/common.smk"


# Containers: `snakemake --sdm apptainer` runs every job in the image of config key `container` (a SIF
# file relative to this folder, or a docker:// / oras:// URI); without --sdm the directive is ignored.
# Inside the image the stages run on its own python, not the host's (docs/cluster.md, "Apptainer").
APPTAINER = DeploymentMethod.APPTAINER in workflow.deployment_settings.deployment_method
IMAGE = config["container"] if "://" in config["container"] else os.path.join(workflow.basedir, config["container"])
if APPTAINER and "://" not in IMAGE and not os.path.isfile(IMAGE):
    raise WorkflowError(
        f"container: {IMAGE} (config key `container`) does not exist: build it with `apptainer build "
        f"{IMAGE} docker-daemon://nfpi:latest` (docs/cluster.md) or pass --config container=<image URI>"
    )
if APPTAINER:
    PY = "python"


container: IMAGE


# Under the SLURM executor, check every job's partition / GPUs / memory against `sinfo` before the
# first sbatch (a missing partition or a GPU rule on a GPU-less cluster fails here, clearly).
onstart:
    slurm_preflight(workflow)


rule all:
    default_target: True
    input:
        all_targets(),


rule tables:
    # Tables 1-6 only (what a replicate run of `make seeds` needs), without the figures.
    input:
        f"{R}/tables/README.md",
        f"{R}/config.resolved.yaml",


include: "workflow/rules/prepare.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/solve.smk"
include: "workflow/rules/share.smk"
include: "workflow/rules/lambda_path.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/classify.smk"
include: "workflow/rules/augment.smk"
include: "workflow/rules/tabulate.smk"
include: "workflow/rules/resolved_config.smk"
include: "workflow/rules/tsne.smk"
include: "workflow/rules/curves.smk"
include: "workflow/rules/latent_ot.smk"
include: "workflow/rules/flowfactor.smk"
