"""Real kills of the workflow under a real Snakemake: a killed job costs only the steps since its last
checkpoint and changes no result.

One chain, ``prepare -> pretrain -> extract -> solve -> finetune (2 rounds) -> evaluate`` of the
``nfpi`` setting on the tiny digits config (+ ``.test/config/kill.yaml``), is started with the
command a user types and interrupted the way a cluster interrupts it, then rerun with the *same*
command each time (``--unlock`` first where Snakemake itself was killed, as its error says):

==  ============================================  ================================================
#   interruption                                   what the rerun must show
==  ============================================  ================================================
1   SIGKILL of the ``prepare`` job                 a clean restart of prepare
2   SIGKILL of ``pretrain`` after a checkpoint     ``resumed from step s`` (s = the checkpoint's step)
3   SIGTERM of ``pretrain`` (SLURM's time limit)   the job writes a checkpoint at the step it is at,
                                                   exits non-zero; the rerun resumes from that step
4   SIGKILL of the ``extract`` job                 a clean restart of extract
5   SIGTERM of ``finetune`` in round 1             as 3, in round 1 of 2
6   SIGKILL of ``finetune`` in round 2             round 1 resumed at its end, round 2 from its
                                                   checkpoint (it used to restart from step 0)
7   SIGKILL of Snakemake's process group           ``--unlock``, then round 2 resumes from its
    (Snakemake and its job: a lost node)           checkpoint
==  ============================================  ================================================

An uninterrupted reference run of the same command runs alongside.  Checked: (a) every resume
starts from the step the log names, (b) the final flows, Gaussians, latents, data and every metrics
file equal the reference's bit for bit (tensors with ``torch.equal``; JSON after dropping the fields
listed in ``VOLATILE``), (c) a file at a final output path never changes once it exists within one
Snakemake invocation and always loads (watched by a thread for the whole test).

``pytest -m kill tests/test_kill.py``: 11 min on the shared 2-core VM at load ~22 (4.7 CPU-minutes;
docs/bench/kill.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

pytestmark = pytest.mark.kill

ROOT = Path(__file__).resolve().parent.parent
RUN = "kill"
R = f"results/{RUN}"
TARGET = f"{R}/metrics/nfpi.json"
COMMAND = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), TARGET,
           "--profile", str(ROOT / "profiles" / "local"), "--cores", "2",
           "--configfile", str(ROOT / ".test" / "config" / "config.yaml"), str(ROOT / ".test" / "config" / "kill.yaml")]
PRETRAIN_STEPS, ROUND_STEPS = 60, 30  # kill.yaml: pretrain 60 steps, finetune 60 over 2 rounds
TIMEOUT = 600.0  # seconds any one condition may take on a loaded 2-core machine (never reached when it works)

# Fields of the metrics files that measure this attempt rather than the result, and why they differ:
VOLATILE = {
    "provenance",  # host, time, git revision, SLURM job id: where and when the job ran
    "wall_s", "seconds", "elapsed",  # wall-clock time of this attempt
    "images_per_sec",  # throughput of this attempt
    "resumed_from",  # the step this attempt started from: the point of the test (checked in the logs)
}


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------------
# (c): a watcher that records every version of every final output it sees


def _is_final_output(rel: str) -> bool:
    """Declared outputs and the data folder; not logs, benchmarks or the training's private state."""
    parts = rel.split("/")
    return not (parts[0] in ("logs", "benchmarks") or parts[-1].startswith(".")
                or any(p.endswith((".resume", ".rounds")) for p in parts))


