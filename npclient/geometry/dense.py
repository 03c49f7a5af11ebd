"""Selection in torch ops after a block's matmul: the "dense" and "threshold" paths.

- "dense" (GPUs; any device): `torch.topk` of the block along its rows (and, in all-pairs, its
  columns), merged into the running top-k (`_dense`, `_block_topk`); no host synchronisation in
  the common case.
- "threshold" (CPU without numba): group maxima find the entries at or above each row's
  (column's) current k-th value (`_find`, `_find_cols`), which are scattered into a small padded
  matrix and merged (`_scatter`, `_threshold`). Cold rows use `_lower_bounds` (the heap
  kernel's floor is its numpy twin, `heap_kernel.lower_bounds`, with the same groups).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .heap_kernel import bound_groups
from .merge import _NEG, _Running, _order_key


def _block_topk(S: torch.Tensor, c: int, ids: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, key ids) of the c best entries of each row of S. Where an entry left out ties
    the c-th value chosen, that row is redone with exact (value, index) keys, so ties keep
    the lower index here too."""
    tv, pos = torch.topk(S, c, dim=1, sorted=False)
    ci = ids(pos)
    if S.dtype != torch.float32:  # low precision: ties are rounding, and the values get rescored
        return tv, ci
    kth = tv.amin(1, keepdim=True)
    tied = ((S >= kth).sum(1) > c).nonzero().squeeze(1)
    if tied.numel():
        rows = S[tied]
        cols = ids(torch.arange(S.shape[1], device=S.device)).unsqueeze(0).expand_as(rows)
        _, p = torch.topk(_order_key(rows, cols), c, dim=1, sorted=False)
        tv, ci = tv.clone(), ci.clone()
        tv[tied] = rows.gather(1, p).to(tv.dtype)
        ci[tied] = cols.gather(1, p)
    return tv, ci


def _dense(run: _Running, r0: int, S: torch.Tensor, ids: Callable[[torch.Tensor], torch.Tensor], *, dim: int = 1) -> None:
    """`_block_topk` of block S along `dim` (1: S's rows are run rows r0..; 0: S's columns
    are), merged into the running top-k."""
    c = min(run.k, S.shape[dim])
    if c <= 0:
        return
    tv, ci = _block_topk(S if dim == 1 else S.T, c, ids)
    run.merge(slice(r0, r0 + tv.shape[0]), tv, ci)


def _scatter(run: _Running, base: int, n_rows: int, rl: torch.Tensor, ci: torch.Tensor, v: torch.Tensor,
             presorted: bool) -> None:
    """Merge a sparse candidate list (local row rl, key id ci, value v) into rows base + rl."""
    m = rl.numel()
    if m == 0:
        return
    if not presorted:
        rl, order = torch.sort(rl, stable=True)
        ci, v = ci[order], v[order]
    counts = torch.bincount(rl, minlength=n_rows)
    present = counts > 0
    touched = present.nonzero().squeeze(1)
    maxc = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(m, device=rl.device) - starts[rl]
    comp = (torch.cumsum(present, 0) - 1)[rl]
    pv = torch.full((touched.numel(), maxc), _NEG, dtype=torch.float32, device=rl.device)
    pi = torch.full((touched.numel(), maxc), -1, dtype=torch.int64, device=rl.device)
    pv[comp, rank] = v.float()
    pi[comp, rank] = ci
    run.merge(touched + base, pv, pi)


def _lower_bounds(S: torch.Tensor, k: int, dim: int) -> Optional[torch.Tensor]:
    """Per row (dim=1) or column (dim=0) of S, a lower bound on its k-th largest value: the
    k-th largest of the maxima of G >= 2k disjoint groups (k group maxima are k distinct
    entries, all >= it). One cheap pass instead of a full `topk`; None when S is too small
    along `dim` or the bound is -inf (masked entries), where the caller takes the dense path."""
    G = bound_groups(S.shape[dim], k)
    if G is None:
        return None
    g = S.shape[dim] // G
    if dim == 1:
        M = S[:, : G * g].unflatten(1, (G, g)).amax(2)
    else:
        M = S[: G * g].unflatten(0, (G, g)).amax(1)
    t = torch.topk(M, k, dim=dim, sorted=False).values.amin(dim)
    if not bool(torch.isfinite(t).all()):
        return None
    return t


