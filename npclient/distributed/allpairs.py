"""`ray_allpairs`: `all_pairs_topk` on a Ray cluster, equal to it on one machine.

The driver normalises W and takes out the invalid (zero/NaN) rows exactly as `all_pairs_topk`
does, puts the unit rows in Ray's object store once, starts actors that keep them resident
(one per GPU with `num_gpus`, else one per CPU with `num_cpus=1`; restarted on worker loss,
their in-flight tile retried; kept for later jobs, `pool`), hands out tiles of symmetric block pairs as actors free up,
merges the partial top-k lists (`pairs.merge_partials`) and lays the rows out as
`all_pairs_topk` does (self first, invalid rows last with NaN).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import time
import uuid
from typing import Any, Callable, Optional

import torch

from ..errors import InvalidOptionError, NPError
from ..geometry.blocks import _fill, _n_rows, _rescore, default_block_rows
from ..geometry.device import DTypeLike, as_float32, normalize_rows, resolve_dtype
from ..geometry.merge import _NEG, TopK, _sort_rows
from ..geometry.prefilter import Prefilter, exact_from_candidates, resolve_prefilter, slots
from .cluster import actor_shape, connect, fault_spec
from .pairs import block_pairs, merge_partials, side_by_side, tiles
from .pool import forget, workers

__all__ = ["ray_allpairs", "RunInfo", "last_run"]

@dataclass
class RunInfo:
    """What the last `ray_allpairs` in this process did: actors, tiles, tiles run by a restarted actor."""

    actors: int = 0
    device: str = ""
    tiles: int = 0
    pairs: int = 0
    restarted_tiles: int = 0
    load_s: float = 0.0  # the workers' seconds fetching the decoder
    tile_s: float = 0.0  # the workers' seconds in tiles (all workers together)
    merge_s: float = 0.0  # the driver's seconds merging the partial lists
    pids: set[int] = field(default_factory=set)

    def reset(self, tiles: int, pairs: int) -> None:
        self.__dict__.update(RunInfo(tiles=tiles, pairs=pairs).__dict__)


last_run = RunInfo()


def ray_allpairs(
    W: Any,
    k: int,
    *,
    address: Optional[str] = None,
    num_gpus_per_actor: Optional[float] = None,
    block_rows: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    dtype: DTypeLike = None,
    prefilter: Prefilter = "auto",
) -> TopK:
    """`all_pairs_topk(W, k)` computed by Ray actors: every row itself first, then its k-1
    most cosine-similar other rows (Neuronpedia's `topkCosSim` layout; see `all_pairs_topk`).

    `address`: the cluster (None: the one this process joined, else a new local one; "auto":
    the running one). `num_gpus_per_actor`: GPUs each actor holds (default 1 where the
    cluster has GPUs; 0 for CPU actors). `block_rows`: rows per block (default: a GPU's
    when actors hold GPUs, else a CPU's). `progress(done, total)` counts block pairs.
    `dtype`: the matmul dtype, as `all_pairs_topk` takes it: bfloat16/float16 select on the
    low-precision products block by block (the torch dense path, as the local engine at that
    dtype), then the chosen neighbours are rescored in float32, so values are exact cosines and
    equal the local engine's at the same dtype and block size. `prefilter`: as `all_pairs_topk`
    (CPU actors, float32): candidates from bfloat16 products, rescored exactly by the driver, so
    the answer equals the local engine's to the bit. Returns CPU tensors.
    """
    dt = resolve_dtype(dtype, "cpu")  # the name checked here; the actors resolve it on their devices
    low_candidates = resolve_prefilter(prefilter, torch.device("cpu"))
    n, d = _n_rows(W)
    if k < 0:
        raise InvalidOptionError(f"k must be >= 0, got {k}", option="k")
    if num_gpus_per_actor is not None and num_gpus_per_actor < 0:
        raise InvalidOptionError(f"GPUs per actor must be >= 0, got {num_gpus_per_actor}", option="num_gpus_per_actor")
    if block_rows is not None and block_rows < 1:
        raise InvalidOptionError(f"block rows must be >= 1, got {block_rows}", option="block_rows")
    k_total = min(int(k), n)
    if k_total == 0:
        return TopK(torch.empty((n, 0), dtype=torch.float32), torch.empty((n, 0), dtype=torch.int64))
    un, bad = normalize_rows(as_float32(W, "cpu"))
    valid = ~bad
    vid = valid.nonzero().squeeze(1)
    nv = int(vid.numel())
    width = k_total - 1
    kv = min(width, max(nv - 1, 0))
    if kv > 0:
        U = (un[vid] if nv < n else un).contiguous()
        vals, idx = _distributed(U, kv, address, num_gpus_per_actor, block_rows, progress, dt, low_candidates)
        if dt != torch.float32:  # exact float32 cosines of the chosen neighbours, as all_pairs_topk
            vals = torch.where(vals == _NEG, _NEG, _rescore(U, idx, lambda ii: U[ii]))
            vals, idx = _sort_rows(vals, idx)
        idx = torch.where(idx >= 0, vid[idx.clamp_min(0)], idx)
    else:
        if progress is not None:
            progress(1, 1)
        vals = torch.empty((nv, 0), dtype=torch.float32)
        idx = torch.empty((nv, 0), dtype=torch.int64)
    # all_pairs_topk's layout from here on
    if width > kv:
        pad = width - kv
        vals = torch.cat((vals, torch.full((nv, pad), _NEG)), 1)
        idx = torch.cat((idx, torch.full((nv, pad), -1, dtype=torch.int64)), 1)
    invalid_keys = bad.nonzero().squeeze(1)
    self_ids = torch.arange(n, dtype=torch.int64)
    rest = _fill(vals, idx, valid, width, invalid_keys, self_ids)
    self_v = torch.where(valid, 1.0, float("nan")).to(torch.float32).unsqueeze(1)
    return TopK(torch.cat((self_v, rest.values), 1), torch.cat((self_ids.unsqueeze(1), rest.indices), 1))


def _distributed(U: torch.Tensor, k: int, address: Optional[str], gpus: Optional[float], block_rows: Optional[int],
                 progress: Optional[Callable[[int, int], None]],
                 dt: torch.dtype = torch.float32, low_candidates: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted top-k (self excluded, valid-row ids) of every row of unit-row matrix U, on Ray.
    `low_candidates`: CPU actors keep `slots(k)` bfloat16 candidates a row, rescored here."""
    ray = connect(address)
    per, n_actors = actor_shape(ray, gpus)
    low_candidates = low_candidates and per == 0 and dt == torch.float32
    nv, d = U.shape
    block = int(block_rows) if block_rows else default_block_rows(torch.device("cuda" if per > 0 else "cpu"), d, dt)
    dname = str(dt).removeprefix("torch.")
    n_blocks = -(-nv // block)
    work = tiles(n_blocks, n_actors)
    lists_a_row = sum(1 for t in work if any(0 in p for p in t))  # tiles holding row block 0: each gives it a list
    k_run = slots(k, nv - 1, lists=lists_a_row) if low_candidates else k
    total_pairs = len(block_pairs(n_blocks))
    info = last_run
    info.reset(len(work), total_pairs)
    try:
        actors = workers(ray, per, n_actors)
        info.actors = len(actors)
        box = [ray.put(U.numpy())]  # in a list: each worker fetches it once (and again after a restart)
        key = uuid.uuid4().hex
        fault = fault_spec()
        partials = []
        pending = list(reversed(work))
        running: dict[Any, tuple[Any, list]] = {}
        for a in actors:
            if pending:
                tile = pending.pop()
                running[a.run.remote(box, key, k_run, block, tile, fault, dname, low_candidates)] = (a, tile)
        done_pairs = 0
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            a, tile = running.pop(ready[0])
            part, who = ray.get(ready[0])
            partials.append(part)
            info.pids.add(who["pid"])
            info.device = who["device"]
            info.restarted_tiles += int(who["restarted"])
            info.load_s += who["load_s"]
            info.tile_s += who["tile_s"]
            done_pairs += len(tile)
            if progress is not None:
                progress(done_pairs, total_pairs)
            if pending:
                nxt = pending.pop()
                running[a.run.remote(box, key, k_run, block, nxt, fault, dname, low_candidates)] = (a, nxt)
        ray.get([a.release.remote() for a in actors])
    except ray.exceptions.RayError as e:
        forget(ray, per, n_actors)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise NPError(f"the Ray all-pairs failed: {type(e).__name__}: {first}") from e
    t = time.perf_counter()
    if low_candidates:  # the tiles' candidate lists go to the exact rescoring as they are, unmerged
        V, I = side_by_side(partials, nv, k_run)
        out = exact_from_candidates(U, U.bfloat16(), V, I, k, list_width=k_run, threads=torch.get_num_threads())
    else:
        out = merge_partials(partials, nv, k_run)
    info.merge_s = time.perf_counter() - t
    return out
