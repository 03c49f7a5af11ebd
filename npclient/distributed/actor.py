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
        # warm the kernels (numba's first call) here, at start-up, not in the first tile
        warm = torch.nn.functional.normalize(torch.ones(8, 4, device=self.device) + torch.eye(8, 4, device=self.device), dim=1)
        run_tile(warm, [(0, 0)], 8, 2, heap=self.heap)

    def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "device": str(self.device), "restarted": self.restarted}

    def run(self, U_box: list, key: Any, k: int, block: int, pairs: list[Pair],
            fault: Optional[str] = None) -> tuple[Partial, dict[str, Any]]:
        """The partial top-k of tile `pairs` of the decoder in `U_box` ([ObjectRef]; job `key`).
        `fault`: the driver's NP_MIRROR_FAULT, set here for `faults.point`."""
        if fault != os.environ.get(faults.ENV):
            if fault:
                os.environ[faults.ENV] = fault
            else:
                os.environ.pop(faults.ENV, None)
        t0 = time.perf_counter()
        if key != self.key:
            import ray

            self.U = torch.empty(0)
            self.U = torch.tensor(ray.get(U_box[0]), dtype=torch.float32, device=self.device)  # one copy, resident
            self.key = key
        on_pair = None if self.restarted else (lambda: faults.point(FAULT_POINT))
        t1 = time.perf_counter()
        part = run_tile(self.U, pairs, int(block), int(k), heap=self.heap, on_pair=on_pair)
        return part, {**self.ready(), "load_s": t1 - t0, "tile_s": time.perf_counter() - t1}

    def release(self) -> None:
        """Drop the resident decoder (the worker stays up for the next job)."""
        self.U, self.key = torch.empty(0), None
