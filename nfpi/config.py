"""Config plumbing: validated YAML mapping -> frozen dataclasses, one slice per stage.

Each library module owns the frozen dataclass of its options (``nfpi.flows.FlowConfig``,
``nfpi.training.TrainConfig``, ...).  The workflow validates ``config/*.yaml`` against
``workflow/schemas/config.schema.yaml`` (types, ranges, defaults, unknown keys) before any job
starts, then hands each rule only its slice as JSON; the stage module turns that slice into the
dataclass with :func:`from_mapping`, which rejects unknown keys again (a stage run by hand gets
the same clear error as the workflow).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from nfpi.errors import ConfigError  # re-exported: the user-facing errors live in nfpi.errors (torch-free)

__all__ = ["ConfigError", "from_mapping", "config_hash"]

T = TypeVar("T")


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" Did you mean '{close[0]}'?" if close else f" Known keys: {', '.join(sorted(known))}."


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a JSON value to the annotated type (tuples, nested dataclasses, optionals)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return from_mapping(tp, value, where=where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except (ConfigError, TypeError, ValueError):
                continue
        raise ConfigError(f"config key '{where}': value {value!r} does not match type {tp}")
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"config key '{where}': expected {len(args)} values, got {len(value)}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(args, value)))
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"config key '{where}': {value!r} is not one of {typing.get_args(tp)}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"config key '{where}': expected {tp.__name__}, got {value!r}")
    return value


def from_mapping(cls: type[T], mapping: Mapping[str, Any] | None, *, where: str = "") -> T:
    """Build the frozen dataclass ``cls`` from ``mapping``; unknown keys raise :class:`ConfigError`.

    Missing keys take the dataclass defaults.  ``where`` is the dotted config path used in errors
    (e.g. ``"fpi"``), so the message names the exact key to fix.
    """
    mapping = dict(mapping or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = [k for k in mapping if k not in names]
    if unknown:
        k = unknown[0]
        full = f"{where}.{k}" if where else k
        raise ConfigError(f"unknown config key '{full}'.{_suggest(k, names)}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in mapping.items()}
    return cls(**kwargs)


def config_hash(mapping: Any) -> str:
    """Short stable hash of a (JSON-able) config, stamped on tables and metrics."""
    import hashlib

    from nfpi.io import to_jsonable

    blob = json.dumps(to_jsonable(mapping), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