@dataclass
class Watcher:
    """Polls ``results/<run>`` and keeps every distinct content of each output file per Snakemake invocation."""

    wd: Path
    invocation: int = 0
    seen: dict[tuple[int, str], dict[str, bytes]] = field(default_factory=dict)
    _stat: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def scan(self) -> None:
        with self._lock:
            self._scan()

    def _scan(self) -> None:
        base = self.wd / R
        if not base.is_dir():
            return
        for path in base.rglob("*"):
            rel = path.relative_to(base).as_posix()
            if not _is_final_output(rel):
                continue
            try:
                st = path.stat()
                if not path.is_file():
                    continue
                key = (st.st_ino, st.st_size, st.st_mtime_ns)
                if self._stat.get(rel) == key:
                    continue
                data = path.read_bytes()
            except FileNotFoundError:  # removed between listing and reading (Snakemake cleaning up)
                continue
            self._stat[rel] = key
            self.seen.setdefault((self.invocation, rel), {})[hashlib.sha256(data).hexdigest()] = data

    def __enter__(self) -> Watcher:
        def loop() -> None:
            while not self._stop.is_set():
                self.scan()
                time.sleep(0.05)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.scan()


def _assert_complete(rel: str, data: bytes) -> None:
    """The bytes of a final output load as what they claim to be."""
    if rel.endswith(".pt"):
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    elif rel.endswith(".json"):
        json.loads(data)
    elif rel.endswith(".jsonl"):
        for line in data.decode().splitlines():
            json.loads(line)
    elif rel.endswith(".parquet"):
        import pyarrow.parquet as pq

        pq.read_table(io.BytesIO(data))
    elif rel.endswith(".npy"):
        import numpy as np

        np.load(io.BytesIO(data))


# ------------------------------------------------------------------------------------------------
# Running Snakemake and finding its jobs


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@dataclass
class Invocation:
    """One ``snakemake`` command in its own process group (so that it can be killed as a whole)."""

    wd: Path
    args: list[str]

    def __post_init__(self) -> None:
        self.out = self.wd / f"snakemake.{time.monotonic_ns()}.out"
        self.fh = open(self.out, "w")
        self.proc = subprocess.Popen(self.args, cwd=self.wd, env=_env(), stdout=self.fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait(self) -> int:
        rc = self.proc.wait(timeout=TIMEOUT)
        self.fh.close()
        return rc

    def text(self) -> str:
        return self.out.read_text()


def _logs(wd: Path) -> str:
    return "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((wd / R / "logs").glob("*.log")))


def job_process(wd: Path, stage: str) -> psutil.Process | None:
    """The running ``python -m nfpi <stage>`` job started in ``wd``."""
    for p in psutil.process_iter(["cmdline", "cwd"]):
        cmd = p.info["cmdline"] or []
        if p.info["cwd"] == os.path.realpath(wd) and any(cmd[i:i + 3] == ["-m", "nfpi", stage] for i in range(len(cmd))):
            return p
    return None


def wait_for(what: str, cond: Callable[[], Any], inv: Invocation) -> Any:
    """Poll ``cond`` until it returns a truthy value; fail (with the logs) if Snakemake ends first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < TIMEOUT:
        value = cond()
        if value:
            return value
        if inv.proc.poll() is not None:
            raise AssertionError(f"snakemake ended ({inv.proc.returncode}) before {what}:\n{inv.text()[-4000:]}\n"
                                 f"{_logs(inv.wd)}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def state_step(path: Path) -> int | None:
    """The step of a resume checkpoint (None when there is none yet)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


def job_at_checkpoint(inv: Invocation, module: str, state: Path, at_least: int) -> tuple[psutil.Process, int]:
    """Wait for a checkpoint at step >= ``at_least``, then freeze the job (SIGSTOP) and read the step it is at.

    Frozen, the job can neither finish nor write another checkpoint, so the step read now is the one a
    rerun must resume from, whatever the machine's load.
    """
    def ready() -> psutil.Process | None:
        proc = job_process(inv.wd, module)
        step = state_step(state) if proc is not None else None
        return proc if step is not None and step >= at_least else None

    proc = wait_for(f"a {module} checkpoint at step >= {at_least}", ready, inv)
    proc.send_signal(signal.SIGSTOP)
    step = state_step(state)
    assert proc.is_running() and step is not None
    return proc, step


def stage_started(inv: Invocation, module: str, log: str) -> psutil.Process:
    """Freeze the ``module`` job as soon as it exists, then let it run in 10 ms slices until its stage body
    has started (its log has the command line): the job is caught early in its work however fast it is."""
    proc = wait_for(f"the {module} job", lambda: job_process(inv.wd, module), inv)
    proc.send_signal(signal.SIGSTOP)
    path = inv.wd / R / "logs" / log
    t0 = time.monotonic()
    while not (path.exists() and "command:" in path.read_text()):
        assert time.monotonic() - t0 < TIMEOUT, f"timed out waiting for the {module} stage to start"
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.01)
        proc.send_signal(signal.SIGSTOP)
        assert proc.status() != psutil.STATUS_ZOMBIE, f"the {module} job ended before its stage started"
    return proc


