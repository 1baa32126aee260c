"""The fine-tuning stage: rounds of (re-solve the Gaussians, train the flow), run through the stage CLIs.

Properties: the steps split over rounds; the Gaussians of round r > 0 are the solver's fixed point
on the latents of round r - 1's flow (stationarity checked against a direct solve); the merged
curve counts steps globally; a rerun after completion resumes to the same weights; the bits per
channel are the pretrained flow's; and misuse fails with a message naming the key.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nfpi.stages import finetune, solve
from nfpi.config import ConfigError
from nfpi.data import PreparedData
from nfpi.density import load_gaussians
from nfpi.evaluation import latent_class_stats
from nfpi.training import FinetuneConfig, round_steps
from nfpi.fpi import FPIConfig, solve as fpi_solve
from nfpi.training import load_trained_flow
from nfpi.seeds import stream_seed
from tinyflow import tiny_pretrained, train_latents

torch.set_num_threads(1)

SPEC = {"method": "fpi", "lam": 5.0, "learn": "mean", "init": "identity", "max_iter": 200}


def test_round_steps_split_evenly() -> None:
    assert round_steps(10, 3) == [4, 3, 3]
    assert round_steps(6, 1) == [6]
    assert sum(round_steps(601, 4)) == 601


def test_rounds_must_fit_the_steps() -> None:
    with pytest.raises(ConfigError, match="finetune.rounds"):
        FinetuneConfig(steps=2, rounds=3)
    with pytest.raises(ConfigError, match="finetune.rounds"):
        FinetuneConfig(rounds=0)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Prepared digits (capped), a 4-bit pretrained tiny flow, its latents and round-0 Gaussians."""
    root = tmp_path_factory.mktemp("ft")
    data, pre = tiny_pretrained(root)
    lat = train_latents(data, pre, root / "train.parquet")
    g = root / "g.pt"
    solve.main(["--config", json.dumps({"setting": SPEC}), "--latents", str(lat), "--data-dir", str(data),
                "--out", str(g), "--out-json", str(root / "g.json")])
    return {"root": root, "data": data, "pre": pre, "gaussians": g}


def _finetune(p: dict[str, Path], out: Path, train: dict, setting: dict | None = SPEC) -> dict:
    cfg = {"train": train, **({"setting": setting} if setting is not None else {})}
    finetune.main(["--config", json.dumps(cfg), "--data-dir", str(p["data"]), "--init", str(p["pre"]),
                   "--gaussians", str(p["gaussians"]), "--out", str(out), "--metrics", str(out.with_suffix(".json")),
                   "--log-jsonl", str(out.with_suffix(".jsonl"))])
    return json.loads(out.with_suffix(".json").read_text())


TRAIN = {"steps": 7, "batch_size": 16, "warmup_steps": 1, "checkpoint_every": 3, "log_every": 1, "rounds": 3}


def test_rounds_resolve_the_gaussians_on_the_current_flow(pipeline: dict[str, Path]) -> None:
    out = pipeline["root"] / "ft" / "nfpi.pt"
    out.parent.mkdir()
    m = _finetune(pipeline, out, TRAIN)
    assert [r["steps"] for r in m["rounds"]] == [3, 2, 2]
    assert m["rounds"][0]["solve"]["source"] == str(pipeline["gaussians"])
    assert all(r["solve"]["status"] == "converged" for r in m["rounds"][1:])
    assert m["config"]["n_bits"] == 4

    final = load_trained_flow(out)
    assert final.n_bits == 4 and final.config["round"] == 2
    # The final flow was trained on the fixed point of the setting on the previous round's latents:
    # re-deriving round 2's Gaussians from round 1's weights is impossible (removed), but the
    # Gaussians it carries must be a stationary point of the solver on *some* latents, and differ
    # from round 0's (the flow moved).
    g0, _ = load_gaussians(pipeline["gaussians"])
    assert not torch.allclose(final.prior.means, g0.means)
    assert torch.equal(final.prior.variances, torch.ones_like(final.prior.variances))  # identity covariance kept

    # Global step numbers over the rounds, each line tagged with its round.
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps) and steps[-1] == 7 and {r["round"] for r in rows} == {0, 1, 2}
    # Intermediate round checkpoints are gone; the final one stays.
    assert not list((out.parent / "nfpi.pt.rounds").glob("round*.pt"))


def test_resolved_gaussians_are_the_solvers_fixed_point(pipeline: dict[str, Path]) -> None:
    """Round 1's Gaussians equal a direct solve on round 0's flow latents (same seed stream: nfpi.seeds.stream_seed of round 1)."""
    out = pipeline["root"] / "ft2" / "nfpi.pt"
    out.parent.mkdir()
    _finetune(pipeline, out, {**TRAIN, "steps": 4, "rounds": 2})
    # Rebuild round 0 alone (rounds=1 with its 2 steps and seed) and solve on its latents by hand.
    out0 = pipeline["root"] / "ft2" / "round0.pt"
    _finetune(pipeline, out0, {**TRAIN, "steps": 2, "rounds": 1})
    r0 = load_trained_flow(out0)
    d = PreparedData(pipeline["data"])
    stats = latent_class_stats(r0.flow, d.dataset("train"), d.num_classes, batch_size=512, n_bits=4,
                               seed=stream_seed(TRAIN.get("seed", 0), "finetune.round", 1))
    direct = fpi_solve(stats, FPIConfig(**SPEC))
    final = load_trained_flow(out)
    torch.testing.assert_close(final.prior.means, direct.means.float(), rtol=1e-5, atol=1e-5)


def test_rerun_after_completion_gives_the_same_weights(pipeline: dict[str, Path]) -> None:
    out = pipeline["root"] / "ft3" / "nfpi.pt"
    out.parent.mkdir()
    _finetune(pipeline, out, {**TRAIN, "steps": 4, "rounds": 2})
    first = load_trained_flow(out).flow.state_dict()
    _finetune(pipeline, out, {**TRAIN, "steps": 4, "rounds": 2})
    again = load_trained_flow(out).flow.state_dict()
    for k in first:
        assert torch.equal(first[k], again[k]), k


def test_misuse_names_the_key(pipeline: dict[str, Path]) -> None:
    out = pipeline["root"] / "bad" / "x.pt"
    out.parent.mkdir()
    with pytest.raises(ConfigError, match="setting"):
        _finetune(pipeline, out, TRAIN, setting=None)
    with pytest.raises(ConfigError, match="n_bits"):
        _finetune(pipeline, out, {**TRAIN, "n_bits": 8})
    assert not out.exists()


def test_two_process_ddp_rounds_match_one_process(pipeline: dict[str, Path]) -> None:
    """torchrun with 2 gloo processes (same global batch) gives the 1-process result, re-solves included."""
    import os
    import subprocess
    import sys

    cfg = json.dumps({"train": {**TRAIN, "steps": 6, "rounds": 2, "device": "cpu"}, "setting": SPEC})
    outs = {}
    for n in (1, 2):
        out = pipeline["root"] / f"ddp{n}" / "nfpi.pt"
        out.parent.mkdir()
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
        proc = subprocess.run(launch + ["-m", "nfpi", "finetune", "--config", cfg, "--data-dir", str(pipeline["data"]),
                                        "--init", str(pipeline["pre"]), "--gaussians", str(pipeline["gaussians"]),
                                        "--out", str(out), "--metrics", str(out.with_suffix(".json"))],
                              capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[n] = load_trained_flow(out)
    a, b = outs[1].flow.state_dict(), outs[2].flow.state_dict()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outs[1].prior.means, outs[2].prior.means, rtol=1e-4, atol=1e-4)
