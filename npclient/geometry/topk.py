"""Exact top-k cosine neighbours of decoder rows: blocked matmuls with a running top-k.

The public search: `topk_cosine` (queries against keys) and its names `query_topk`,
`match_sources`, `feature_topk`, with `TopK` (from `merge`) and `all_pairs_topk` (from
`symmetric`) re-exported here. Memory is O(n*k + block), never an n x n matrix. The search
follows faiss's `knn_ground_truth` (contrib/exhaustive_search.py): the keys come in blocks,
each block is searched (`q @ block.T`), its local ids are shifted, and the candidates go into
a running top-k per query.

Conventions (those of Neuronpedia's `topkCosSimIndices/Values`, as the emulator serves them):

- A row whose cosine is undefined (all zeros, or any NaN/Inf) is *invalid*. For a valid query,
  the valid keys come first by cosine (descending, ties by index), then the invalid keys in
  index order with NaN values. An invalid query gets NaN values and the keys in index order.
- `all_pairs_topk` lists each row itself first (1.0, or NaN for an invalid row), then its k-1
  nearest other rows as above.
- Ties at the k-th place keep the lower index on every path, so results do not depend on
  block sizes (values themselves can differ in the last float32 bit between block sizes,
  as BLAS picks other kernels for other shapes).

Selection, after the matmul of a block (`selection=`):

- "heap" (CPU, the default where numba is installed, as it is with umap-learn): one compiled,
  single-threaded pass over the block (`heap_kernel`). Each row's running top-k is a min-heap
  whose root is its k-th best; a chunk of 64 entries is skipped after one vectorised count of
  the entries at or above min(row threshold, column thresholds), ~0.1 ns an entry; the few that
  pass are offered to the row's and the column's heaps. Cold rows use a lower bound from the
  block's group maxima (`dense._lower_bounds`) so the first block does not offer everything. A
  few queries (`query_topk` of one vector) use a fused pass that reads each key once for its
  norm and its dots, about the cost of one matrix-vector product.
- "threshold" (CPU without numba; `dense`): the same idea with torch ops: group maxima find
  the entries at or above each row's (column's) threshold, which are scattered into a small
  padded matrix and merged (`merge_topk`'s kernel).
- "dense" (GPUs; `dense`): `torch.topk` of the block along the rows (and the columns, in
  all-pairs), merged into the running top-k; no host synchronisation in the common case.

Low precision (bfloat16/float16, for GPUs) selects with the low-precision matmul and then
rescores the chosen neighbours in float32, so values are exact cosines; recall against a
float32 search is what low precision can lose.

Module map: `topk` (this: queries vs keys), `symmetric` (all pairs), `merge` (`TopK`,
`merge_topk`, the running top-k), `dense` (torch selections), `heap_kernel` (numba),
`blocks` (shared helpers, `default_block_rows`), `threads` (torch's thread count).
`npclient.geometry.knn` is the old single-module name, kept as a facade.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from ..errors import FeatureOutOfRange, InvalidOptionError
from .blocks import (
    Progress,
    Selection,
    _exclude_vector,
    _fill,
    _gather_rows,
    _n_rows,
    _rescore,
    _resolve_selection,
    _rows,
    default_block_rows,
)
from .dense import _block_topk, _dense, _lower_bounds, _threshold
from .device import DeviceLike, DTypeLike, as_float32, from_numpy, normalize_rows, pick_device, resolve_dtype
from .heap_kernel import _floor, _Heaps, _numba_scan, _query_block, _scan_block
from .merge import _NEG, TopK, _Running, _sort_rows
from .symmetric import all_pairs_topk
from .threads import cpu_threads, run_exclusive

__all__ = ["TopK", "all_pairs_topk", "feature_topk", "match_sources", "query_topk", "topk_cosine"]


def topk_cosine(
    queries: Any,
    keys: Any,
    k: int,
    *,
    block_rows: Optional[int] = None,
    device: DeviceLike = None,
    dtype: DTypeLike = None,
    exclude: Any = None,
    progress: Progress = None,
    selection: Selection = "auto",
) -> TopK:
    """For each query row, its k keys of highest cosine similarity.

    `queries` (nq, d) or one vector (d,); `keys` (nk, d): torch tensors or numpy arrays
    (memmaps included: keys are read block by block, never copied whole). `exclude`: one key
    index per query to leave out (-1: none), e.g. the query's own row. Width: min(k, nk), one
    less if `exclude` is given. Invalid keys (zero/NaN rows) rank last with NaN values; an
    invalid query gets NaN values and the keys in index order. `block_rows` bounds both the
    key block and the query block; memory is O(nq*k + block_rows^2). `progress(done, total)`
    is called after each block. `selection`: "auto" (the numba heap scan on CPU, or the torch
    "threshold" path without numba; "dense" elsewhere), "heap", "threshold" or "dense". With
    fewer than 64 valid queries the keys' blocks are sized by bytes (~8 MB) and each block's
    own top-k is kept and merged in batches. Returns CPU tensors.
    """
    dev = pick_device(device)
    dt = resolve_dtype(dtype, dev)
    mode = _resolve_selection(selection, dev)
    nq, d = _n_rows(queries)
    nk, dk = _n_rows(keys)
    if d != dk:
        raise InvalidOptionError(f"queries have {d} dims, keys {dk}", option="keys")
    if k < 0:
        raise InvalidOptionError(f"k must be >= 0, got {k}", option="k")
    ex = _exclude_vector(exclude, nq, nk)
    width = min(int(k), nk - (1 if ex is not None and bool((ex >= 0).any()) else 0))
    if width <= 0 or nq == 0:
        return TopK(torch.empty((nq, max(width, 0)), dtype=torch.float32), torch.empty((nq, max(width, 0)), dtype=torch.int64))

    qn, qbad = normalize_rows(as_float32(queries, dev))
    q_valid = ~qbad
    vq = q_valid.nonzero().squeeze(1)
    nqv = int(vq.numel())
    Qv = qn[vq] if nqv < nq else qn
    Qc = Qv.to(dt) if dt != torch.float32 else Qv
    ex_v = ex.to(dev)[vq] if ex is not None else None
    if nqv and nqv <= _FUSED_MAX_QUERIES and mode == "heap" and dt == torch.float32:
        return _fused_queries(Qv, q_valid, keys, nk, width, ex, ex_v, block_rows, progress)
    # few queries: memory bound, one read of each key block; its top-k is kept and merged in batches
    few = nqv < 64
    kb = max(1, int(block_rows) if block_rows else default_block_rows(dev, d, dt, n_queries=nqv))
    qb = max(1, int(block_rows) if block_rows else default_block_rows(dev, d, dt))
    if few:
        qb = max(qb, nqv)
    heaps = _Heaps(nqv, width) if mode == "heap" and not few and dt == torch.float32 else None
    run = None if heaps is not None else _Running(nqv, width, dev)
    pend_v: list[torch.Tensor] = []
    pend_i: list[torch.Tensor] = []
    k_starts = list(range(0, nk, kb))
    q_starts = list(range(0, nqv, qb)) if nqv else []
    total = len(k_starts) * max(1, len(q_starts))
    done = 0
    bad_keys: list[torch.Tensor] = []
    s_dtype = dt if dev.type != "cpu" else torch.float32
    buf = None
    for s in k_starts:
        e = min(s + kb, nk)
        K = _rows(keys, s, e, dev)
        if few and dt == torch.float32:
            # memory bound: one read of the block from DRAM for the norms, the matvec from cache
            norms = torch.linalg.vector_norm(K, dim=1)
            kbad = ~torch.isfinite(norms) | (norms == 0)
            Kc = K
        else:
            kn, kbad = normalize_rows(K)
            Kc = kn.to(dt) if dt != torch.float32 else kn
            norms = None
        any_bad = bool(kbad.any())
        if any_bad:
            bad_keys.append(kbad.nonzero().squeeze(1).cpu() + s)
        if heaps is not None and len(q_starts) >= 2 and cpu_threads() > 1:
            # query blocks on worker threads (single-threaded GEMM + scan each; see threads.run_exclusive)
            def task(pair, sbuf, s=s, e=e, Kc=Kc, kbad=kbad, any_bad=any_bad):
                q0 = q_starts[pair[0]]
                q1 = min(q0 + qb, nqv)
                S = sbuf[: (q1 - q0) * (e - s)].view(q1 - q0, e - s)
                torch.mm(Qc[q0:q1], Kc.T, out=S)
                _mask_block(S, q0, s, kbad if any_bad else None, ex_v)
                _scan_block(S.numpy(), q0, 0, rows=True, cols=False, diag=False, h=heaps,
                            floor_r=_floor(heaps, S, q0, 1), floor_c=heaps.none(e - s), cid0=s, rid0=0)

            base = done
            run_exclusive([(i, i) for i in range(len(q_starts))], task, cpu_threads(),
                           min(qb, nqv) * kb, None if progress is None else (lambda d_, t_, b=base: progress(b + d_, total)))
            done += len(q_starts)
            continue
        for q0 in q_starts:
            q1 = min(q0 + qb, nqv)
            R, C = q1 - q0, e - s
            if dev.type == "cpu" and dt == torch.float32:
                if buf is None or buf.numel() < R * C:
                    buf = torch.empty(max(R * C, min(qb, nqv) * kb), dtype=torch.float32)
                S = buf[: R * C].view(R, C)
                torch.mm(Qc[q0:q1], Kc.T, out=S)
            else:
                S = Qc[q0:q1] @ Kc.T
                if s_dtype != S.dtype:
                    S = S.to(s_dtype)
            if norms is not None:
                S.div_(norms.unsqueeze(0))
            _mask_block(S, q0, s, kbad if any_bad else None, ex_v)
            ids = (lambda p, s=s: p + s)
            if few:
                c = min(width, C)
                tv, ci = _block_topk(S, c, ids)
                pend_v.append(tv.float())
                pend_i.append(ci)
                if len(pend_v) >= 64:
                    run.merge(slice(0, nqv), torch.cat(pend_v, 1), torch.cat(pend_i, 1))
                    pend_v, pend_i = [], []
            elif heaps is not None:
                Sn = S.numpy() if S.is_contiguous() else S.contiguous().numpy()
                _scan_block(Sn, q0, 0, rows=True, cols=False, diag=False, h=heaps, floor_r=_floor(heaps, S, q0, 1),
                            floor_c=heaps.none(C), cid0=s, rid0=0)
            else:
                th = None
                if mode == "threshold":
                    th = run.thr[q0:q1] if run.warm(q0, q1) else _lower_bounds(S, width, 1)
                if th is None:
                    _dense(run, q0, S, ids)
                else:
                    _threshold(run, S, q0, 0, th, None, ids)
            done += 1
            if progress is not None:
                progress(done, total)
        if not q_starts:
            done += 1
            if progress is not None:
                progress(done, total)
    if pend_v:
        run.merge(slice(0, nqv), torch.cat(pend_v, 1), torch.cat(pend_i, 1))
    vals, idx = heaps.result() if heaps is not None else (run.vals, run.idx)
    if dt != torch.float32 and nqv:
        vals = torch.where(vals == _NEG, _NEG, _rescore(Qv, idx, lambda ii: normalize_rows(_gather_rows(keys, ii, dev))[0]))
    vals, idx = _sort_rows(vals.cpu(), idx.cpu())
    invalid_keys = torch.cat(bad_keys) if bad_keys else torch.empty(0, dtype=torch.int64)
    return _fill(vals, idx, q_valid.cpu(), width, invalid_keys, ex)


def _mask_block(S: torch.Tensor, q0: int, s: int, kbad: Optional[torch.Tensor], ex_v: Optional[torch.Tensor]) -> None:
    """-inf at invalid keys (columns) and at each query's excluded key, in block S of queries
    q0.. against keys s.."""
    if kbad is not None:
        S.masked_fill_(kbad.unsqueeze(0), _NEG)
    if ex_v is not None:
        loc = ex_v[q0:q0 + S.shape[0]] - s
        hit = (loc >= 0) & (loc < S.shape[1])
        if bool(hit.any()):
            r = hit.nonzero().squeeze(1)
            S[r, loc[r]] = _NEG


_FUSED_MAX_QUERIES = 8
_FUSED_BLOCK_BYTES = 64 << 20


def _fused_queries(Qv: torch.Tensor, q_valid: torch.Tensor, keys: Any, nk: int, width: int,
                   ex: Optional[torch.Tensor], ex_v: Optional[torch.Tensor], block_rows: Optional[int],
                   progress: Progress) -> TopK:
    """A handful of valid queries on CPU: one numba pass over the keys computes each key's norm
    and dots together (each key read once from memory, ~ the cost of one matrix-vector
    product) and feeds per-query heaps."""
    _numba_scan()
    nqv, d = Qv.shape
    h = _Heaps(nqv, width)
    Qn = np.ascontiguousarray(Qv.numpy())
    exn = (ex_v.numpy() if ex_v is not None else np.full(nqv, -1)).astype(np.int64)
    kb = int(block_rows) if block_rows else max(1, _FUSED_BLOCK_BYTES // (4 * max(d, 1)))
    starts = list(range(0, nk, kb))
    bad_keys = []
    for done, s in enumerate(starts, 1):
        e = min(s + kb, nk)
        K = _rows(keys, s, e, torch.device("cpu"))
        Kn = K.numpy() if K.is_contiguous() else K.contiguous().numpy()
        bad = np.zeros(e - s, dtype=np.bool_)
        _query_block(Kn, Qn, s, exn, h, bad, width)
        if bad.any():
            bad_keys.append(torch.from_numpy(np.flatnonzero(bad) + s))
        if progress is not None:
            progress(done, len(starts))
    vals, idx = _sort_rows(*h.result())
    invalid_keys = torch.cat(bad_keys) if bad_keys else torch.empty(0, dtype=torch.int64)
    return _fill(vals, idx, q_valid.cpu(), width, invalid_keys, ex)


def query_topk(vectors: Any, W: Any, k: int, **kw: Any) -> TopK:
    """The k rows of W most cosine-similar to each of `vectors` (one vector (d,) or a batch
    (m, d): a steering vector, a probe direction, a row of W_U). See `topk_cosine`."""
    return topk_cosine(vectors, W, k, **kw)


def match_sources(W_a: Any, W_b: Any, k: int = 1, **kw: Any) -> TopK:
    """For each feature (row) of decoder A, its k best matches among the rows of decoder B
    (feature splitting across widths). See `topk_cosine`."""
    return topk_cosine(W_a, W_b, k, **kw)


def feature_topk(W: Any, features: Any, k: int, **kw: Any) -> TopK:
    """Rows `features` of `all_pairs_topk(W, k)`, without the rest: each feature itself first
    (1.0, NaN if its row is invalid), then its k-1 nearest other rows."""
    feats = torch.as_tensor(np.asarray(features.cpu() if isinstance(features, torch.Tensor) else features),
                            dtype=torch.int64).reshape(-1)
    n, _ = _n_rows(W)
    if feats.numel() and (int(feats.min()) < 0 or int(feats.max()) >= n):
        bad = int(feats.min()) if int(feats.min()) < 0 else int(feats.max())
        raise FeatureOutOfRange(f"feature {bad} is out of range for {n} rows", option="features")
    k_total = min(int(k), n)
    dev = pick_device(kw.get("device"))
    Wt = W if isinstance(W, torch.Tensor) else None
    rows = (Wt[feats.to(Wt.device)] if Wt is not None else from_numpy(np.asarray(W)[feats.numpy()]))
    rest = topk_cosine(rows, W, max(k_total - 1, 0), exclude=feats, **kw) if k_total > 1 else None
    _, bad = normalize_rows(rows, dev)
    self_v = torch.where(bad.cpu(), float("nan"), 1.0).unsqueeze(1)
    if rest is None:
        return TopK(self_v[:, :k_total].contiguous(), feats.unsqueeze(1)[:, :k_total].contiguous())
    return TopK(torch.cat((self_v, rest.values), 1), torch.cat((feats.unsqueeze(1), rest.indices), 1))
