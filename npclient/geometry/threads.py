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

from .exclusive import run_pairs_exclusive

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
    the same time (`exclusive.run_pairs_exclusive`), each thread with a float32 scratch tensor
    of `cap` elements. torch runs single-threaded meanwhile (each thread is one core's worth of
    GEMM); T <= 1 runs them in this thread with torch's own thread count."""
    scratch = lambda: torch.empty(cap, dtype=torch.float32)  # noqa: E731
    if T <= 1:
        run_pairs_exclusive(pairs, fn, T, scratch, progress)
        return
    with torch_single_threaded():
        run_pairs_exclusive(pairs, fn, T, scratch, progress)