_GROUP = 32


def _find(S: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """(rows, cols, values, rows_sorted) of the entries of S with S[a, b] >= t[a].

    Two levels, so the full block is read once and never scanned by `nonzero`: the maxima of
    groups of `_GROUP` consecutive columns (one pass), the groups whose maximum reaches the
    row's threshold (a small `nonzero`), then those groups' entries (a gather)."""
    R, C = S.shape
    g = _GROUP
    G = C // g
    a = b = v = None
    if G >= 1 and S.is_contiguous():
        M = S[:, : G * g].unflatten(1, (G, g)).amax(2)
        ra, ga = torch.nonzero(M >= t.unsqueeze(1), as_tuple=True)
        if C % g == 0:  # groups are rows of a (R*G, g) view: a contiguous gather
            vals = S.view(-1, g).index_select(0, ra * G + ga)
        else:
            vals = torch.take(S, (ra * C + ga * g).unsqueeze(1) + torch.arange(g, device=S.device))
        gi, off = torch.nonzero(vals >= t[ra].unsqueeze(1), as_tuple=True)
        a, b, v = ra[gi], ga[gi] * g + off, vals[gi, off]
        lo = G * g
    else:
        lo = 0
    if lo < C:
        sub = S[:, lo:]
        a2, b2 = torch.nonzero(sub >= t.unsqueeze(1), as_tuple=True)
        v2 = sub[a2, b2]
        if a is None:
            return a2, b2 + lo, v2, True
        return torch.cat((a, a2)), torch.cat((b, b2 + lo)), torch.cat((v, v2)), False
    return a, b, v, True


_GROUP_COLS = 8


def _find_cols(S: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """(rows, cols, values, cols_sorted) of the entries of S with S[a, b] >= t[b]: `_find` on
    the columns (groups of `_GROUP_COLS` consecutive rows), found in column order (no sort)."""
    R, C = S.shape
    g = _GROUP_COLS
    G = R // g
    a = b = v = None
    if G >= 1 and S.is_contiguous():
        M = S[: G * g].unflatten(0, (G, g)).permute(1, 0, 2).amax(0)  # (G, C); this form is the fast kernel
        cb, gr = torch.nonzero((M >= t.unsqueeze(0)).T.contiguous(), as_tuple=True)  # column-major order
        flat = ((gr * g * C + cb).unsqueeze(1) + torch.arange(0, g * C, C, device=S.device))
        vals = torch.take(S, flat)
        gi, off = torch.nonzero(vals >= t[cb].unsqueeze(1), as_tuple=True)
        a, b, v = gr[gi] * g + off, cb[gi], vals[gi, off]
        lo = G * g
    else:
        lo = 0
    if lo < R:
        sub = S[lo:]
        b2, a2 = torch.nonzero((sub >= t.unsqueeze(0)).T, as_tuple=True)
        v2 = sub[a2, b2]
        if a is None:
            return a2 + lo, b2, v2, True
        return torch.cat((a, a2 + lo)), torch.cat((b, b2)), torch.cat((v, v2)), False
    return a, b, v, True


def _threshold(run: _Running, S: torch.Tensor, r0: int, c0: int,
               th_r: Optional[torch.Tensor], th_c: Optional[torch.Tensor],
               col_ids: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Sparse update from block S: the row side (S's rows are run rows r0.., thresholds th_r)
    and/or the column side (S's columns are run rows c0.., thresholds th_c). Each side finds
    its entries at or above its thresholds (`_find`, `_find_cols`) and merges them. Entries
    below a threshold can never enter that row's top-k; ties with it pass (harmless)."""
    R, C = S.shape
    if th_r is not None:
        a, b, v, srt = _find(S, th_r)
        _scatter(run, r0, R, a, col_ids(b), v, presorted=srt)
    if th_c is not None:
        # th_c may be a view just raised by the row side (diagonal block): still a valid bound
        a, b, v, srt = _find_cols(S, th_c)
        _scatter(run, c0, C, b, a + r0, v, presorted=srt)
