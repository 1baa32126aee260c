"""Stage ``resolved_config``: the run's whole resolved config (schema defaults filled in) beside its results.

    python -m nfpi resolved_config --config '<the whole config as JSON>' --out results/<run>/config.resolved.yaml

Its own rule, so that ``tabulate`` can receive only the sections the tables depend on
(:func:`nfpi.experiments.tables_slice`) while every config edit still refreshes this record.
``nfpi.stages.spread`` reads it to check that replicate runs differ only in their seed.
"""

from __future__ import annotations

import json

import yaml

from nfpi.cli import stage_parser, start_stage
from nfpi.config import config_hash
from nfpi.io import atomic_write_text


def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__ or "", out=True)
    args = p.parse_args(argv)
    start_stage(args, "resolved_config")
    cfg = json.loads(args.config)
    atomic_write_text(args.out, f"# config hash {config_hash(cfg)}\n" + yaml.safe_dump(cfg))


if __name__ == "__main__":
    main()
