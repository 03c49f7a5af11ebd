"""Geometry jobs over many sources: all-pairs on either engine into the mirror or the shared
dataset, all-pairs of every source with weights, and cross-source matches over many pairs.

The local engine is the reference; the Ray engine (`npclient.distributed`) computes the same
result elsewhere, so every function here takes `engine` and stores what it gets the same way.
Sources with weights are run one after another on the same cluster: the resident workers
(`distributed.pool`) are started once and serve every source and pair.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

from ..errors import InvalidOptionError, WeightsError
from ..ids import SourceId

if TYPE_CHECKING:
    from ..dataset.location import Location
    from ..mirror import Mirror
    from .merge import TopK

__all__ = ["ENGINES", "AllPairsOutcome", "MatchOutcome", "compute_all_pairs", "all_pairs", "weighted_sources",
           "all_pairs_with_weights", "parse_pairs", "adjacent_layer_pairs", "match_pairs"]

ENGINES = ("local", "ray")
SourceLike = Union[SourceId, str]
Progress = Optional[Callable[[int, int], None]]


def _sid(source: SourceLike) -> SourceId:
    return source if isinstance(source, SourceId) else SourceId.parse(source)


_FLOAT32_NAMES = frozenset({"float32", "fp32", "f32", "float"})


def _dtype_name(dtype: Any) -> str:
    if dtype is None or str(dtype).removeprefix("torch.") in _FLOAT32_NAMES:
        return "float32"  # without importing torch
    from .device import resolve_dtype

    return str(resolve_dtype(dtype, "cpu")).removeprefix("torch.")


def check_engine(engine: str, *, device: Any = None, address: Optional[str] = None) -> None:
    """Refuse options that do not fit the engine, before any work (bad input)."""
    if engine not in ENGINES:
        raise InvalidOptionError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}", option="engine")
    if engine == "ray" and device is not None:
        raise InvalidOptionError("the ray engine places its work on the cluster's GPUs or CPUs itself; "
                                 "a device applies to the local engine", option="device")
    if engine == "local" and address is not None:
        raise InvalidOptionError("a cluster address applies to the ray engine only", option="address")


def compute_all_pairs(mirror: "Mirror", source: SourceLike, k: int, *, engine: str = "local", device: Any = None,
                      dtype: Any = None, address: Optional[str] = None, progress: Progress = None,
                      block_rows: Optional[int] = None) -> "TopK":
    """`source`'s all-pairs top-k (self first) from its attached decoder, on `engine`."""
    check_engine(engine, device=device, address=address)
    sid = _sid(source)
    if engine == "ray":
        from ..distributed import ray_allpairs

        return ray_allpairs(mirror.decoder(sid, device="cpu"), k, address=address, progress=progress,
                            dtype=dtype, block_rows=block_rows)
    from .symmetric import all_pairs_topk

    return all_pairs_topk(mirror.decoder(sid, device=device), k, device=device, dtype=dtype, progress=progress,
                          block_rows=block_rows)


def _torch_free(mirror: "Mirror", sid: SourceId, k: int, *, engine: str, device: Any, dtype: Any, progress: Progress,
                block_rows: Optional[int]) -> Optional[tuple[Any, Any]]:
    """The local float32 all-pairs on an AMX CPU without importing torch (`cpu_allpairs`: the same
    bits as `all_pairs_topk`), or None where it does not apply and `compute_all_pairs` runs: also
    where torch is loaded already (a notebook), whose own bf16 GEMM is the faster one then."""
    if engine != "local" or _dtype_name(dtype) != "float32" or "torch" in sys.modules:
        return None
    from . import cpu_allpairs

    if (device is None and cpu_allpairs.gpu_possible()) or (device is not None and str(device) != "cpu"):
        return None  # torch picks a GPU if it finds one
    W = mirror.decoder_array(sid)
    if W is None:
        return None
    return cpu_allpairs.all_pairs_arrays(W, k, progress=progress, block_rows=block_rows)  # None if not `available()`


@dataclass
class AllPairsOutcome:
    """One source's all-pairs: rows stored, and where (the mirror's `neighbors` table, or the
    dataset's units: written / already committed), with the seconds it took."""

    source: SourceId
    rows: int
    seconds: float
    dataset: Optional[str] = None
    units_written: int = 0
    units_skipped: int = 0
    job_id: Optional[str] = None


