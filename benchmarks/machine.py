"""What every benchmark prints about the machine it ran on (imported by the bench_*.py scripts)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import subprocess
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
