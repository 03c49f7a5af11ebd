"""The worker of a distributed all-pairs: keeps the unit decoder resident and runs tiles.

`PairWorker` is a plain class; `allpairs` wraps it with `ray.remote` (one actor per GPU, or
per CPU) with restarts, so a lost worker is rebuilt from the same decoder object and its
in-flight tile retried: a tile returns its partial result and keeps no state, so a retry
gives the same rows. The fault point `ray.actor.pair` (`NP_MIRROR_FAULT=ray.actor.pair:N` in
the driver, handed to the worker with each tile) kills the worker after its N-th block pair
from then on; a restarted worker does not fire it again.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

import torch

from .. import faults
from ..geometry.device import resolve_dtype
from ..geometry.heap_kernel import _numba_scan
from .pairs import Pair, Partial, run_tile

__all__ = ["PairWorker", "FAULT_POINT"]

FAULT_POINT = faults.RAY_ACTOR_PAIR


class PairWorker:
    """Keeps the unit rows U (all valid) of the current job on its device; `run` returns a tile's `Partial`.

    The decoder arrives by reference with each tile and is fetched once per job (by `key`), so
    it stays resident across tiles and jobs, and a restarted worker reloads it by itself."""

    def __init__(self, threads: int = 1) -> None:
        import ray

        torch.set_num_threads(max(1, int(threads)))
        on_gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
        self.device = torch.device("cuda") if on_gpu else torch.device("cpu")
        self.heap = self.device.type == "cpu" and _numba_scan() is not None
        self.restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        self.key: Any = None
        self.U = torch.empty(0)
        self.low: Optional[torch.Tensor] = None  # U in the job's low-precision dtype, made once per job
        # warm the kernels (numba's first call) here, at start-up, not in the first tile
        warm = torch.nn.functional.normalize(torch.ones(8, 4, device=self.device) + torch.eye(8, 4, device=self.device), dim=1)
        run_tile(warm, [(0, 0)], 8, 2, heap=self.heap)

    def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "device": str(self.device), "restarted": self.restarted}

    def run(self, U_box: list, key: Any, k: int, block: int, pairs: list[Pair],
            fault: Optional[str] = None, dtype: str = "float32", prefilter: bool = False) -> tuple[Partial, dict[str, Any]]:
        """The partial top-k of tile `pairs` of the decoder in `U_box` ([ObjectRef]; job `key`).
        `fault`: the driver's NP_MIRROR_FAULT, set here for `faults.point`. `dtype`: the matmul
        dtype (bfloat16/float16 select with the torch dense path, as the local engine does).
        `prefilter` (float32, heap scan): the candidates' approximate top-k from bfloat16 products,
        which the driver rescores exactly (`geometry.prefilter`), as the local engine does."""
        _set_fault(fault)
        t0 = time.perf_counter()
        if key != self.key:
            import ray

            self.U, self.low = torch.empty(0), None
            self.U = torch.tensor(ray.get(U_box[0]), dtype=torch.float32, device=self.device)  # one copy, resident
            self.key = key
        dt = resolve_dtype(dtype, self.device)
        prefilter = bool(prefilter) and self.heap and dt == torch.float32
        low_dt = torch.bfloat16 if prefilter else dt
        if low_dt != torch.float32 and (self.low is None or self.low.dtype != low_dt):
            self.low = self.U.to(low_dt)
        on_pair = None if self.restarted else (lambda: faults.point(FAULT_POINT))
        t1 = time.perf_counter()
        if prefilter:
            part = run_tile(self.low, pairs, int(block), int(k), heap=True, on_pair=on_pair)
        elif dt == torch.float32:
            part = run_tile(self.U, pairs, int(block), int(k), heap=self.heap, on_pair=on_pair)
        else:
            part = run_tile(self.low, pairs, int(block), int(k), heap=False, on_pair=on_pair)
        return part, {**self.ready(), "load_s": t1 - t0, "tile_s": time.perf_counter() - t1}

    def match(self, boxes: list, k: int, fault: Optional[str] = None) -> tuple[Any, Any, dict[str, Any]]:
        """`topk_cosine(A, B, k)` of the decoders in `boxes` ([ObjectRef A, ObjectRef B]) on this
        worker's device: one cross-source match, exactly what the local `match` runs."""
        import ray

        from ..geometry.topk import topk_cosine

        _set_fault(fault)
        t0 = time.perf_counter()
        WA, WB = ray.get(boxes[0]), ray.get(boxes[1])
        if not self.restarted:
            faults.point(FAULT_POINT)
        found = topk_cosine(WA, WB, int(k), device=self.device)
        return found.values.numpy(), found.indices.numpy(), {**self.ready(), "tile_s": time.perf_counter() - t0}

    def release(self) -> None:
        """Drop the resident decoder (the worker stays up for the next job)."""
        self.U, self.low, self.key = torch.empty(0), None, None


def _set_fault(fault: Optional[str]) -> None:
    """The driver's NP_MIRROR_FAULT, made this worker's (kill tests)."""
    if fault != os.environ.get(faults.ENV):
        if fault:
            os.environ[faults.ENV] = fault
        else:
            os.environ.pop(faults.ENV, None)
