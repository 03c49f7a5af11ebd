"""What every benchmark prints about the machine it ran on (imported by the bench_*.py scripts)."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 0


def versions(dists: list[str], *, say_absent: bool = True) -> list[str]:
    """`name version` for each installed distribution; `name absent` (or nothing) for the rest."""
    out = []
    for dist in dists:
        try:
            out.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            if say_absent:
                out.append(f"{dist} absent")
    return out


def git_head() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip() or "no commit"
    return "unknown"


def time_calls(owner: object, name: str, label: str, marks: dict[str, float]) -> None:
    """Wrap `owner.name` so that each call adds its wall seconds to `marks[label]`: the per-phase
    view of a run, summed over calls. A name `owner` lacks is left alone."""
    f = getattr(owner, name, None)
    if f is None:
        return

    @functools.wraps(f)
    def timed(*a, **kw):
        t = time.perf_counter()
        try:
            return f(*a, **kw)
        finally:
            marks[label] = marks.get(label, 0.0) + time.perf_counter() - t

    setattr(owner, name, timed)
