"""nfpi.progress: terminal vs log file, rate-bounded log lines (fake clock, no sleeping), postfix, totals."""

from __future__ import annotations

import io
import logging

import pytest

from nfpi.progress import Progress, format_seconds, progress, progress_mode


class FakeClock:
    """A settable monotonic clock: tests advance it instead of sleeping."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def logger(caplog: pytest.LogCaptureFixture) -> logging.Logger:
    caplog.set_level(logging.INFO, logger="test.progress")
    return logging.getLogger("test.progress")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("NFPI_PROGRESS", "NFPI_PROGRESS_INTERVAL", "RANK"):
        monkeypatch.delenv(k, raising=False)


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.progress"]


def test_mode_follows_the_terminal_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert progress_mode(Tty()) == "bar"
    assert progress_mode(io.StringIO()) == "log"  # a log file (Snakemake's log:, SLURM's output)
    assert progress_mode(Tty(), disable=True) == "off"
    monkeypatch.setenv("NFPI_PROGRESS", "log")
    assert progress_mode(Tty()) == "log"
    monkeypatch.setenv("NFPI_PROGRESS", "1")
    assert progress_mode(io.StringIO()) == "bar"
    monkeypatch.setenv("NFPI_PROGRESS", "off")
    assert progress_mode(Tty()) == "off"


def test_non_zero_rank_is_silent(monkeypatch: pytest.MonkeyPatch, logger: logging.Logger,
                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("RANK", "1")
    assert progress_mode(Tty()) == "off"
    p = progress(range(5), desc="rank1", logger=logger, mode="log", stream=io.StringIO())
    assert p.mode == "off"  # an explicit mode does not override the rank
    assert list(p) == list(range(5))
    assert lines(caplog) == []
    monkeypatch.setenv("RANK", "0")
    assert progress_mode(io.StringIO()) == "log"


def test_log_lines_are_rate_bounded(logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    p = progress(total=800, desc="fpi", unit="it", logger=logger, interval=10.0, delay=1.0, clock=clock,
                 stream=io.StringIO())
    assert p.mode == "log"
    # 800 updates, 1/8 s apart (exact in binary): 100 s in all -> the first line after 1 s, then one per
    # 10 s, then the last
    for _ in range(800):
        clock.t += 0.125
        p.update()
    p.close()
    got = lines(caplog)
    assert len(got) == 11, got  # at 1, 11, ..., 91 s and the last at 100 s
    assert got[0].startswith("fpi: 8/800 it (1%) | 8 it/s | elapsed 1.0s | ETA 1:39")  # 792 left at 8 it/s
    assert got[1].startswith("fpi: 88/800 it (11%)")  # 10 s later
    assert got[-1].startswith("fpi: done 800/800 it (100%)")
    assert "ETA" not in got[-1] and "elapsed 1:40" in got[-1]
    p.close()  # idempotent: no second last line
    assert len(lines(caplog)) == len(got)


def test_a_burst_of_updates_writes_no_more_lines(logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    p = progress(total=10**6, logger=logger, interval=30.0, delay=0.0, clock=clock, stream=io.StringIO())
    for _ in range(100_000):  # no time passes: one line (the first), however many updates
        p.update()
    assert len(lines(caplog)) == 1
    clock.t += 29.9
    p.update()
    assert len(lines(caplog)) == 1
    clock.t += 0.2
    p.update()
    assert len(lines(caplog)) == 2


def test_no_periodic_line_right_before_the_last(logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    p = progress(total=2, desc="x", logger=logger, delay=0.0, interval=1.0, clock=clock, stream=io.StringIO())
    clock.t += 5
    p.update()
    clock.t += 5
    p.update()  # due, but this is the last unit: close() writes the line
    p.close()
    assert [g.split(" |")[0] for g in lines(caplog)] == ["x: 1/2 it (50%)", "x: done 2/2 it (100%)"]


def test_postfix_is_shown(logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    with progress(total=3, desc="FPI lam=1", logger=logger, delay=0.0, clock=clock, stream=io.StringIO()) as p:
        clock.t += 1.0
        p.set(residual=1.234567e-5, status="ok")
        p.update()
        clock.t += 1.0
        p.set(residual=2.5e-9)
        p.update()
    got = lines(caplog)
    assert "residual=1.235e-05 status=ok" in got[0]
    assert got[-1].endswith("residual=2.5e-09 status=ok")


def test_unknown_total(logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()

    def gen():  # a generator has no length
        for i in range(4):
            clock.t += 2.0
            yield i

    p = progress(gen(), desc="batches", unit="batch", logger=logger, delay=0.0, interval=1.0, clock=clock,
                 stream=io.StringIO())
    assert p.total is None
    assert list(p) == [0, 1, 2, 3]
    got = lines(caplog)
    assert got[0] == "batches: 1 batch | 2 s/batch | elapsed 2.0s"
    assert all("ETA" not in g and "%" not in g for g in got)
    assert got[-1].startswith("batches: done 4 batch")


def test_iterable_total_initial_and_short_loops(logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    # a resumed loop: steps 5..9 of 10
    p = progress(range(5, 10), initial=5, total=10, desc="train", logger=logger, clock=clock, stream=io.StringIO())
    assert list(p) == list(range(5, 10))
    assert lines(caplog) == ["train: done 10/10 it (100%) | ? it/s | elapsed 0.0s"]  # a fast loop: one line
    caplog.clear()
    # an inner loop with leave=False writes nothing when it ends before the first line is due
    assert list(progress([1, 2], logger=logger, leave=False, clock=clock, stream=io.StringIO())) == [1, 2]
    assert lines(caplog) == []
    assert len(progress([1, 2, 3], logger=logger, stream=io.StringIO())) == 3


def test_error_inside_the_loop_writes_no_done_line(logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(RuntimeError):
        with progress(total=3, logger=logger, stream=io.StringIO()) as p:
            p.update()
            raise RuntimeError("boom")
    assert lines(caplog) == []


def test_bar_on_a_terminal(logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    tty = Tty()
    p = progress(range(20), desc="extract", unit="batch", logger=logger, delay=0.0, stream=tty)
    assert p.mode == "bar"
    for i in p:
        p.set(loss=0.5)
    out = tty.getvalue()
    assert "extract" in out and "20/20" in out and "loss=0.5" in out
    assert lines(caplog) == []  # a bar, not log lines


def test_off_mode_is_transparent(logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    p = Progress(iter("abc"), disable=True, logger=logger)
    p.set(x=1)
    assert list(p) == ["a", "b", "c"]
    assert lines(caplog) == [] and p.postfix == {}


def test_update_without_iterable_cannot_be_iterated() -> None:
    with pytest.raises(TypeError, match="update"):
        iter(progress(total=3, stream=io.StringIO())).__next__()


@pytest.mark.parametrize(("s", "text"), [(0.04, "0.0s"), (12.34, "12.3s"), (99, "1:39"), (3725, "1:02:05"),
                                          (float("nan"), "?"), (-1, "?")])
def test_format_seconds(s: float, text: str) -> None:
    assert format_seconds(s) == text
