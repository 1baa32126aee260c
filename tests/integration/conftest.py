"""Integration tests start real system services (a local SLURM cluster, podman builds).

They run only when asked for: `pytest -m integration tests/integration` (what CI does) or with
NFPI_INTEGRATION=1; a plain `pytest` (the unit suite) skips them instead of touching the machine.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    markexpr = config.getoption("-m") or ""
    wanted = os.environ.get("NFPI_INTEGRATION") == "1" or (
        "integration" in markexpr and "not integration" not in markexpr
    )
    if wanted:
        return
    skip = pytest.mark.skip(reason="integration test: run with `pytest -m integration tests/integration`")
    for item in items:
        if item.get_closest_marker("integration") is not None:
            item.add_marker(skip)
