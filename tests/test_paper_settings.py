"""The paper-settings audit (config/audit/paper_settings.yaml, docs/paper-settings.md).

Each paper config is resolved exactly as the workflow resolves it (``config/config.yaml`` updated with
the paper file, validated with the schema's defaults, each rule's slice parsed into its dataclass) and
every audited value must equal the table's; the rendered doc must be fresh.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from nfpi import paper_settings as ps

ROWS = ps.load_table()

# Rows with `pending` in the table wait for a fix elsewhere (the classifier fix: each section resolved on
# its own preset in nfpi.classifiers.PRESETS, and the paper configs' classifier sections no longer
# inheriting config/config.yaml's digits values).  They are expected to fail; strict=True fails them
# once they pass: then drop `pending` from the row (and let ps.classifier_as_run follow the fix).


@functools.lru_cache(maxsize=None)
def resolved(name: str) -> dict[str, Any]:
    return ps.resolve(name)


def _params() -> list[Any]:
    out = []
    for r in ROWS:
        marks = [pytest.mark.xfail(strict=True, reason=f"pending: {r.pending}")] if r.pending else []
        out.append(pytest.param(r, id=f"{r.config}:{r.key}", marks=marks))
    return out


@pytest.mark.parametrize("row", _params())
def test_resolved_value_matches_the_table(row: ps.Row) -> None:
    got = resolved(row.config).get(row.key, "<not resolved>")
    assert ps.same(got, row.value), (
        f"{ps.CONFIGS[row.config]}: {row.key} resolves to {got!r} but config/audit/paper_settings.yaml says "
        f"{row.value!r} ({row.source}); fix the config or update the table and run "
        "`python -m nfpi.paper_settings --write`")


@pytest.mark.parametrize("name", [n for n in ps.CONFIGS if any(r.config == n and r.key.split(".")[0] in
                                                                ps.CLASSIFIER_SECTIONS for r in ROWS)])
def test_classifier_rows_hold_on_their_presets(name: str) -> None:
    """The classifier rows are what each section gives on top of its own preset (the intended
    resolution), except the rows that also need the paper config's section fixed."""
    flat: dict[str, Any] = {}
    for section in ps.CLASSIFIER_SECTIONS:
        flat.update(ps._flat(section, ps.intended_classifier(name, section)))
    bad = [f"{r.key}: {flat[r.key]!r} != {r.value!r}" for r in ROWS
           if r.config == name and r.key in flat and not r.pending
           and not ps.same(flat[r.key], r.value)]
    assert not bad, bad


def test_every_row_has_a_labelled_source_and_the_table_covers_the_paper() -> None:
    for r in ROWS:
        assert r.source.startswith(ps.SOURCES), f"{r.config}:{r.key}: source {r.source!r}"
        assert r.source != "our choice, because ", r
    keys = {(r.config, r.key) for r in ROWS}
    required = ["pretrain.optimizer", "pretrain.lr", "pretrain.warmup_steps", "pretrain.batch_size",
                "pretrain.ema_decay", "pretrain.epochs", "finetune.epochs", "finetune.lr", "finetune.rounds",
                "schedule.epochs", "pretrain.hflip", "pretrain.crop_pad", "pretrain.rotate_deg",
                "pretrain.brightness", "finetune.crop_pad", "flow.arch", "flow.levels", "flow.steps",
                "flow.hidden", "flow.res_blocks", "fpi.lam", "fpi.learn", "fpi.pi", "data.train_images"]
    for name in ps.CONFIGS:
        missing = [k for k in required if (name, k) not in keys]
        assert not missing, (name, missing)
    for name, sections in {"cifar10": ("cnn", "swin"), "cifar100": ("cnn", "swin"),
                           "imagenet32": ("eva02",), "imagenet64": ("eva02",)}.items():
        for s in sections:
            assert any(r.config == name and r.key.startswith(s + ".") for r in ROWS), (name, s)


@pytest.mark.parametrize("name", list(ps.CONFIGS))
def test_step_arithmetic(name: str) -> None:
    """Steps are whole epochs of the split actually trained on: floor(train images / batch) per epoch."""
    r = resolved(name)
    for stage in ("pretrain", "finetune"):
        per_epoch = r["data.train_images"] // r[f"{stage}.batch_size"]
        assert r[f"{stage}.steps_per_epoch"] == per_epoch
        assert r[f"{stage}.steps"] % per_epoch == 0, (stage, r[f"{stage}.steps"], per_epoch)
    assert r["pretrain.batch_size"] == r["finetune.batch_size"]
    # The bulk of the budget is trained on the solved Gaussians (Sec. 4.2), the N(0, I) part covers the warm-up.
    assert r["finetune.epochs"] >= 0.9 * r["schedule.epochs"]
    assert r["pretrain.steps"] >= r["pretrain.warmup_steps"]


def test_train_images_follow_the_carve() -> None:
    assert ps.train_images({"data": {"name": "cifar10", "val_fraction": 0.1, "split_seed": 0}}) == 45_000
    assert ps.train_images({"data": {"name": "imagenet32", "val_fraction": 0.01, "split_seed": 0}}) == 1_268_355
    assert ps.train_images({"data": {"name": "mnist", "val_fraction": 0.0, "split_seed": 0}}) == 60_000


def test_doc_is_fresh() -> None:
    assert ps.DOC_PATH.exists() and ps.DOC_PATH.read_text() == ps.render(), \
        "docs/paper-settings.md is stale: run `python -m nfpi.paper_settings --write`"


def test_drift_is_reported(tmp_path) -> None:
    """A table value that differs from the config is named (the --check path)."""
    row = next(r for r in ROWS if r.config == "cifar10" and r.key == "pretrain.lr")
    bad = ps.Row(row.config, row.key, row.setting, 0.02, row.paper, row.source)
    msg = ps.drift("cifar10", [bad])
    assert len(msg) == 1 and "pretrain.lr resolves to 0.01" in msg[0]
