"""The sync progress bar (rich, on stderr) and the end-of-run summary."""

from __future__ import annotations

import sys
from typing import Any


class SyncDisplay:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._progress: Any = None
        self._tasks: dict[Any, Any] = {}

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

    def update(self, event: Any) -> None:
        if self._progress is None:
            return
        task = self._tasks.get(event.source)
        extra = f"failed {event.failed}" + (f" · budget {event.budget_remaining}" if event.budget_remaining is not None else "")
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
                lines.append(f"{s.source}: export: {s.export_note}" + (f"; {s.imported} features imported" if s.imported else ""))
            for key, reason in sorted(s.export_failed.items()):
                lines.append(f"  export file failed: {key}: {reason}")
            lines.append(
                f"{s.source}: {s.fetched} fetched, {s.already_present} already present"
                + (f", {s.skipped_failed} known 404 skipped" if s.skipped_failed else "")
                + f", failed: {failed}"
            )
        lines.append(f"{summary.requests} requests in {summary.seconds:.1f} s (run {summary.run_id})")
        print("\n".join(lines), file=sys.stderr)
