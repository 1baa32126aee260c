"""The workflow's stages: one module per Snakemake rule, named exactly as the rule.

Each stage is thin: it parses its command line (:mod:`nfpi.cli`), calls library functions and writes its
outputs atomically.  The rules start them through one launcher (``workflow/rules/common.smk``'s
``launch``), which runs ``python -m nfpi <stage> ...``; :func:`run` dispatches that command::

    python -m nfpi solve --config '{"setting": {...}}' --latents latents/pretrain/train.parquet ...
    python -m nfpi --help            # the list of stages

Library modules never import a stage.  ``spread`` is not a rule: ``make seeds`` runs it over replicate runs.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__all__ = ["STAGES", "run"]

# Every stage, in DAG order (workflow/rules/<stage>.smk holds its rule; classify has three: cnn, swin, eva02).
STAGES: tuple[str, ...] = (
    "prepare", "pretrain", "extract", "solve", "lambda_path", "finetune", "evaluate", "sample", "classify",
    "augment", "share", "tabulate", "resolved_config", "tsne", "curves", "latent_ot", "flowfactor", "spread",
)


def run(argv: list[str] | None = None) -> Any:
    """Run stage ``argv[0]`` with the remaining arguments (``python -m nfpi <stage> ...``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m nfpi <stage> [options]   (python -m nfpi <stage> --help for its options)\n"
              "stages: " + ", ".join(STAGES))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in STAGES:
        print(f"nfpi: unknown stage {name!r}; the stages are: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    sys.argv = [f"nfpi {name}", *rest]  # --help and error messages name the stage as it was called
    from nfpi.errors import ConfigError, DataError  # torch-free: a stage that never needs torch does not load it

    try:
        return importlib.import_module(f"nfpi.stages.{name}").main(rest)
    except (DataError, ConfigError) as exc:
        # A config or data problem is the user's to fix: one line naming the key or file (the prepare rule
        # echoes it), no traceback.  Nothing is half-written: every output goes through nfpi.io's atomic
        # writers and a folder's completeness marker (prepare: meta.json) is written last.
        sys.exit(f"nfpi {name} error: " + " ".join(str(exc).split()))
