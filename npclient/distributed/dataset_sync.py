"""`dataset sync --engine ray`: each unit of work of `npclient.dataset.sync` as one Ray task.

A task runs `npclient.dataset.sync.execute`, the function the local engine runs in-process, so
the two engines write the same dataset. Tasks take one CPU each and are retried when their
worker dies (`max_retries`; Ray retries a task on worker or node loss, not on an exception
from our code, which is a real failure). A retried unit rewrites the same paths (a unit's path
depends only on the unit), so a retry never adds a row. The per-node cap on downloads is the
node's slot files (`exports_units.download_slot`): a lock dies with its process, so a killed
worker never keeps a slot, which a semaphore actor could not promise.

Kill tests: the driver's `NP_MIRROR_FAULT` goes to the tasks; the first worker process to claim
`<flag_dir>/armed` arms it, every other process (the retries included) runs unarmed, so one
chosen point kills one worker once and the retry finishes the job.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..errors import NPError
from ..faults import ENV as FAULT_ENV
from .cluster import connect, fault_spec

__all__ = ["ray_runner", "MAX_RETRIES", "RunInfo", "last_run"]

#: Retries of a task whose worker (or node) died.
MAX_RETRIES = 3


@dataclass
class RunInfo:
    """What the last `ray_runner` of this process did: tasks, and the fault's folder (kill tests
    read `<fault_dir>/armed` there: the pid of the worker that was armed)."""

    tasks: int = 0
    fault_dir: Optional[str] = None


last_run = RunInfo()


def _arm(fault: Optional[str], flag_dir: Optional[str]) -> None:
    """Arm this worker process for the job's fault if it is the first to claim it, else disarm."""
    if not fault or not flag_dir:
        os.environ.pop(FAULT_ENV, None)
        return
    mine = os.path.join(flag_dir, f"pid-{os.getpid()}")
    if os.path.exists(mine):
        return  # armed before, by an earlier task of this job in this process
    try:
        fd = os.open(os.path.join(flag_dir, "armed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        os.environ.pop(FAULT_ENV, None)
        return
    os.close(fd)
    with open(os.path.join(flag_dir, "armed"), "w") as fh:
        fh.write(str(os.getpid()))
    open(mine, "w").close()
    os.environ[FAULT_ENV] = fault


def run_task(what: str, kwargs: dict[str, Any], fault: Optional[str], flag_dir: Optional[str]) -> dict[str, Any]:
    """The body of every task: arm or disarm the fault, then the engine-neutral unit of work."""
    from ..dataset.sync import execute

    _arm(fault, flag_dir)
    return execute(what, kwargs)


def ray_runner(address: Optional[str] = None, *, body: Optional[Callable[..., dict[str, Any]]] = None
               ) -> Callable[[list, Callable[[dict[str, Any]], None]], None]:
    """A runner for `dataset_sync`: connects (or joins) the cluster now, so a missing Ray or an
    unreachable cluster is bad input before any work. `body(what, kwargs, fault, flag_dir)` is
    each task's function (default `run_task`; a test may wrap it)."""
    ray = connect(address)
    task = ray.remote(body or run_task).options(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)
    fault = fault_spec()
    flag_dir = tempfile.mkdtemp(prefix="np-mirror-fault-") if fault else None
    last_run.__dict__.update(RunInfo(fault_dir=flag_dir).__dict__)

    def run(calls: list, on_result: Callable[[dict[str, Any]], None]) -> None:
        pending = [task.remote(what, kwargs, fault, flag_dir) for what, kwargs in calls]
        last_run.tasks += len(pending)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                on_result(ray.get(ready[0]))
        except ray.exceptions.RayError as e:
            for ref in pending:
                ray.cancel(ref, force=False)
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise NPError(f"the Ray dataset sync failed: {type(e).__name__}: {first}") from e

    return run
