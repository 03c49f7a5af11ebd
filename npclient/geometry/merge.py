"""The top-k data and the merge: `TopK`, the exact (value, index) order, `merge_topk`, the running top-k.

Pure torch, on whatever device its inputs are on; shared by every search path (CPU and GPU,
queries and all-pairs). The order: value descending, NaN as -inf, ties by index ascending,
empty slots (index < 0) after everything. `_order_key` packs it into one int64 per entry so a
plain `torch.topk`/`torch.sort` keeps the lower index on ties: results never depend on block
sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..errors import InvalidOptionError

__all__ = ["TopK", "merge_topk"]

_NEG = float("-inf")


@dataclass(frozen=True, eq=False)
class TopK:
    """Top-k neighbours of n queries: `values` float32 (n, k), `indices` int64 (n, k), on CPU.

    Row r lists query r's neighbours best first. Unpacks as `values, indices = result`.
    """

    values: torch.Tensor
    indices: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.values.shape[0])

    @property
    def k(self) -> int:
        return int(self.values.shape[1])

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter((self.values, self.indices))

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """(values float32, indices int64) as numpy arrays."""
        return self.values.cpu().numpy(), self.indices.cpu().numpy()

    def row(self, r: int) -> list[tuple[int, float]]:
        """[(index, cosine), ...] of query r, best first."""
        return list(zip(self.indices[r].tolist(), self.values[r].tolist()))

    def to_arrow(
        self,
        query_ids: Optional[Sequence[int] | np.ndarray | torch.Tensor] = None,
        *,
        query_column: str = "query",
        neighbor_column: str = "neighbor",
        value_column: str = "cosine",
        rank_column: str = "rank",
    ):
        """A long pyarrow table: one row per (query, rank), rank 0 first.

        `query_ids` names the queries (e.g. the feature indices queried); default 0..n-1.
        """
        import pyarrow as pa

        v, i = self.numpy()
        n, k = v.shape
        if query_ids is None:
            q = np.arange(n, dtype=np.int64)
        else:
            q = np.asarray(query_ids.cpu() if isinstance(query_ids, torch.Tensor) else query_ids, dtype=np.int64)
            if q.shape != (n,):
                raise InvalidOptionError(f"query_ids must have {n} entries, got shape {q.shape}", option="query_ids")
        return pa.table({
            query_column: pa.array(np.repeat(q, k)),
            rank_column: pa.array(np.tile(np.arange(k, dtype=np.int32), n)),
            neighbor_column: pa.array(i.reshape(-1)),
            value_column: pa.array(v.reshape(-1), type=pa.float32()),
        })


def _as_tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(dtype)


_LOW = (1 << 32) - 1
_KEY_MIN = torch.iinfo(torch.int64).min


def _order_key(v: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """One int64 per entry ordering (value descending, index ascending): the float32 bits made
    order-preserving in the high half, the complement of index + 1 in the low half. NaN
    ranks as -inf; an empty slot (index < 0) below everything."""
    v = v.float()
    v = torch.where(torch.isnan(v), _NEG, v) + 0.0  # + 0.0 turns -0.0 into +0.0
    b = v.view(torch.int32)
    b = torch.where(b < 0, b ^ 0x7FFFFFFF, b).to(torch.int64)
    key = b * (1 << 32) + (_LOW - (i + 1))
    return torch.where(i < 0, _KEY_MIN, key)


def _topk_merge(v: torch.Tensor, i: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of each row of (v, i), unsorted; ties at the k-th value keep the lower
    indices (exactly, through `_order_key`), so results never depend on block sizes."""
    if v.shape[1] <= k:
        return v, i
    _, pos = torch.topk(_order_key(v, i), k, dim=1, sorted=False)
    return v.gather(1, pos), i.gather(1, pos)


def _sort_rows(v: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by value descending (NaN as -inf), ties by index ascending, slots with
    index < 0 (placeholders) after everything."""
    _, o = torch.sort(_order_key(v, i), dim=1, descending=True)
    return v.gather(1, o), i.gather(1, o)


def merge_topk(
    vals_a: Any, idx_a: Any, vals_b: Any, idx_b: Any, k: int, *, sorted: bool = True
) -> TopK:
    """Merge two candidate lists per row, (n, ka) and (n, kb), into each row's top k.

    Pure: nothing is modified. NaN values rank after every number; an index < 0 marks an
    empty slot (value -inf), ranked after everything. Ties keep the lower index, so the chosen
    set is deterministic; `sorted=True` orders each row by value descending, ties by index
    ascending, `sorted=False` leaves `torch.topk`'s order (what the search loops use).
    Values come back float32 and indices int64, on the inputs' device.
    """
    va, vb = _as_tensor(vals_a, torch.float32), _as_tensor(vals_b, torch.float32)
    ia, ib = _as_tensor(idx_a, torch.int64), _as_tensor(idx_b, torch.int64)
    if va.shape != ia.shape or vb.shape != ib.shape or va.ndim != 2 or va.shape[0] != vb.shape[0]:
        raise InvalidOptionError(f"shape mismatch: values {tuple(va.shape)}/{tuple(vb.shape)}, indices "
                                 f"{tuple(ia.shape)}/{tuple(ib.shape)}")
    v, i = torch.cat((va, vb), 1), torch.cat((ia, ib), 1)
    k = min(int(k), v.shape[1])
    if k < 0:
        raise InvalidOptionError(f"k must be >= 0, got {k}", option="k")
    if sorted:
        sv, si = _sort_rows(v, i)
        return TopK(sv[:, :k].contiguous(), si[:, :k].contiguous())
    _, pos = torch.topk(_order_key(v, i), k, dim=1, sorted=False)
    return TopK(v.gather(1, pos), i.gather(1, pos))


class _Running:
    """Running top-k of n rows: values, ids (-1: empty slot) and each row's k-th value."""

    __slots__ = ("k", "vals", "idx", "thr")

    def __init__(self, n: int, k: int, device: torch.device) -> None:
        self.k = k
        self.vals = torch.full((n, k), _NEG, dtype=torch.float32, device=device)
        self.idx = torch.full((n, k), -1, dtype=torch.int64, device=device)
        self.thr = torch.full((n,), _NEG, dtype=torch.float32, device=device)

    def warm(self, r0: int, r1: int) -> bool:
        """Whether every row in r0..r1-1 holds k candidates (its threshold is finite)."""
        return bool(self.thr[r0:r1].min() > _NEG)

    def merge(self, rows: slice | torch.Tensor, cv: torch.Tensor, ci: torch.Tensor) -> None:
        v = torch.cat((self.vals[rows], cv.float()), 1)
        i = torch.cat((self.idx[rows], ci), 1)
        tv, ti = _topk_merge(v, i, self.k)
        self.vals[rows] = tv
        self.idx[rows] = ti
        self.thr[rows] = tv.amin(1)
