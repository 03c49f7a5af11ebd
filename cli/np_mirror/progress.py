"""The sync progress bar (rich, on stderr) and the end-of-run summary."""

from __future__ import annotations

import sys
from typing import Any


def budget_text(event: Any) -> str:
    """What the budget number means: requests the client may still send in its window."""
    if event.budget_remaining is None:
        return ""
    window = event.budget_window_s or 0
    span = "this hour" if window == 3600 else f"these {window:g} s"
    return f"{event.budget_remaining:,} requests left {span}"


def waiting_text(event: Any) -> str:
    """`rate limit: waiting until 14:05` (local time), or '' when nothing waits."""
    if not event.waiting_until:
        return ""
    import time

    stamp = time.strftime("%H:%M:%S" if event.waiting_until - time.time() < 120 else "%H:%M",
                          time.localtime(event.waiting_until))
    return f"{event.waiting_reason or 'rate limit'}: waiting until {stamp}"


class SyncDisplay:
    def __init__(self, enabled: bool = True) -> None:
        self.tty = sys.stderr.isatty()
        self.enabled = enabled and self.tty
        self.quiet = not enabled
        self._progress: Any = None
        self._tasks: dict[Any, Any] = {}
        self._said_waiting: Any = None

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
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def plan(self, plans: Any) -> None:
        """Before any feature request: what `--scores` will cost in requests and budget."""
        needed = sum(p.scores_needed or 0 for p in plans)
        if not any(p.scores_needed is not None for p in plans):
            return
        minutes = needed / 25_000 * 60
        print(f"np-mirror: --scores: {needed:,} features need one GET each "
              f"({needed:,} requests, about {minutes:.0f} min of Neuronpedia's 25,000-an-hour budget)",
              file=sys.stderr)

    def update(self, event: Any) -> None:
        waiting = waiting_text(event)
        if self._progress is None:
            # No bar (not a terminal): still say once per wait why nothing moves.
            if waiting and not self.quiet and waiting != self._said_waiting:
                print(f"np-mirror: {event.source}: {waiting} ({event.done:,}/{event.total:,} done)", file=sys.stderr)
            self._said_waiting = waiting
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
        print("\n".join(lines), file=sys.stderr)
