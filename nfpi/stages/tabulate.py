"""Stage ``tabulate``: Tables 1-6 of the paper from the run's metrics files.

    python -m nfpi tabulate --config '<the tables' config slice as JSON>' --results results/<run> \
        --out-dir results/<run>/tables [--shared results/<run>/gaussians/shared.json]

Its config slice is the whole config: a table depends on everything upstream, and checking each
metrics file's lineage hash against the current config needs it.  Each table is written as
Markdown, CSV and LaTeX with a sources file; ``tables/README.md`` gathers them and
``summary.json`` and ``summary.html`` (the report's results summary page) hold the headline numbers, the
config hash and the git revision.  A setting that shares another's fine-tuning (``--shared``,
:mod:`nfpi.share`) is printed with its representative's numbers, and its table says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nfpi import __version__
from nfpi.cli import git_revision, stage_parser, start_stage
from nfpi.config import config_hash
from nfpi.experiments import table_settings
from nfpi.io import atomic_write_json, atomic_write_text
from nfpi.report.paper import headline, not_run, paper_tables, summary_page
from nfpi.report.tables import rows_markdown, write_table
from nfpi.share import SharedRows

log = logging.getLogger("nfpi.stages.tabulate")


def main(argv: list[str] | None = None) -> None:
    import json

    p = stage_parser(__doc__ or "", out_dir=True)
    p.add_argument("--results", required=True)
    p.add_argument("--shared", default=None, help="gaussians/shared.json of stage share (settings sharing a fine-tuning)")
    args = p.parse_args(argv)
    start_stage(args, "tabulate")
    cfg = json.loads(args.config)
    r = Path(args.results)
    stamp = {"config hash": config_hash(cfg), "nfpi": __version__, "git": git_revision()}
    sh = SharedRows.read(args.shared)
    tables = paper_tables(cfg, r, stamp, sh)
    out = Path(args.out_dir)
    for t in tables:
        write_table(t, out)
        log.info("wrote %s", out / f"{t.name}.md")
    atomic_write_text(out / "README.md", rows_markdown(tables) + not_run(cfg, table_settings(cfg)))
    summary = {t.name: [[c.text() for c in row] for row in t.rows] for t in tables}
    head = headline(cfg, r, table_settings(cfg))
    atomic_write_json(r / "summary.json", {"stamp": stamp, "tables": summary, "shared": sh.pairs(),
                                           "headline": {q: c.value for q, c in head}})
    atomic_write_text(r / "summary.html", summary_page(cfg, head, stamp, tables))


if __name__ == "__main__":
    main()