def kill(proc: psutil.Process, sig: signal.Signals) -> None:
    """Deliver ``sig`` to a (frozen) job and let it act on it."""
    proc.send_signal(sig)
    try:
        proc.send_signal(signal.SIGCONT)  # a frozen job acts on SIGTERM only once it runs again
    except psutil.NoSuchProcess:
        pass  # SIGKILL needs no SIGCONT: the shell may already have reaped the job
    proc.wait(timeout=TIMEOUT)


def log_text(wd: Path, name: str) -> str:
    return (wd / R / "logs" / name).read_text()


# ------------------------------------------------------------------------------------------------
# The two runs


@dataclass
class Runs:
    reference: Path
    killed: Path
    events: dict[str, Any]
    watchers: list[Watcher]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    ref_wd, wd = tmp_path_factory.mktemp("reference"), tmp_path_factory.mktemp("killed")
    events: dict[str, Any] = {}
    with Watcher(ref_wd) as ref_watch, Watcher(wd) as watch:
        reference = Invocation(ref_wd, COMMAND)

        def invocation() -> Invocation:
            watch.scan()
            watch.invocation += 1
            return Invocation(wd, COMMAND)

        def failed(inv: Invocation) -> None:
            assert inv.wait() != 0, f"snakemake succeeded although a job was killed:\n{inv.text()[-3000:]}"

        pre_state = wd / R / "flows" / "pretrain.pt.resume" / "state.pt"
        round1_state = wd / R / "flows" / "nfpi.pt.rounds" / "round0.pt.resume" / "state.pt"
        round2_state = wd / R / "flows" / "nfpi.pt.resume" / "state.pt"

        # 1. SIGKILL of prepare, in its stage body.
        inv = invocation()
        kill(stage_started(inv, "prepare", "prepare.log"), signal.SIGKILL)
        failed(inv)
        # 2. SIGKILL of pretrain after its first periodic checkpoint.
        inv = invocation()
        proc, events["pretrain_sigkill"] = job_at_checkpoint(inv, "pretrain", pre_state, 10)
        kill(proc, signal.SIGKILL)
        failed(inv)
        # 3. SIGTERM of pretrain, at whatever step it is at, at least one checkpoint past the resume.
        inv = invocation()
        proc, _ = job_at_checkpoint(inv, "pretrain", pre_state, events["pretrain_sigkill"] + 10)
        events["pretrain_log_after_sigkill"] = log_text(wd, "pretrain.log")
        kill(proc, signal.SIGTERM)
        failed(inv)
        events["pretrain_log_sigterm"] = log_text(wd, "pretrain.log")
        events["pretrain_sigterm"] = state_step(pre_state)
        # 4. SIGKILL of extract.
        inv = invocation()
        proc = stage_started(inv, "extract", "extract_pretrain.log")
        events["pretrain_log_after_sigterm"] = log_text(wd, "pretrain.log")
        kill(proc, signal.SIGKILL)
        failed(inv)
        # 5. SIGTERM of finetune in round 1.
        inv = invocation()
        proc, _ = job_at_checkpoint(inv, "finetune", round1_state, 5)
        kill(proc, signal.SIGTERM)
        failed(inv)
        events["finetune_log_sigterm"] = log_text(wd, "finetune_nfpi.log")
        events["finetune_sigterm"] = state_step(round1_state)
        # 6. SIGKILL of finetune in round 2, after a round-2 checkpoint.
        inv = invocation()
        proc, events["finetune_sigkill"] = job_at_checkpoint(inv, "finetune", round2_state, 5)
        events["finetune_log_after_sigterm"] = log_text(wd, "finetune_nfpi.log")
        kill(proc, signal.SIGKILL)
        failed(inv)
        # 7. SIGKILL of Snakemake's whole process group (Snakemake and the finetune job) in round 2.
        inv = invocation()
        proc, events["snakemake_sigkill"] = job_at_checkpoint(inv, "finetune", round2_state,
                                                              events["finetune_sigkill"] + 5)
        events["finetune_log_after_sigkill"] = log_text(wd, "finetune_nfpi.log")
        os.killpg(inv.proc.pid, signal.SIGKILL)
        assert inv.wait() == -signal.SIGKILL
        proc.wait(timeout=TIMEOUT)  # the job was in Snakemake's process group: gone too
        # The same command again: Snakemake refuses (its lock is left behind) and says to --unlock.
        inv = invocation()
        assert inv.wait() != 0 and "--unlock" in inv.text(), inv.text()[-3000:]
        assert Invocation(wd, [*COMMAND, "--unlock"]).wait() == 0
        inv = invocation()
        assert inv.wait() == 0, f"{inv.text()[-4000:]}\n{_logs(wd)}"
        events["finetune_log_after_snakemake_sigkill"] = log_text(wd, "finetune_nfpi.log")

        rc = reference.wait()
        assert rc == 0, f"{reference.text()[-4000:]}\n{_logs(ref_wd)}"
    return Runs(ref_wd, wd, events, [ref_watch, watch])


