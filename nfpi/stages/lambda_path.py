"""Stage ``lambda_path``: the table and figure of a ``lam: auto`` setting's lambda path.

    python -m nfpi lambda_path --record gaussians/nfpi.json --tables-dir tables --figure figures/lambda_path.png

Reads the solve record (``path``: every lambda's iterations, residual, separation, validation NF-Acc,
the divergence boundary and the choice) and writes ``tables/lambda_path.{md,csv,tex,sources.json}``
and the figure (validation NF-Acc, iterations and separation against lambda, chosen lambda and
boundary marked).
"""

from __future__ import annotations

from nfpi.cli import stage_parser, start_stage
from nfpi.config import ConfigError
from nfpi.report.figures import lambda_path_figure
from nfpi.io import read_json
from nfpi.lampath import path_table
from nfpi.report.tables import write_table


def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__ or "", tables_dir=True)
    p.add_argument("--record", required=True, help="solve record (.json) of a lam: auto setting")
    p.add_argument("--figure", required=True)
    args = p.parse_args(argv)
    start_stage(args, "lambda_path")
    record = read_json(args.record)
    if "path" not in record:
        raise ConfigError(f"{args.record}: no lambda path in this solve record (its setting has a fixed lambda; "
                          "set fpi.lam: auto)")
    stamp = {"config_hash": (record.get("provenance") or {}).get("config_hash", "")}
    write_table(path_table(record, args.record, stamp=stamp), args.tables_dir)
    lambda_path_figure(record["path"], args.figure,
                       title=f"Lambda path of setting '{record.get('setting', '')}': chosen lambda = "
                             f"{record['path']['chosen']:.4g}")


if __name__ == "__main__":
    main()