def all_pairs(mirror: "Mirror", source: SourceLike, k: int = 25, *, engine: str = "local", device: Any = None,
              dtype: Any = None, address: Optional[str] = None, progress: Progress = None,
              dataset: Optional["Location"] = None, unit_features: Optional[int] = None,
              job_id: Optional[str] = None, rewrite: bool = False, block_rows: Optional[int] = None) -> AllPairsOutcome:
    """Every feature's k nearest neighbours (self first), stored in the mirror's `neighbors`
    table, or, with `dataset`, written there as `neighbors` units with commit markers (the
    mirror is then only read: its attached decoder)."""
    sid = _sid(source)
    check_engine(engine, device=device, address=address)
    name = _dtype_name(dtype)
    if dataset is not None and unit_features is not None and unit_features < 1:
        raise InvalidOptionError(f"unit features must be >= 1, got {unit_features}", option="unit_features")
    t0 = time.perf_counter()
    arrays = _torch_free(mirror, sid, k, engine=engine, device=device, dtype=dtype, progress=progress,
                         block_rows=block_rows)
    if arrays is None:
        found = compute_all_pairs(mirror, sid, k, engine=engine, device=device, dtype=dtype, address=address,
                                  progress=progress, block_rows=block_rows)
        arrays = found.values.numpy(), found.indices.numpy()
    values, indices = arrays
    if dataset is None:
        rows = mirror.store.save_neighbors(sid, values, indices)
        return AllPairsOutcome(sid, rows, time.perf_counter() - t0)
    from .neighbor_units import DEFAULT_UNIT_FEATURES, weights_identity, write_neighbor_units  # pyarrow.dataset, pandas: ~0.4 s

    report = write_neighbor_units(dataset, sid, values, indices, k=k, dtype=name,
                                  weights=weights_identity(mirror.store.weights(sid)),
                                  unit_features=unit_features or DEFAULT_UNIT_FEATURES, job_id=job_id, rewrite=rewrite)
    return AllPairsOutcome(sid, int(values.size), time.perf_counter() - t0, dataset=dataset.url,
                           units_written=len(report.written), units_skipped=len(report.skipped), job_id=report.job_id)


def weighted_sources(mirror: "Mirror") -> list[SourceId]:
    """Every source of the mirror with an attached decoder, by model and source."""
    return [r.source_id for r in mirror.store.all_weights()]


def all_pairs_with_weights(mirror: "Mirror", k: int = 25, *, on_source: Optional[Callable[[AllPairsOutcome], None]] = None,
                           progress_for: Optional[Callable[[SourceId], Progress]] = None, job_id: Optional[str] = None,
                           **kwargs: Any) -> list[AllPairsOutcome]:
    """`all_pairs` of every source with weights, one after another (on the Ray engine, on the
    same resident workers); `on_source(outcome)` after each. One job id for all the sources'
    units. No source with weights is bad input."""
    from ..dataset.units import new_job_id

    check_engine(kwargs.get("engine", "local"), device=kwargs.get("device"), address=kwargs.get("address"))
    _dtype_name(kwargs.get("dtype"))
    sources = weighted_sources(mirror)
    if not sources:
        raise WeightsError("no source of this mirror has decoder weights attached (`np-mirror weights add`)")
    job = job_id or new_job_id()
    out = []
    for sid in sources:
        progress = progress_for(sid) if progress_for is not None else None
        outcome = all_pairs(mirror, sid, k, progress=progress, job_id=job, **kwargs)
        out.append(outcome)
        if on_source is not None:
            on_source(outcome)
    return out


# -- cross-source matches over many pairs ---------------------------------------------------------


def parse_pairs(text: str) -> list[tuple[SourceId, SourceId]]:
    """`A1:B1,A2:B2` (each a MODEL/SOURCE) as pairs of source ids; bad text is bad input."""
    pairs = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        a, sep, b = item.partition(":")
        if not sep or not a.strip() or not b.strip():
            raise InvalidOptionError(f"a pair is MODEL/SOURCE:MODEL/SOURCE, got {item!r}", option="pairs")
        try:
            pairs.append((SourceId.parse(a.strip()), SourceId.parse(b.strip())))
        except ValueError as e:
            raise InvalidOptionError(f"pair {item!r}: {e}", option="pairs") from None
    if not pairs:
        raise InvalidOptionError("no pair given: use A1:B1,A2:B2 with MODEL/SOURCE ids", option="pairs")
    return pairs