# ------------------------------------------------------------------------------------------------
# (a) resumes from the checkpoint, as the log says


def test_sigkill_of_pretrain_resumes_from_its_checkpoint(runs: Runs) -> None:
    s = runs.events["pretrain_sigkill"]
    assert 10 <= s < PRETRAIN_STEPS and s % 10 == 0
    assert f"resumed from step {s} of {PRETRAIN_STEPS}" in runs.events["pretrain_log_after_sigkill"]


def test_sigterm_of_pretrain_writes_a_checkpoint_and_the_rerun_resumes_from_it(runs: Runs) -> None:
    t = runs.events["pretrain_sigterm"]
    assert runs.events["pretrain_sigkill"] + 10 <= t < PRETRAIN_STEPS
    assert re.search(rf"stopped at step {t} of {PRETRAIN_STEPS} on SIGTERM", runs.events["pretrain_log_sigterm"])
    assert f"resumed from step {t} of {PRETRAIN_STEPS}" in runs.events["pretrain_log_after_sigterm"]


def test_sigterm_of_finetune_round_1_resumes_there(runs: Runs) -> None:
    t = runs.events["finetune_sigterm"]
    assert 5 <= t < ROUND_STEPS
    assert f"stopped at step {t} of {ROUND_STEPS} (round 1/2) on SIGTERM" in runs.events["finetune_log_sigterm"]
    assert f"resumed from step {t} of {ROUND_STEPS} (round 1/2)" in runs.events["finetune_log_after_sigterm"]


def test_sigkill_of_finetune_in_round_2_resumes_round_2(runs: Runs) -> None:
    s = runs.events["finetune_sigkill"]
    log = runs.events["finetune_log_after_sigkill"]
    assert 5 <= s < ROUND_STEPS
    assert "fingerprint differs" not in log
    assert f"resumed from step {ROUND_STEPS} of {ROUND_STEPS} (round 1/2)" in log
    assert f"resumed from step {s} of {ROUND_STEPS} (round 2/2)" in log


