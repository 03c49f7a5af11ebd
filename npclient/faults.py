"""Named fault points: a process kills itself at a chosen point, so kill tests need no luck.

`NP_MIRROR_FAULT=write_batch.before_commit:3` makes the process SIGKILL itself the third
time it reaches that point (`:N` defaults to 1). Points sit where an interruption matters:
inside a transaction before its commit, and right after a commit; in the Parquet dataset
(`npclient/dataset/units.py`), `dataset.before_rename` (a unit's temp file written, not yet in
place) and `dataset.before_marker` (the file in place, its commit marker not yet written). With
the variable unset,
`point()` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

__all__ = ["point", "ENV", "POINTS"]

ENV = "NP_MIRROR_FAULT"
_hits: dict[str, int] = {}

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
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
