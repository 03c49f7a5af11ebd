"""Sync progress on stderr, and the end-of-run summary.

On a terminal: a rich progress bar. Anywhere else (a log file, a pipe, CI, `nohup`): a plain
line at most every `every_s` seconds with counts, speed and ETA, never a carriage return, so a
long sync is visibly alive in its log and the log stays readable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, Optional, TextIO

#: Seconds between two plain progress lines when stderr is not a terminal.
EVERY_S = 5.0

_WINDOWS = {1: "this second", 60: "this minute", 3600: "this hour", 86400: "today"}


def budget_text(event: Any) -> str:
    """What the budget number means: requests the client may still send in its window."""
    if event.budget_remaining is None:
        return ""
    window = event.budget_window_s or 0
    span = _WINDOWS.get(int(window)) if window == int(window) else None
    return f"{event.budget_remaining:,} requests left " + (span or f"in this {window:g}-second window")


def duration_text(seconds: float) -> str:
    """`45 s`, `12 min`, `2 h 05 min`: an ETA as a person reads it."""
    if seconds < 60:
        return f"{max(0, seconds):.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min"


def waiting_text(event: Any) -> str:
    """`rate limit: waiting until 14:05` (local time), or '' when nothing waits."""
    if not event.waiting_until:
        return ""
    import time

    stamp = time.strftime("%H:%M:%S" if event.waiting_until - time.time() < 120 else "%H:%M",
                          time.localtime(event.waiting_until))
    return f"{event.waiting_reason or 'rate limit'}: waiting until {stamp}"


class SyncDisplay:
    """The display a sync reports to (`update` per progress event, `summary` at the end).

    `stream`, `tty` and `clock` are for tests: a fake clock drives the plain lines without
    waiting for them."""

    def __init__(self, enabled: bool = True, *, stream: Optional[TextIO] = None, tty: Optional[bool] = None,
                 clock: Callable[[], float] = time.monotonic, every_s: float = EVERY_S) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.enabled = enabled and self.tty
        self.quiet = not enabled
        self.clock = clock
        self.every_s = every_s
        self._progress: Any = None
        self._tasks: dict[Any, Any] = {}
        self._said_waiting: Any = None
        self._first: dict[Any, tuple[float, int]] = {}  # source -> (clock, done) at its first event
        self._latest: dict[Any, Any] = {}
        self._changed: list[Any] = []
        self._last_line: Optional[float] = None

    def __enter__(self) -> "SyncDisplay":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[extra]}"),
                console=Console(file=self.stream),
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _say(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def plan(self, plans: Any) -> None:
        """Before any feature request: what `--scores` will cost in requests and budget."""
        needed = sum(p.scores_needed or 0 for p in plans)
        if not any(p.scores_needed is not None for p in plans):
            return
        minutes = needed / 25_000 * 60
        print(f"np-mirror: --scores: {needed:,} features need one GET each "
              f"({needed:,} requests, about {minutes:.0f} min of Neuronpedia's 25,000-an-hour budget)",
              file=self.stream)

    def update(self, event: Any) -> None:
        waiting = waiting_text(event)
        if self._progress is None:
            if not self.quiet:
                self._plain(event, waiting)
            return
        task = self._tasks.get(event.source)
        budget = budget_text(event)
        extra = waiting or (f"failed {event.failed}" + (f" · {budget}" if budget else ""))
        if task is None:
            task = self._progress.add_task(str(event.source), total=event.total, rate="", extra=extra)
            self._tasks[event.source] = task
        self._progress.update(task, completed=event.done, extra=extra)
        speed = self._progress.tasks[task].speed
        self._progress.update(task, rate=f"{speed:.0f} feat/s" if speed else "")

    def _plain(self, event: Any, waiting: str) -> None:
        """No bar (not a terminal): a line per source that moved, at most every `every_s`
        seconds, and once per wait why nothing moves."""
        now = self.clock()
        self._first.setdefault(event.source, (now, event.done))
        self._latest[event.source] = event
        if event.source not in self._changed:
            self._changed.append(event.source)
        if self._last_line is None:
            self._last_line = now
        if waiting and waiting != self._said_waiting:
            self._say(f"np-mirror: {event.source}: {waiting} ({event.done:,}/{event.total:,} done)")
        self._said_waiting = waiting
        if now - self._last_line < self.every_s:
            return
        self._last_line = now
        for source in self._changed:
            self._say(self.progress_line(self._latest[source], now))
        self._changed = []

    def progress_line(self, event: Any, now: float) -> str:
        """`np-mirror: SRC: 1,234/24,576 features (5%), 120 feat/s, ETA 3 min; failed 0; 22,100 requests left this hour`."""
        started, done0 = self._first.get(event.source, (now, event.done))
        share = f" ({event.done / event.total:.0%})" if event.total else ""
        parts = [f"np-mirror: {event.source}: {event.done:,}/{event.total:,} features{share}"]
        elapsed = now - started
        if elapsed > 0 and event.done > done0:
            speed = (event.done - done0) / elapsed
            parts.append(f", {speed:,.0f} feat/s, ETA {duration_text(max(0, event.total - event.done) / speed)}")
        parts.append(f"; failed {event.failed:,}")
        budget = budget_text(event)
        if budget:
            parts.append(f"; {budget}")
        return "".join(parts)

    def summary(self, summary: Any) -> None:
        lines = []
        for s in summary.sources:
            failed = ", ".join(f"{k}: {v}" for k, v in sorted(s.failed.items())) or "none"
            if s.export_note:
                # the plan's note already says "exports: ..." or "API: ..." (with its numbers)
                note = s.export_note if s.export_note.startswith(("exports:", "API:")) else f"export: {s.export_note}"
                lines.append(f"{s.source}: {note}" + (f"; {s.imported} features imported" if s.imported else ""))
            for key, reason in sorted(s.export_failed.items()):
                lines.append(f"  export file failed: {key}: {reason}")
            lines.append(
                f"{s.source}: {s.fetched} fetched, {s.already_present} already present"
                + (f", {s.skipped_failed} known 404 skipped" if s.skipped_failed else "")
                + f", failed: {failed}"
            )
        lines.append(f"{summary.requests} requests in {summary.seconds:.1f} s (run {summary.run_id})")
        self._say("\n".join(lines))
