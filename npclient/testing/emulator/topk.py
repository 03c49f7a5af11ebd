"""Exact cosine top-k of decoder rows: what the emulator serves as `topkCosSim*` (and the
dense oracle tests compare with)."""

from __future__ import annotations

import numpy as np

__all__ = ["cosine_topk"]


def _normalise(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows (float32) and a mask of rows whose cosine is undefined (zero or non-finite)."""
    w = np.asarray(weights, dtype=np.float32)
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        wn = w / norms
    bad = ~np.isfinite(wn).all(axis=1)
    wn[bad] = np.nan
    return wn, bad


def _topk_rows(wn: np.ndarray, bad: np.ndarray, start: int, stop: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k neighbours of rows start..stop-1 (see `cosine_topk`)."""
    n = wn.shape[0]
    k = min(k, n)
    with np.errstate(invalid="ignore"):
        sims = wn[start:stop] @ wn.T  # NaN wherever either row is undefined
    rows = np.arange(start, stop)
    key = np.where(np.isnan(sims), -np.inf, sims)
    key[rows - start, rows] = np.inf
    part = np.argpartition(-key, k - 1, axis=1)[:, :k]
    pkey = np.take_along_axis(key, part, axis=1)
    chosen = np.take_along_axis(part, np.lexsort((part, -pkey), axis=-1), axis=1)
    # argpartition picks arbitrarily among keys tied with the k-th one: redo those rows
    kth = pkey.min(axis=1)
    for r in np.flatnonzero((key >= kth[:, None]).sum(axis=1) > k):
        cand = np.flatnonzero(key[r] >= kth[r])
        chosen[r] = cand[np.lexsort((cand, -key[r, cand]))[:k]]
    vals = np.take_along_axis(sims, chosen, axis=1).astype(np.float32)
    vals[:, 0] = np.where(bad[rows], np.nan, 1.0)
    return chosen.astype(np.int64), vals


def cosine_topk(weights: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Dense blocked brute force: for each row its k most cosine-similar rows.

    Zero (or NaN) rows have undefined cosine: they rank after every defined value, ties
    broken by index. Position 0 is always the row itself, with 1.0 (NaN for an undefined row).
    """
    wn, bad = _normalise(weights)
    n = wn.shape[0]
    parts = [_topk_rows(wn, bad, st, min(st + block, n), k) for st in range(0, n, block)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