def test_sigkill_of_snakemake_then_unlock_resumes_round_2(runs: Runs) -> None:
    s = runs.events["snakemake_sigkill"]
    log = runs.events["finetune_log_after_snakemake_sigkill"]
    assert runs.events["finetune_sigkill"] < s < ROUND_STEPS
    assert "fingerprint differs" not in log
    assert f"resumed from step {s} of {ROUND_STEPS} (round 2/2)" in log


# ------------------------------------------------------------------------------------------------
# (b) the same results as the uninterrupted run


def _files(wd: Path) -> dict[str, Path]:
    base = wd / R
    return {p.relative_to(base).as_posix(): p for p in base.rglob("*")
            if p.is_file() and _is_final_output(p.relative_to(base).as_posix())}


def _same_tensors(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _same_tensors(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


def test_every_result_is_bit_identical_to_the_uninterrupted_run(runs: Runs) -> None:
    ref, got = _files(runs.reference), _files(runs.killed)
    assert ref.keys() == got.keys()
    assert {"flows/pretrain.pt", "flows/nfpi.pt", "flows/nfpi.jsonl", "metrics/nfpi.json"} <= ref.keys()
    for rel in sorted(ref):
        a, b = ref[rel], got[rel]
        if rel.endswith(".pt"):
            ck_a = torch.load(a, map_location="cpu", weights_only=True)
            ck_b = torch.load(b, map_location="cpu", weights_only=True)
            for ck in (ck_a, ck_b):
                if isinstance(ck, dict):
                    ck.pop("time", None)  # when the file was written
                    # the hash a rerun matches its resume state against: it includes the start checkpoint's
                    # bytes, so its time stamp (round 2 starts from round 1's file)
                    (ck.get("extra") or {}).pop("fingerprint", None)
            _same_tensors(_strip(ck_a), _strip(ck_b), rel)
        elif rel.endswith(".json"):
            assert _strip(json.loads(a.read_text())) == _strip(json.loads(b.read_text())), rel
        elif rel.endswith(".jsonl"):
            rows = [[_strip(json.loads(line)) for line in p.read_text().splitlines()] for p in (a, b)]
            assert rows[0] == rows[1], rel
        else:
            assert a.read_bytes() == b.read_bytes(), rel


# ------------------------------------------------------------------------------------------------
# (c) nothing half-written ever looked complete


def test_no_output_was_ever_visible_half_written(runs: Runs) -> None:
    for watcher in runs.watchers:
        assert watcher.seen
        for (invocation, rel), versions in watcher.seen.items():
            assert len(versions) == 1, f"{watcher.wd}: {rel} changed while visible in invocation {invocation}"
            for data in versions.values():
                _assert_complete(rel, data)


def test_the_watcher_flags_a_file_written_in_place(tmp_path: Path) -> None:
    """The check of (c) has teeth: an output appended in place (as flows/pretrain.jsonl used to be) shows
    two contents within one invocation, while an atomic rewrite in a later invocation does not count."""
    from nfpi.io import atomic_write_text

    watcher = Watcher(tmp_path)
    curve = tmp_path / R / "flows" / "pretrain.jsonl"
    curve.parent.mkdir(parents=True)
    curve.write_text('{"step": 4}\n')
    watcher.scan()
    with open(curve, "a") as fh:
        fh.write('{"step": 8}\n')
    watcher.scan()
    assert len(watcher.seen[(0, "flows/pretrain.jsonl")]) == 2
    watcher.invocation += 1
    atomic_write_text(tmp_path / R / "metrics" / "nfpi.json", "{}")
    watcher.scan()
    assert len(watcher.seen[(1, "metrics/nfpi.json")]) == 1
    assert (1, "flows/pretrain.jsonl") not in watcher.seen  # unchanged since it was last seen
