"""Block pairs on worker threads, never two that share a block at once (torch-free).

The heap-scan searches give each of T threads a block pair whose row blocks no other thread
holds, so no heap row is written by two threads, and each runs its GEMM single-threaded, then
its scan: the scans overlap the other workers' GEMMs instead of leaving cores idle, and no
OpenMP barrier waits on a descheduled thread. `threads.run_exclusive` is this with torch's
scratch buffers and torch single-threaded meanwhile; `cpu_allpairs` uses it as it is.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from typing import Any, Callable, Optional

__all__ = ["run_pairs_exclusive", "default_threads"]

Progress = Optional[Callable[[int, int], None]]


def default_threads() -> int:
    """Worker threads where the caller said nothing: torch's count if torch is loaded (torch's
    callers pass `threads.cpu_threads()` themselves), else OMP_NUM_THREADS, else the cores this
    process may run on."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return max(1, int(torch.get_num_threads()))
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def run_pairs_exclusive(pairs: list[tuple[int, int]], fn: Callable[[tuple[int, int], Any], None], T: int,
                        scratch: Callable[[], Any], progress: Progress) -> None:
    """Run fn(pair, scratch) for every pair on T threads (each with its own `scratch()`), never two
    pairs that share a block at the same time, taking pairs in list order where possible; the
    first error stops the rest and is raised here. Progress is reported from this thread. T <= 1
    runs the pairs in order in this thread (one scratch)."""
    if T <= 1:
        sbuf = scratch()
        for done, pair in enumerate(pairs, 1):
            fn(pair, sbuf)
            if progress is not None:
                progress(done, len(pairs))
        return
    pending = list(pairs)
    busy: set[int] = set()
    cond = threading.Condition()
    events: "queue.Queue[Optional[BaseException]]" = queue.Queue()
    failed: list[BaseException] = []

    def worker() -> None:
        try:
            sbuf = scratch()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            with cond:
                failed.append(e)
                cond.notify_all()
            events.put(e)
            return
        while True:
            with cond:
                while True:
                    if not pending or failed:
                        return
                    pick = next((p for p in pending if p[0] not in busy and p[1] not in busy), None)
                    if pick is not None:
                        pending.remove(pick)
                        busy.update(pick)
                        break
                    cond.wait()
            err: Optional[BaseException] = None
            try:
                fn(pick, sbuf)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                err = e
            with cond:
                busy.difference_update(pick)
                if err is not None:
                    failed.append(err)
                cond.notify_all()
            events.put(err)

    threads = [threading.Thread(target=worker, name=f"npclient-knn-{t}", daemon=True) for t in range(T)]
    try:
        for t in threads:
            t.start()
        for done in range(1, len(pairs) + 1):
            err = events.get()
            if err is not None:
                raise err
            if progress is not None:
                progress(done, len(pairs))
    finally:
        with cond:
            if len(failed) == 0 and pending:
                failed.append(RuntimeError("interrupted"))
            cond.notify_all()
        for t in threads:
            t.join()
