"""The resident workers: started once per cluster connection and kept for later jobs.

Starting an actor costs seconds (a process, torch, the compiled kernels), more than a whole
all-pairs of a 16k-row decoder, so actors outlive a job; each job sends its decoder by
reference (`PairWorker.run`). `shutdown_workers()` ends them; they also end with the driver.
"""

from __future__ import annotations

from typing import Any
__all__ = ["MAX_RESTARTS", "workers", "shutdown_workers", "forget"]

#: Restarts of a lost actor, and retries of the tile it was running.
MAX_RESTARTS = 3

_POOL: dict[tuple, list[Any]] = {}


def _key(ray: Any, per: float, n: int) -> tuple:
    ctx = ray.get_runtime_context()
    return (ctx.gcs_address, ctx.get_job_id(), per, n)


def workers(ray: Any, per: float, n: int) -> list[Any]:
    """`n` PairWorker actors holding `per` GPUs each (CPU actors of num_cpus=1 when per is 0),
    restarted on loss with their in-flight tile retried; reused while this process stays on
    the same cluster and asks for the same shape (another shape replaces them)."""
    from .actor import PairWorker

    key = _key(ray, per, n)
    found = _POOL.get(key)
    if found is not None:
        return found
    shutdown_workers()  # one shape at a time: a new one must not wait for CPUs/GPUs the old one holds
    opts: dict[str, Any] = {"max_restarts": MAX_RESTARTS, "max_task_retries": MAX_RESTARTS}
    opts.update({"num_gpus": per, "num_cpus": 0} if per > 0 else {"num_cpus": 1})
    Worker = ray.remote(PairWorker).options(**opts)
    actors = [Worker.remote(1) for _ in range(n)]
    ray.get([a.ready.remote() for a in actors])
    _POOL[key] = actors
    return actors


def _kill(ray: Any, actors: list[Any]) -> None:
    for a in actors:
        try:
            ray.kill(a)
        except Exception:  # noqa: BLE001 - already gone, or the cluster is down
            pass


def forget(ray: Any, per: float, n: int) -> None:
    """Kill and drop the workers of this shape (after a failure they could not survive)."""
    _kill(ray, _POOL.pop(_key(ray, per, n), []))


def shutdown_workers() -> None:
    """End every resident worker this process started."""
    import ray

    while _POOL:
        _kill(ray, _POOL.popitem()[1])
