"""The run's report: tables with a source for every number, figures, and the paper's table builders.

- :mod:`nfpi.report.tables`: :class:`~nfpi.report.tables.Table` / :class:`~nfpi.report.tables.Cell` and their
  Markdown / CSV / LaTeX / HTML writers (``write_table``), metrics loading with provenance checks.
- :mod:`nfpi.report.figures`: sample grids, t-SNE panels (Fig. 1), the augmentation figure (Fig. 2), training
  curves, the lambda-path figure.

    >>> from nfpi.report.tables import Cell, Table, write_table
    >>> write_table(Table("t", "A table", ["a"], [[Cell(1.0, "m.json", "x", "{:.1f}")]]), "tables")  # doctest: +SKIP
"""
