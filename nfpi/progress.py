"""Progress of long loops: a tqdm bar on a terminal, rate-bounded log lines in a log file.

Every loop a user can wait on (FPI iterations, flow and classifier training, extraction batches,
sampling, t-SNE, latent OT, flowfactor, NF augmentation, evaluation) reports through this one
helper, used the same way everywhere::

    for x, y in progress(batches, desc="extract train", unit="batch", logger=log):
        ...

    with progress(total=max_iter, desc="FPI lam=1", unit="it", logger=log) as p:
        for it in range(max_iter):
            ...
            p.update()
            p.set(residual=res)      # shown in the bar / the next log line

Where the output goes (``mode``):

* ``"bar"``: a tqdm bar on stderr, when stderr is a terminal (an interactive run);
* ``"log"``: under Snakemake and SLURM stderr is a log file, where a redrawn bar is noise; the
  helper logs ``desc: n/total unit (pct) | rate | elapsed | ETA | postfix`` through ``logger`` at
  a bounded rate: the first line once ``delay`` seconds have passed, then at most one line every
  ``interval`` seconds, and a last line when the loop ends (always when a line was already
  written, otherwise only with ``leave=True``; inner loops pass ``leave=False``);
* ``"off"``: nothing (on a non-zero rank under torchrun, or with ``disable=True``).

``NFPI_PROGRESS=bar|log|off`` overrides the choice (``1`` means ``bar``), and
``NFPI_PROGRESS_INTERVAL`` (seconds, default 30) the log interval.  The cost per update is one
integer add and one clock read in log mode (tqdm's own in bar mode); docs/bench/progress.md measured
it against an FPI solve.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

__all__ = ["Progress", "progress", "progress_mode", "format_seconds", "DEFAULT_INTERVAL"]

T = TypeVar("T")
Mode = Literal["bar", "log", "off"]

#: Seconds between two log lines (``NFPI_PROGRESS_INTERVAL`` overrides it).
DEFAULT_INTERVAL = 30.0
#: Seconds before the first log line / before a bar appears (loops shorter than this print one last line).
DEFAULT_DELAY = 1.0

_default_logger = logging.getLogger("nfpi.progress")


def _is_main_rank() -> bool:
    """False on a non-zero rank of a torchrun job (``RANK`` set by torchrun); rank 0 reports for all."""
    rank = os.environ.get("RANK", "")
    try:
        return int(rank or 0) == 0
    except ValueError:
        return True


def progress_mode(stream: Any = None, *, disable: bool = False) -> Mode:
    """Where progress goes: ``"bar"`` on a terminal, ``"log"`` otherwise, ``"off"`` if disabled or not rank 0.

    ``NFPI_PROGRESS`` (``bar``/``1``, ``log``, ``off``/``0``) overrides the terminal test but not
    ``disable`` nor the rank.
    """
    if disable or not _is_main_rank():
        return "off"
    env = os.environ.get("NFPI_PROGRESS", "").strip().lower()
    if env in ("bar", "1", "tqdm"):
        return "bar"
    if env == "log":
        return "log"
    if env in ("off", "0", "none"):
        return "off"
    stream = sys.stderr if stream is None else stream
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or fake stream
        tty = False
    return "bar" if tty else "log"


def _env_interval() -> float:
    raw = os.environ.get("NFPI_PROGRESS_INTERVAL", "")
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value > 0 else DEFAULT_INTERVAL


def format_seconds(s: float) -> str:
    """``12.3s`` under a minute, ``M:SS`` under an hour, ``H:MM:SS`` beyond; ``?`` when unknown."""
    if not math.isfinite(s) or s < 0:
        return "?"
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _format_value(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (float, int)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.4g}"


def _format_rate(rate: float, unit: str) -> str:
    if rate <= 0 or not math.isfinite(rate):
        return f"? {unit}/s"
    if rate >= 1:
        return f"{rate:.3g} {unit}/s"
    return f"{1 / rate:.3g} s/{unit}"


class Progress(Generic[T]):
    """One loop's progress (see the module doc); build it with :func:`progress`.

    Iterate over it to wrap an iterable (one update per item), or call :meth:`update` yourself;
    :meth:`set` attaches values shown after the counts (e.g. the FPI residual).  A context manager
    (and exhausting the iterator) closes it, writing the last log line.
    """

    def __init__(
        self,
        iterable: Iterable[T] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        logger: logging.Logger | None = None,
        interval: float | None = None,
        delay: float = DEFAULT_DELAY,
        leave: bool = True,
        disable: bool = False,
        mode: Mode | None = None,
        clock: Callable[[], float] = time.monotonic,
        stream: Any = None,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            try:
                total = len(iterable) + initial  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.initial = initial
        self.logger = logger if logger is not None else _default_logger
        self.interval = float(interval) if interval is not None else _env_interval()
        self.leave = leave
        self.mode: Mode = mode if mode is not None else progress_mode(stream, disable=disable)
        if mode is not None and (disable or not _is_main_rank()):
            self.mode = "off"
        self.postfix: dict[str, Any] = {}
        self.lines = 0  # log lines written
        self.closed = False
        self._clock = clock
        self._t0 = clock()
        # the first line is due `delay` s after the start, later ones `interval` s after the previous
        self._next = self._t0 + max(0.0, float(delay))
        self._bar: Any = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True,
                             delay=max(0.0, float(delay)), leave=leave,
                             file=stream if stream is not None else sys.stderr)

    # -- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("progress(total=...) without an iterable: call .update() instead of iterating")
        try:
            if self.mode == "off":
                yield from self.iterable
                return
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("progress over an iterable of unknown length")
        return self.total - self.initial

    # -- reporting ---------------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        """Count ``n`` more units; writes a log line if one is due."""
        self.n += n
        if self.mode == "log":
            now = self._clock()
            # at the total the closing line follows at once: no line just before it
            if now >= self._next and (self.total is None or self.n < self.total):
                self._emit(now)
        elif self._bar is not None:
            self._bar.update(n)

    def set(self, **postfix: Any) -> None:
        """Values shown after the counts (floats to 4 significant digits); replaces earlier ones of the same name."""
        if self.mode == "off":
            return
        self.postfix.update(postfix)
        if self._bar is not None:
            self._bar.set_postfix({k: _format_value(v) for k, v in self.postfix.items()}, refresh=False)

    def line(self, now: float | None = None, *, final: bool = False) -> str:
        """The log line for the current state (what ``log`` mode writes)."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._t0, 0.0)
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else float("nan")
        parts = []
        if self.total:
            parts.append(f"{self.n}/{self.total} {self.unit} ({100.0 * self.n / self.total:.0f}%)")
        else:
            parts.append(f"{self.n} {self.unit}")
        parts.append(_format_rate(rate, self.unit))
        parts.append(f"elapsed {format_seconds(elapsed)}")
        if not final and self.total:
            left = (self.total - self.n) / rate if rate > 0 else float("nan")
            parts.append(f"ETA {format_seconds(left)}")
        if self.postfix:
            parts.append(" ".join(f"{k}={_format_value(v)}" for k, v in self.postfix.items()))
        head = f"{self.desc}: " if self.desc else ""
        return head + ("done " if final else "") + " | ".join(parts)

    def _emit(self, now: float, *, final: bool = False) -> None:
        self.logger.info("%s", self.line(now, final=final))
        self.lines += 1
        self._next = now + self.interval

    def close(self) -> None:
        """End the loop: the last log line (see ``leave``), or close the bar.  Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.mode == "log" and (self.leave or self.lines):
            self._emit(self._clock(), final=True)
        elif self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None and self.mode == "log":
            self.closed = True  # the error is what the log must end with, not a "done" line
            return
        self.close()


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> Progress[T]:
    """A :class:`Progress` over ``iterable`` (or over ``total=`` units counted with ``.update()``).

    Keyword arguments: ``total``, ``desc``, ``unit``, ``initial``, ``logger`` (the stage's logger;
    default ``nfpi.progress``), ``interval`` (s between log lines), ``delay`` (s before the first
    line or bar), ``leave`` (a last line even for a short loop), ``disable``, ``mode``, ``clock``
    (a ``time.monotonic``-like callable; tests inject a fake one) and ``stream`` (the terminal test
    and the bar's output; default stderr).
    """
    return Progress(iterable, **kwargs)