_LAYERED = re.compile(r"^(\d+)-(.+)$")


def adjacent_layer_pairs(mirror: "Mirror", model: str) -> list[tuple[SourceId, SourceId]]:
    """Every (layer L, layer L+1) pair among `model`'s sources with weights whose ids are
    Neuronpedia's `<layer>-<set>` (e.g. 6-res-jb -> 7-res-jb), within one set."""
    by_set: dict[str, dict[int, SourceId]] = {}
    for sid in weighted_sources(mirror):
        found = _LAYERED.match(sid.source) if sid.model_id == model else None
        if found:
            by_set.setdefault(found.group(2), {})[int(found.group(1))] = sid
    pairs = [(layers[layer], layers[layer + 1]) for _, layers in sorted(by_set.items())
             for layer in sorted(layers) if layer + 1 in layers]
    if not pairs:
        raise InvalidOptionError(f"{model} has no two sources with weights on adjacent layers of one set "
                                 "(ids <layer>-<set>, e.g. 6-res-jb and 7-res-jb)", option="adjacent")
    return pairs


@dataclass
class MatchOutcome:
    """One pair's match: rows stored in `matches` and the mean best cosine (NaN rows left out)."""

    source: SourceId
    against: SourceId
    rows: int
    mean_top_cosine: Optional[float]
    found: Any = field(default=None, repr=False)


def match_pairs(mirror: "Mirror", pairs: Sequence[tuple[SourceLike, SourceLike]], k: int = 1, *,
                engine: str = "local", device: Any = None, address: Optional[str] = None,
                on_pair: Optional[Callable[[MatchOutcome], None]] = None) -> list[MatchOutcome]:
    """For each pair (A, B): each feature of A's k best decoder matches in B (`topk_cosine`, as
    `api.match`), stored in `matches`. On the Ray engine the pairs run as calls on the resident
    workers (`distributed.ray_match`), each pair's result the local one. Every pair is checked
    (weights attached, one d_in) before any work."""
    import numpy as np

    check_engine(engine, device=device, address=address)
    if k < 1:
        raise InvalidOptionError(f"k must be >= 1, got {k}", option="k")
    ids = [(_sid(a), _sid(b)) for a, b in pairs]
    if not ids:
        raise InvalidOptionError("no pair to match", option="pairs")
    records = {}
    for sid in dict.fromkeys(s for p in ids for s in p):
        record = mirror.store.weights(sid)
        if record is None:
            mirror.decoder(sid)  # raises the one "no weights attached" error, before any pair runs
        records[sid] = record
    for a, b in ids:
        if records[a].d_in != records[b].d_in:
            raise WeightsError(f"{a} has d_in {records[a].d_in} but {b} has {records[b].d_in}: "
                               "they live in different spaces")
    out: list[Optional[MatchOutcome]] = [None] * len(ids)

    def store(i: int, found: "TopK") -> None:
        a, b = ids[i]
        values, indices = found.values.numpy(), found.indices.numpy()
        rows = mirror.store.save_matches(a, b, values, indices)
        top = values[:, 0] if values.shape[1] else np.empty(0)
        top = top[~np.isnan(top)]
        out[i] = MatchOutcome(a, b, rows, float(top.mean()) if top.size else None, found)
        if on_pair is not None:
            on_pair(out[i])

    if engine == "ray":
        from ..distributed.match import MatchJob, ray_match

        decoders: dict[SourceId, Any] = {}
        for sid in records:
            decoders[sid] = mirror.decoder(sid, device="cpu")
        jobs = [MatchJob(str(a), decoders[a], str(b), decoders[b]) for a, b in ids]
        ray_match(jobs, k, address=address, on_result=store)
    else:
        from .topk import topk_cosine

        for i, (a, b) in enumerate(ids):
            store(i, topk_cosine(mirror.decoder(a, device=device), mirror.decoder(b, device=device), k, device=device))
    return [o for o in out if o is not None]
