"""CPU threads of the geometry search: torch's process-wide thread count, made explicit.

The heap-scan searches run T worker threads (T = the caller's `torch.get_num_threads()`), each
doing single-threaded GEMMs and scans on block pairs that share no heap row
(`run_exclusive`): the scans overlap the other workers' GEMMs instead of leaving cores idle,
and no OpenMP barrier waits on a descheduled thread. For that, torch must run single-threaded
while the workers run, and `torch.set_num_threads` is process-wide: `torch_single_threaded()`
is the one place that changes it.

    with torch_single_threaded() as caller_threads:   # torch.get_num_threads() == 1 inside
        ...                                           # restored on exit, also on error

Nested and concurrent uses (two searches on two threads) share one saved value, restored when
the last one leaves; meanwhile `cpu_threads()` still answers the caller's count, not the 1 set
here. Any other torch work in the process runs single-threaded for that time too.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch

__all__ = ["cpu_threads", "run_exclusive", "torch_single_threaded"]

Progress = Optional[Callable[[int, int], None]]

_THREADS_LOCK = threading.Lock()
_THREADS_STATE = {"depth": 0, "saved": 0}


def cpu_threads() -> int:
    """torch's thread count as the caller set it (not the 1 that a running search set)."""
    with _THREADS_LOCK:
        return _THREADS_STATE["saved"] if _THREADS_STATE["depth"] else torch.get_num_threads()


@contextmanager
def torch_single_threaded() -> Iterator[int]:
    """torch single-threaded inside the block (`torch.set_num_threads(1)`, process-wide), the
    caller's thread count restored when the last nested or concurrent user leaves. Yields the
    caller's thread count."""
    with _THREADS_LOCK:
        if _THREADS_STATE["depth"] == 0:
            _THREADS_STATE["saved"] = torch.get_num_threads()
            torch.set_num_threads(1)
        _THREADS_STATE["depth"] += 1
        saved = _THREADS_STATE["saved"]
    try:
        yield saved
    finally:
        with _THREADS_LOCK:
            _THREADS_STATE["depth"] -= 1
            if _THREADS_STATE["depth"] == 0:
                torch.set_num_threads(_THREADS_STATE["saved"])


def run_exclusive(pairs: list[tuple[int, int]], fn: Callable, T: int, cap: int, progress: Progress) -> None:
    """Run fn(pair, scratch) for every pair on T threads, never two pairs that share a block at
    the same time, taking pairs in list order where possible. torch runs single-threaded
    meanwhile (each thread is one core's worth of GEMM); progress is reported from this thread."""
    import queue

    pending = list(pairs)
    busy: set[int] = set()
    cond = threading.Condition()
    events: "queue.Queue[Optional[BaseException]]" = queue.Queue()
    failed: list[BaseException] = []

    def worker() -> None:
        sbuf = torch.empty(cap, dtype=torch.float32)
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
    with torch_single_threaded():
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
