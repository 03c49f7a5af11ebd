"""Unit rows on the CPU, in numpy: the one normalisation both CPU engines use (torch-free).

`device.normalize_rows` (torch) and the torch-free all-pairs (`cpu_allpairs`) both call
`unit_rows` for CPU data, so their unit rows, hence their exact cosines, agree to the bit. The
norm is a float64 sum of the float32 squares, rounded once to float32: more accurate than a
float32 sum, and the same whichever library asks.
"""

from __future__ import annotations

import numpy as np

__all__ = ["unit_rows", "row_norms"]

_STEP = 1024


def unit_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit rows float32, invalid mask) of a float32 matrix.

    A row is invalid when its cosine with anything is undefined: an all-zero row, or one with a
    NaN or Inf (`~isfinite(w / |w|).all()`); invalid rows come back as zeros. A norm that
    overflows float32 on finite entries gives a finite, all-zero row: valid, as in numpy.
    """
    w = np.asarray(w, dtype=np.float32)
    n = w.shape[0]
    norms = np.empty(n, dtype=np.float32)
    unit = np.empty(w.shape, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for s in range(0, n, _STEP):  # slices that stay in cache
            x = w[s:s + _STEP]
            norms[s:s + _STEP] = row_norms(x)
            np.divide(x, norms[s:s + _STEP, None], out=unit[s:s + _STEP])
    invalid = (norms == 0) | np.isnan(norms)
    big = np.isinf(norms)
    if big.any():
        invalid[big] = ~np.isfinite(w[big]).all(axis=1)
    if invalid.any():
        unit[invalid] = 0.0
    return unit, invalid


def row_norms(x: np.ndarray) -> np.ndarray:
    """Row norms of float32 rows as float64: sums of the squares in float64, slice by slice."""
    out = np.empty(x.shape[0], dtype=np.float64)
    for s in range(0, x.shape[0], _STEP):
        xs = x[s:s + _STEP]
        out[s:s + _STEP] = np.sqrt(np.einsum("ij,ij->i", xs, xs, dtype=np.float64))
    return out
