"""What the query search (`topk`) and the all-pairs search (`symmetric`) share around the blocks.

Block sizes (`default_block_rows`), the selection mode (`_resolve_selection`), reading rows of a
tensor, array or memmap block by block (`_rows`, `_gather_rows`), the per-query exclude vector,
the final layout of Neuronpedia's conventions (`_fill`: invalid keys last in index order with
NaN, invalid queries NaN) and the float32 rescoring of low-precision results (`_rescore`).
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional

import numpy as np
import torch

from ..errors import InvalidOptionError
from .device import from_numpy
from .heap_kernel import _numba_scan
from .merge import _NEG, TopK

__all__ = ["default_block_rows"]

Progress = Optional[Callable[[int, int], None]]
Selection = Literal["auto", "heap", "threshold", "dense"]
_SELECTIONS = ("auto", "heap", "threshold", "dense")


def default_block_rows(device: torch.device, d: int, dtype: torch.dtype = torch.float32, *, n_queries: Optional[int] = None) -> int:
    """Rows per block: ~2-3k on CPU (a 16-36 MB block of W·Wᵀ stays in the L3 cache and the
    GEMM runs near peak), 16k on a GPU (a 0.5-1 GB block; big enough to saturate it). With few
    queries (`n_queries` < 64) the key block is sized to ~8 MB of keys instead (memory bound)."""
    if n_queries is not None and n_queries < 64:
        return int(max(256, min(65536, (8 << 20) // (4 * max(d, 1)))))
    if device.type == "cpu":
        return 2048
    return 16384


def _resolve_selection(selection: str, device: torch.device) -> str:
    """The selection mode: "heap" (numba, CPU), "threshold" (torch sparse) or "dense"."""
    if selection not in _SELECTIONS:
        raise InvalidOptionError(f"selection must be one of {_SELECTIONS}, got {selection!r}", option="selection")
    if selection == "auto":
        if device.type != "cpu":
            return "dense"
        return "heap" if _numba_scan() is not None else "threshold"
    if selection == "heap":
        if device.type != "cpu":
            raise InvalidOptionError(f"selection 'heap' runs on CPU only, not on {device.type}", option="selection")
        if _numba_scan() is None:
            raise InvalidOptionError("selection 'heap' needs numba, which is not installed", option="selection")
    return selection


def _n_rows(x: Any) -> tuple[int, int]:
    shape = tuple(x.shape) if hasattr(x, "shape") else np.asarray(x).shape
    if len(shape) == 1:
        return 1, int(shape[0])
    if len(shape) != 2:
        raise InvalidOptionError(f"expected a matrix (rows x dims), got shape {shape}")
    return int(shape[0]), int(shape[1])


def _rows(x: Any, s: int, e: int, device: torch.device) -> torch.Tensor:
    """Rows s..e-1 of a tensor or array as float32 on `device` (no full copy of `x`)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        t = t.unsqueeze(0) if t.ndim == 1 else t
        t = t[s:e]
    else:
        a = x if isinstance(x, np.ndarray) else np.asarray(x)
        a = a[None, :] if a.ndim == 1 else a
        t = from_numpy(a[s:e])
    if t.device != device:
        t = t.to(device, non_blocking=False)
    return t.float() if t.dtype != torch.float32 else t


def _exclude_vector(exclude: Any, nq: int, nk: int) -> Optional[torch.Tensor]:
    if exclude is None:
        return None
    ex = torch.as_tensor(np.asarray(exclude.cpu() if isinstance(exclude, torch.Tensor) else exclude), dtype=torch.int64)
    ex = ex.reshape(-1)
    if ex.numel() == 1 and nq != 1:
        ex = ex.expand(nq).clone()
    if ex.numel() != nq:
        raise InvalidOptionError(f"exclude must give one key index per query ({nq}), got {ex.numel()}", option="exclude")
    if bool(((ex >= nk) | (ex < -1)).any()):
        raise InvalidOptionError(f"exclude entries must be key indices below {nk} or -1 (none)", option="exclude")
    return ex


def _fill(vals: torch.Tensor, idx: torch.Tensor, q_valid: torch.Tensor, width: int,
          invalid_keys: torch.Tensor, exclude: Optional[torch.Tensor]) -> TopK:
    """Final rows on CPU from the sorted top-k of the valid queries (vals/idx: global key ids,
    -inf marking empty slots): empty slots get the invalid keys in index order (NaN), invalid
    queries get NaN and the first keys in index order; `exclude` (per query) is skipped."""
    nq = q_valid.numel()
    out_v = torch.full((nq, width), float("nan"), dtype=torch.float32)
    out_i = torch.empty((nq, width), dtype=torch.int64)
    vq = q_valid.nonzero().squeeze(1)
    if vq.numel():
        empty = vals == _NEG
        m = empty.sum(1)
        M = int(m.max()) if m.numel() else 0
        v = vals.masked_fill(empty, float("nan"))
        if M > 0:
            cand = invalid_keys[: M + 1].unsqueeze(0).expand(vq.numel(), -1)
            if exclude is not None:
                drop = (cand == exclude[vq].unsqueeze(1)).to(torch.int8)
                cand = cand.gather(1, torch.sort(drop, dim=1, stable=True).indices)
            cand = cand[:, :M]
            t = torch.arange(width).unsqueeze(0) - (width - m).unsqueeze(1)
            idx = torch.where(t >= 0, cand.gather(1, t.clamp(0, max(M - 1, 0))), idx)
        out_v[vq] = v
        out_i[vq] = idx
    bq = (~q_valid).nonzero().squeeze(1)
    if bq.numel():
        base = torch.arange(width + 1, dtype=torch.int64).unsqueeze(0).expand(bq.numel(), -1)
        if exclude is not None:
            drop = (base == exclude[bq].unsqueeze(1)).to(torch.int8)
            base = base.gather(1, torch.sort(drop, dim=1, stable=True).indices)
        out_i[bq] = base[:, :width]
    return TopK(out_v, out_i)


def _rescore(qn: torch.Tensor, idx: torch.Tensor, key_rows: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Exact float32 cosines of (query row r, key idx[r, j]) pairs; -inf where idx < 0."""
    n, k = idx.shape
    out = torch.full((n, k), _NEG, dtype=torch.float32, device=idx.device)
    if n == 0 or k == 0:
        return out
    d = qn.shape[1]
    chunk = max(1, (1 << (25 if idx.device.type == "cpu" else 27)) // max(1, k * d))
    for s in range(0, n, chunk):
        ii = idx[s:s + chunk]
        ok = ii >= 0
        keys = key_rows(ii.clamp_min(0).reshape(-1)).reshape(ii.shape[0], k, d)
        dots = torch.bmm(keys, qn[s:s + chunk].unsqueeze(2)).squeeze(2)
        out[s:s + chunk] = dots.masked_fill(~ok, _NEG)
    return out


def _gather_rows(x: Any, ids: torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
        t = t.unsqueeze(0) if t.ndim == 1 else t
        return t[ids.to(t.device)].to(device).float()
    a = np.asarray(x)
    a = a[None, :] if a.ndim == 1 else a
    return from_numpy(a[ids.cpu().numpy()]).to(device)
