"""nfpi.config: YAML/JSON slices -> frozen dataclasses, with errors that name the key."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from nfpi.config import ConfigError, config_hash, from_mapping
from nfpi.cli import parse_slices


@dataclasses.dataclass(frozen=True)
class Inner:
    a: int = 1


@dataclasses.dataclass(frozen=True)
class Opts:
    lam: float = 1.0
    mode: Literal["x", "y"] = "x"
    sizes: tuple[int, ...] = (1, 2)
    maybe: int | None = None
    inner: Inner = Inner()


def test_defaults_and_conversion() -> None:
    o = from_mapping(Opts, {"lam": 3, "sizes": [4, 5], "inner": {"a": 7}})
    assert o == Opts(lam=3.0, sizes=(4, 5), inner=Inner(7))
    assert isinstance(o.lam, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.lam = 2.0  # type: ignore[misc]


def test_unknown_key_is_named_with_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"'fpi\.lamda'.*Did you mean 'lam'"):
        from_mapping(Opts, {"lamda": 1.0}, where="fpi")


def test_wrong_type_and_literal_are_named() -> None:
    with pytest.raises(ConfigError, match="fpi.mode"):
        from_mapping(Opts, {"mode": "z"}, where="fpi")
    with pytest.raises(ConfigError, match="fpi.lam"):
        from_mapping(Opts, {"lam": "big"}, where="fpi")


def test_parse_slices_and_hash() -> None:
    assert parse_slices('{"s": {"maybe": 3}}', s=Opts)["s"].maybe == 3
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_slices("{", s=Opts)
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
