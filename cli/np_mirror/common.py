"""Small helpers the commands share: opening the mirror, building a client, the global options."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from npclient.errors import InvalidOptionError

from .options import DEFAULT_WAIT_S
from .output import hint


class Globals:
    """What `np-mirror --db PATH --wait SECONDS CMD` set for this invocation (reset by `main`)."""

    db_path: Optional[Path] = None
    wait_s: float = DEFAULT_WAIT_S

    @classmethod
    def reset(cls) -> None:
        cls.db_path = None
        cls.wait_s = DEFAULT_WAIT_S


def resolve_db(db: Optional[Path]) -> Optional[Path]:
    """The command's own `--db`, else the global one (`np-mirror --db PATH CMD`), else None
    (the library's default, `$NP_MIRROR_HOME/mirror.duckdb`)."""
    return db if db is not None else Globals.db_path


def open_mirror(db: Optional[Path], *, read_only: bool, linger_s: float = 0.0):
    from npclient.mirror import Mirror

    return Mirror(resolve_db(db), read_only=read_only, linger_s=linger_s, wait_s=Globals.wait_s,
                  on_wait=lambda msg: hint(f"np-mirror: {msg}"))


def check_client_options(rate: Optional[float], concurrency: int) -> None:
    """The checks the options themselves make while parsing (options.py), for callers that
    build a client without going through them."""
    if rate is not None and rate <= 0:
        raise InvalidOptionError(f"rate must be > 0, got {rate}", option="rate")
    if concurrency < 1:
        raise InvalidOptionError(f"concurrency must be >= 1, got {concurrency}", option="concurrency")


def make_client(base_url: Optional[str], rate: Optional[float], concurrency: int):
    from npclient import NeuronpediaClient
    from npclient.http.pacing import DEFAULT_BUDGET, Budget

    check_client_options(rate, concurrency)
    budget = Budget.per_second(rate) if rate is not None else DEFAULT_BUDGET
    return NeuronpediaClient(base_url, budget=budget, concurrency=concurrency)
