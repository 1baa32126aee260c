"""Test isolation for process-wide state that stage entry points set."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_denormals() -> Iterator[None]:
    """Stage mains (run in-process by some tests) flush denormals process-wide; undo it afterwards,
    or later tests that need subnormal floats (hypothesis float strategies) fail depending on order."""
    yield
    torch.set_flush_denormal(False)

