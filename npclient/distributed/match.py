"""`ray_match`: many cross-source matches (`topk_cosine(A, B, k)`, feature splitting across
widths, features carried across layers) run as calls on the resident Ray workers.

One pair is one call: the matmul of a pair is small next to an all-pairs of either source, so
splitting a pair would cost more in transfers than it saves; many pairs keep every worker busy.
Each decoder goes into Ray's object store once, however many pairs name it (adjacent layers
share every inner layer). A worker runs exactly the function the local `match` runs, on its own
device, so each pair's result is the local result. The workers are those of `ray_allpairs`
(`pool`): a session that ran an all-pairs matches on the same actors.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..errors import InvalidOptionError, NPError
from ..geometry.merge import TopK
from .cluster import actor_shape, connect, fault_spec
from .pool import forget, workers

__all__ = ["MatchJob", "MatchRun", "ray_match", "last_match"]


@dataclass(frozen=True)
class MatchJob:
    """One pair: the rows of `a` matched against `b`; `a_key`/`b_key` name the decoders so one
    held by several jobs is sent once."""

    a_key: Hashable
    a: Any
    b_key: Hashable
    b: Any


@dataclass
class MatchRun:
    """What the last `ray_match` in this process did: pairs, those run by a restarted worker, workers' pids."""

    pairs: int = 0
    restarted_pairs: int = 0
    pids: set = field(default_factory=set)


last_match = MatchRun()


def ray_match(jobs: Sequence[MatchJob], k: int, *, address: Optional[str] = None,
              num_gpus_per_actor: Optional[float] = None,
              on_result: Optional[Callable[[int, TopK], None]] = None) -> list[TopK]:
    """`topk_cosine(job.a, job.b, k)` of every job, in the jobs' order, computed by the resident
    workers (one per GPU, else one per CPU; a lost worker is restarted and its pair retried).
    `on_result(i, found)` is called as each pair finishes (in finishing order), so the caller
    can store and report it while the others run."""
    import torch

    if k < 1:
        raise InvalidOptionError(f"k must be >= 1, got {k}", option="k")
    for job in jobs:
        da, db = _width(job.a), _width(job.b)
        if da != db:
            raise InvalidOptionError(f"{job.a_key} has d_in {da} but {job.b_key} has {db}: they live in different "
                                     "spaces", option="pairs")
    if not jobs:
        return []
    ray = connect(address)
    per, n_actors = actor_shape(ray, num_gpus_per_actor)
    out: list[Optional[TopK]] = [None] * len(jobs)
    last_match.__dict__.update(MatchRun(pairs=len(jobs)).__dict__)
    try:
        actors = workers(ray, per, n_actors)
        refs: dict[Hashable, Any] = {}
        for job in jobs:
            for key, W in ((job.a_key, job.a), (job.b_key, job.b)):
                if key not in refs:
                    refs[key] = ray.put(_array(W))
        fault = fault_spec()
        pending = list(reversed(range(len(jobs))))
        running: dict[Any, tuple[Any, int]] = {}

        def submit(actor: Any) -> None:
            i = pending.pop()
            job = jobs[i]
            running[actor.match.remote([refs[job.a_key], refs[job.b_key]], int(k), fault)] = (actor, i)

        for a in actors:
            if pending:
                submit(a)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            a, i = running.pop(ready[0])
            vals, idx, who = ray.get(ready[0])
            last_match.restarted_pairs += int(who["restarted"])
            last_match.pids.add(who["pid"])
            out[i] = TopK(torch.from_numpy(np.array(vals)), torch.from_numpy(np.array(idx)))
            if on_result is not None:
                on_result(i, out[i])
            if pending:
                submit(a)
    except ray.exceptions.RayError as e:
        forget(ray, per, n_actors)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise NPError(f"the Ray match failed: {type(e).__name__}: {first}") from e
    return [o for o in out if o is not None]


def _width(W: Any) -> int:
    shape = tuple(W.shape)
    return int(shape[-1])


def _array(W: Any) -> np.ndarray:
    """A float32 numpy array of a decoder (a memory-mapped tensor is read once, here)."""
    import torch

    if isinstance(W, torch.Tensor):
        return np.ascontiguousarray(W.detach().float().cpu().numpy())
    return np.ascontiguousarray(np.asarray(W, dtype=np.float32))
