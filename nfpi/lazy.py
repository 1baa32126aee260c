"""Lazy package exports (PEP 562): a package names its torch-backed members without importing torch.

``nfpi.flows`` and ``nfpi.fpi`` keep their configs torch-free so that building the workflow's DAG or
validating a config does not pay for ``import torch``; their other public names load on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, table: dict[str, str], namespace: dict[str, Any], rest: str | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``table`` maps an exported name to its submodule.

    A name is imported from ``package.<submodule>`` on first access and cached in ``namespace`` (the
    package's ``globals()``), so later lookups never reach ``__getattr__``.  ``rest`` names the submodule
    that answers every other public name: a former single-file module split into a torch-free ``config``
    and the rest keeps every name it had (``from nfpi.training import batch_noise``).
    """

    def __getattr__(name: str) -> Any:
        sub = table.get(name) or (rest if rest is not None and not name.startswith("__") else None)
        if sub is not None:
            module = importlib.import_module(f"{package}.{sub}")
            if hasattr(module, name):
                value = getattr(module, name)
                namespace[name] = value
                return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*namespace, *table})

    return __getattr__, __dir__
