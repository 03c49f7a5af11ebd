"""Where np-mirror keeps things: `$NP_MIRROR_HOME` (default `~/.cache/np-mirror`)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("NP_MIRROR_HOME") or Path.home() / ".cache" / "np-mirror").expanduser()


def default_db_path() -> Path:
    return home() / "mirror.duckdb"


def http_cache_dir() -> Path:
    return home() / "http-cache"


def exports_dir() -> Path:
    return home() / "exports"
