"""nfpi.fpi (the package, nfpi/fpi/__init__.py): the examples in its modules' docstrings run as written.

Float64 throughout; the per-pair references are in tests/fpi/reference.py.
"""

from __future__ import annotations

import torch




def test_package_examples_run() -> None:
    """The short example in each nfpi.fpi module's docstring runs as written."""
    import doctest
    import importlib

    torch.manual_seed(0)
    for name in ("", ".config", ".statistics", ".diagonal", ".full", ".gd"):
        mod = importlib.import_module("nfpi.fpi" + name)
        failed, tried = doctest.testmod(mod, optionflags=doctest.ELLIPSIS, report=True)
        assert tried > 0 and failed == 0, f"nfpi.fpi{name}: {failed} of {tried} examples failed"
