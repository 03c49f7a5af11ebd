"""Seeded synthetic SAE decoders with planted structure (numpy only).

The emulator derives `topkCosSim*` from these weights, and geometry tests can check that a
kNN over the same weights finds what was planted: a circle of seven features (the
"days of the week" of Engels et al.), split families (a parent and near-copies), and an
all-zero row whose cosine is undefined.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["SyntheticDecoder", "make_synthetic", "make_decoder", "CIRCLE_SIZE", "FAMILY_SIZES"]

CIRCLE_SIZE = 7
FAMILY_SIZES: tuple[int, ...] = (4, 3, 4)  # children per family
_CIRCLE_OFFSET = 1.0  # weight of the shared direction; mean pairwise cosine ~0.6
_CIRCLE_RADIUS = 0.72
_CIRCLE_NOISE = 0.03
_CHILD_SPREAD = 0.35  # child = parent + ~spread * orthogonal unit: cos(parent, child) ~0.9-0.97


@dataclass(frozen=True, eq=False)
class SyntheticDecoder:
    """Decoder weights plus the indices of what was planted in them."""

    weights: np.ndarray  # float32, (d_sae, d_in)
    circle: list[int]
    families: dict[int, list[int]]  # parent index -> child indices
    zero_rows: list[int]
    nan_rows: list[int] = field(default_factory=list)

    @property
    def planted(self) -> list[int]:
        """Every planted index, in a stable order."""
        out = list(self.circle)
        for parent, children in self.families.items():
            out.append(parent)
            out.extend(children)
        return out + list(self.zero_rows) + list(self.nan_rows)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _orthonormal(rng: np.random.Generator, d_in: int, k: int) -> np.ndarray:
    """k orthonormal rows in R^d_in (k <= d_in)."""
    q, _ = np.linalg.qr(rng.standard_normal((d_in, k)))
    return q.T


def min_d_sae() -> int:
    """Smallest d_sae that holds all planted rows."""
    return CIRCLE_SIZE + sum(1 + n for n in FAMILY_SIZES) + 2


def make_synthetic(d_sae: int, d_in: int, seed: int, *, nan_row: bool = False) -> SyntheticDecoder:
    """Build a reproducible decoder: gaussian unit-ish rows plus planted structure.

    Same (d_sae, d_in, seed, nan_row) gives bit-identical weights on any machine with the
    same numpy (PCG64 streams are stable).
    """
    if d_sae < min_d_sae():
        raise ValueError(f"d_sae must be >= {min_d_sae()} to hold the planted rows, got {d_sae}")
    if d_in < 4:
        raise ValueError(f"d_in must be >= 4, got {d_in}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x5AE, d_sae, d_in]))
    w = rng.standard_normal((d_sae, d_in)) / np.sqrt(d_in)

    order = rng.permutation(d_sae)
    pos = 0

    # Circle: an offset circle in the 3-D span of (c, u, v), so cosines are clearly positive.
    circle = sorted(int(i) for i in order[pos : pos + CIRCLE_SIZE])
    pos += CIRCLE_SIZE
    c, u, v = _orthonormal(rng, d_in, 3)
    theta = 2 * np.pi * np.arange(CIRCLE_SIZE) / CIRCLE_SIZE + rng.uniform(0, 2 * np.pi)
    pts = _CIRCLE_OFFSET * c + _CIRCLE_RADIUS * (np.cos(theta)[:, None] * u + np.sin(theta)[:, None] * v)
    pts += _CIRCLE_NOISE * rng.standard_normal(pts.shape) / np.sqrt(d_in)
    w[circle] = pts / np.linalg.norm(pts, axis=1, keepdims=True)

    families: dict[int, list[int]] = {}
    for n_children in FAMILY_SIZES:
        parent = int(order[pos])
        children = sorted(int(i) for i in order[pos + 1 : pos + 1 + n_children])
        pos += 1 + n_children
        p = _unit(rng.standard_normal(d_in))
        w[parent] = p
        for child in children:
            e = rng.standard_normal(d_in)
            e = _unit(e - (e @ p) * p)
            w[child] = _unit(p + _CHILD_SPREAD * rng.uniform(0.7, 1.3) * e)  # distinct cosines: no ties
        families[parent] = children

    zero_rows = [int(order[pos])]
    pos += 1
    w[zero_rows] = 0.0
    nan_rows: list[int] = []
    if nan_row:
        nan_rows = [int(order[pos])]
        w[nan_rows] = np.nan
    return SyntheticDecoder(w.astype(np.float32), circle, families, zero_rows, nan_rows)


def make_decoder(d_sae: int, d_in: int, seed: int, *, nan_row: bool = False) -> np.ndarray:
    """Just the weights of `make_synthetic` (float32, shape (d_sae, d_in))."""
    return make_synthetic(d_sae, d_in, seed, nan_row=nan_row).weights
