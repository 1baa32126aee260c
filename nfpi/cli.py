"""Shared command-line plumbing for stage modules (``python -m nfpi.<stage>``).

A rule calls a stage with ``--config '<json>'`` holding only the config slices that stage needs
(``{"<section>": {...}, ...}``), explicit input/output paths, and ``--threads``.  This module parses
those slices into the owning modules' frozen dataclasses (unknown keys fail with the dotted key
name), sets up logging and threads, and records where the job ran (the SLURM job id when there
is one, so the cluster integration test can prove every job ran under SLURM).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TypeVar

from nfpi import __version__
from nfpi.config import ConfigError, from_mapping

__all__ = ["stage_parser", "start_stage", "parse_slices", "provenance", "git_revision", "load_flow_for_stage"]

T = TypeVar("T")
log = logging.getLogger("nfpi.stage")


# The paths several stages take, written once: option name -> (flag, argparse keywords).  A stage names the ones
# it takes in stage_parser(..., data_dir=True, out="what it is"); a string replaces the default help.
_COMMON: dict[str, tuple[str, dict[str, Any]]] = {
    "data_dir": ("--data-dir", {"required": True, "help": "the prepared data folder (data/, from stage prepare)"}),
    "checkpoint": ("--checkpoint", {"required": True, "help": "a trained flow checkpoint (flows/<setting>.pt)"}),
    "out": ("--out", {"required": True, "help": "the output file"}),
    "out_dir": ("--out-dir", {"required": True, "help": "the output folder"}),
    "tables_dir": ("--tables-dir", {"required": True,
                                    "help": "where the table goes (<name>.md, .csv, .tex, .html, .sources.json)"}),
    "name": ("--name", {"default": "", "help": "the setting's name (for logs and records)"}),
}


def stage_parser(description: str, **common: bool | str) -> argparse.ArgumentParser:
    """An argument parser with the options every stage takes, plus the shared paths named in ``common``.

    ``common`` maps a key of ``_COMMON`` (``data_dir``, ``checkpoint``, ``out``, ``out_dir``, ``tables_dir``,
    ``name``) to ``True`` (its default help) or to the stage's own help text::

        p = stage_parser(__doc__, checkpoint=True, data_dir=True, out=".npz of samples")
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default="{}", help="JSON object of config slices, e.g. '{\"fpi\": {...}}'")
    p.add_argument("--config-hash", default="", help="lineage hash stamped on outputs (set by the workflow)")
    p.add_argument("--threads", type=int, default=0, help="intra-op CPU threads (0: torch default)")
    for key, spec in common.items():
        if key not in _COMMON:
            raise TypeError(f"stage_parser: unknown shared option {key!r}; known: {', '.join(_COMMON)}")
        if spec is False:
            continue
        flag, kwargs = _COMMON[key]
        p.add_argument(flag, **{**kwargs, **({"help": spec} if isinstance(spec, str) else {})})
    return p


def parse_slices(text: str, **schema: type) -> dict[str, Any]:
    """Parse ``--config`` into ``{section: dataclass}``; sections without a class stay plain dicts."""
    try:
        raw = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError("--config must be a JSON object of config sections")
    out: dict[str, Any] = {}
    for section, cls in schema.items():
        out[section] = from_mapping(cls, raw.get(section), where=section)
    for section, value in raw.items():
        if section not in schema:
            out[section] = value
    return out


def git_revision() -> str:
    """The repository's short git revision (``+dirty`` when modified), or ``"unknown"``."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(config_hash: str) -> dict[str, Any]:
    """What every metrics file carries: the lineage config hash, versions, and where it ran."""
    import torch

    return {
        "config_hash": config_hash,
        "nfpi_version": __version__,
        "git_revision": git_revision(),
        "torch_version": torch.__version__,
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def start_stage(args: argparse.Namespace, name: str) -> None:
    """Logging, threads and a header line naming the job (and its SLURM job id, if any).

    The thread count and denormal flushing are torch settings, applied when the stage first imports torch
    (:func:`nfpi.runtime.when_torch_loads`): a stage that never needs torch does not import it.
    """
    from nfpi.runtime import flush_denormals, keep_freed_memory, set_threads, setup_logging, when_torch_loads

    def torch_settings() -> None:
        set_threads(args.threads)
        flush_denormals()

    setup_logging()
    when_torch_loads(torch_settings)
    keep_freed_memory()
    job = os.environ.get("SLURM_JOB_ID")
    log.info(
        "stage %s | nfpi %s | python %s | host %s | SLURM_JOB_ID=%s | threads=%s",
        name, __version__, platform.python_version(), socket.gethostname(), job or "none", args.threads or "default",
    )
    log.info("command: %s", " ".join(sys.argv))


def load_flow_for_stage(checkpoint: str, device: str = "auto", *, need_prior: bool = True) -> Any:
    """The trained flow a downstream stage works with: ``(TrainedFlow, torch.device)``.

    Selects the device, rebuilds the flow with its EMA weights on it (:func:`nfpi.training.load_trained_flow`)
    and, with ``need_prior``, insists on the class Gaussians a fine-tuned flow carries.  The stage
    must preprocess images with ``trained.n_bits`` (the bits the flow was trained on).
    """
    from nfpi.runtime import select_device
    from nfpi.training import load_trained_flow

    dev = select_device(device)
    trained = load_trained_flow(checkpoint, map_location=dev)
    if need_prior and trained.prior is None:
        raise ValueError(f"{checkpoint}: has no class Gaussians; use a fine-tuned flow (flows/<setting>.pt), "
                         "not the pretrained one")
    return trained, dev
