"""The stages' shared command line (nfpi.cli): the common options written once, every stage's parser intact."""

from __future__ import annotations

import importlib

import pytest

from nfpi.cli import stage_parser
from nfpi.stages import STAGES


def test_stage_parser_adds_the_named_shared_options() -> None:
    p = stage_parser("demo", data_dir=True, checkpoint=True, out="the samples (.npz)", name=True)
    args = p.parse_args(["--data-dir", "d", "--checkpoint", "c.pt", "--out", "o.npz", "--threads", "2"])
    assert (args.data_dir, args.checkpoint, args.out, args.name, args.threads, args.config) == \
        ("d", "c.pt", "o.npz", "", 2, "{}")
    assert "the samples (.npz)" in p.format_help() and "--tables-dir" not in p.format_help()


def test_stage_parser_requires_the_required_paths_and_names_unknown_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        stage_parser("demo", out_dir=True).parse_args([])
    assert "--out-dir" in capsys.readouterr().err
    with pytest.raises(TypeError, match="unknown shared option 'data'"):
        stage_parser("demo", data=True)
    assert "--name" not in stage_parser("demo", name=False).format_help()


@pytest.mark.parametrize("stage", [s for s in STAGES if s != "spread"])
def test_every_stage_parses_its_help(stage: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each stage builds its parser (shared options included) and prints its help without running."""
    with pytest.raises(SystemExit) as done:
        importlib.import_module(f"nfpi.stages.{stage}").main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--config-hash" in out and "--threads" in out
