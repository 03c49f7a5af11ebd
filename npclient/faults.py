"""Named fault points: a process kills itself at a chosen point, so kill tests need no luck.

`NP_MIRROR_FAULT=write_batch.before_commit:3` makes the process SIGKILL itself the third
time it reaches that point (`:N` defaults to 1; hits from threads are counted one by one).
Points sit where an interruption matters: inside a transaction before its commit, and right
after a commit (`write_batch.*` in `store/writer.py`, `import.*` for each export file in
`store/importer.py`); in the Parquet dataset
(`npclient/dataset/units.py`), `dataset.before_rename` (a unit's temp file written, not yet in
place) and `dataset.before_marker` (the file in place, its commit marker not yet written). With
the variable unset,
`point()` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["point", "ENV", "POINTS"]

ENV = "NP_MIRROR_FAULT"
_hits: dict[str, int] = {}
_hits_lock = threading.Lock()

#: The dataset's points (the store's are named where they sit in `store/writer.py`).
POINTS = ("dataset.before_rename", "dataset.before_marker")

# -- points in Ray workers (npclient.distributed); the driver hands NP_MIRROR_FAULT to them, and
# a restarted actor does not fire its point again (it would die on every restart)
#: a Ray all-pairs actor, after its N-th block pair
RAY_ACTOR_PAIR = "ray.actor.pair"


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(ENV, "")
    if not spec:
        return None
    name, _, count = spec.partition(":")
    return name.strip(), int(count) if count.strip().isdigit() else 1


def point(name: str) -> None:
    """Reached `name`: die here if `NP_MIRROR_FAULT` names it and this is the chosen hit."""
    target = _target()
    if target is None or target[0] != name:
        return
    with _hits_lock:  # two importer threads may reach a point at once: each hit counts
        _hits[name] = hit = _hits.get(name, 0) + 1
    if hit == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
