"""Subspace tools over decoder rows: PCA, clustering, UMAP, null spaces, suppression.

These answer questions about the *shape* of a chosen set of features (is there a circle? a
tree? what can a head not see?) rather than about single neighbours (that is `knn`). They
work on small, chosen sets (PCA, clustering) or on one pass over a whole decoder with an
r-column matrix (null space, suppression), so numpy in float64 is exact enough and fast
enough; only UMAP needs a neighbour graph, and it takes ours (`knn.all_pairs_topk`, exact)
instead of umap-learn's approximate one.

Inputs may be numpy arrays or torch tensors (any device, any float dtype); outputs are numpy
arrays on the CPU. Rows that are all zero or contain NaN have no direction: every tool skips
them or reports NaN for them, and never counts them as a finding (a zero row is not
"invisible to a head", it is nothing at all).

Nothing here imports torch, scipy or umap at module import: `import npclient` stays light.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from collections.abc import Iterator
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from ..errors import FeatureOutOfRange, InvalidOptionError

__all__ = [
    "PCAResult",
    "ClusterResult",
    "NullSpaceResult",
    "SuppressionResult",
    "pca",
    "circular_order",
    "cluster",
    "umap_embed",
    "null_space_fraction",
    "suppression",
    "DEFAULT_MAX_CLUSTER_FEATURES",
]

ArrayLike = Any  # numpy array, torch tensor, or anything np.asarray takes
Features = Optional[Union[Sequence[int], np.ndarray]]

#: cluster() needs all n(n-1)/2 distances of its set (and scipy's linkage is O(n^2) memory and
#: up to O(n^3) time); 5,000 features is 12.5M distances, about a second and 100 MB.
DEFAULT_MAX_CLUSTER_FEATURES = 5000

_BLOCK_ROWS = 8192  # rows per float64 block in the whole-decoder passes (8192 x 2304 x 8 B = 150 MB)


# ---- inputs ---------------------------------------------------------------------------------------


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """A numpy view/copy of `x` on the CPU; half-precision tensors become float32 (numpy has no bf16)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        t = x.detach().cpu()
        if t.dtype.is_floating_point and t.element_size() < 4:
            t = t.float()
        return t.numpy()
    return np.asarray(x)


def _matrix(x: ArrayLike, name: str) -> np.ndarray:
    a = _to_numpy(x)
    if a.ndim != 2:
        raise InvalidOptionError(f"{name} must be 2-D, got shape {tuple(a.shape)}", option=name)
    return a


def _feature_ids(n: int, features: Features) -> np.ndarray:
    """The chosen row indices as int64 (all rows when None), checked against the row count."""
    if features is None:
        return np.arange(n, dtype=np.int64)
    ids = np.asarray(_to_numpy(features) if hasattr(features, "detach") else list(features), dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < -n or ids.max() >= n):
        bad = ids[(ids < -n) | (ids >= n)][0]
        raise FeatureOutOfRange(f"feature {int(bad)} is out of range for {n} rows", option="features")
    return np.where(ids < 0, ids + n, ids)


def _rows(W: ArrayLike, features: Features, dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """(rows of W at `features` as a new `dtype` array, the feature ids). Indexes before converting,
    so choosing 10 rows of a GPU tensor copies 10 rows, not the decoder."""
    if hasattr(W, "detach") and hasattr(W, "shape"):
        if len(W.shape) != 2:
            raise InvalidOptionError(f"W must be 2-D, got shape {tuple(W.shape)}", option="W")
        ids = _feature_ids(int(W.shape[0]), features)
        sub = W if features is None else W[ids.tolist()]
        return np.array(_to_numpy(sub), dtype=dtype), ids
    a = _matrix(W, "W")
    ids = _feature_ids(a.shape[0], features)
    return np.array(a if features is None else a[ids], dtype=dtype), ids


def _row_count(W: ArrayLike) -> int:
    return int(W.shape[0]) if hasattr(W, "shape") else len(_to_numpy(W))


def _row_blocks(W: ArrayLike, ids: np.ndarray, width: int, expected: str) -> Iterator[tuple[slice, np.ndarray]]:
    """W's rows at `ids` as float64 blocks of `_BLOCK_ROWS`, so a whole decoder is never
    converted at once; each block is checked to be `width` wide (`expected` ends the error)."""
    for start in range(0, len(ids), _BLOCK_ROWS):
        X, _ = _rows(W, ids[start : start + _BLOCK_ROWS])
        if X.shape[1] != width:
            raise InvalidOptionError(f"W rows have width {X.shape[1]} but {expected}", option="W")
        yield slice(start, start + len(X)), X


def _valid_rows(X: np.ndarray) -> np.ndarray:
    """Rows with a direction: all finite and not all zero."""
    return np.isfinite(X).all(axis=1) & (np.abs(X).sum(axis=1) > 0)


# ---- PCA ------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PCAResult:
    """PCA of a feature set. Row i of `coords` is feature `features[i]`.

    `components` (c, d_in) are unit directions in the decoder's space, signed so that each
    one's largest-magnitude entry is positive (the same input gives the same picture, never a
    mirrored one). `explained_variance_ratio` is each component's share of the set's total
    variance (about the mean when centred, about the origin otherwise). `mean` is what was
    subtracted (zeros when not centred). Rows with NaN were dropped: `features` lists the rows
    used.
    """

    coords: np.ndarray  # (m, c) float64
    explained_variance_ratio: np.ndarray  # (c,)
    components: np.ndarray  # (c, d_in)
    features: np.ndarray  # (m,) int64
    mean: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))  # (d_in,)


def pca(
    W: ArrayLike,
    features: Features,
    *,
    n_components: int = 2,
    center: bool = True,
    seed: int = 0,
) -> PCAResult:
    """Principal components of the rows `features` of W (all rows when None).

    Exact SVD in float64 (the sets are small; an exact answer makes the picture
    reproducible). `seed` is accepted for API symmetry with `umap_embed`: the SVD is
    deterministic and uses no randomness. Rows containing NaN are dropped (they would
    poison every component); zero rows are kept, as points at the origin.
    """
    del seed  # deterministic; see docstring
    X, ids = _rows(W, features)
    keep = np.isfinite(X).all(axis=1)
    X, ids = X[keep], ids[keep]
    m, d = X.shape
    if m < 2:
        raise InvalidOptionError(f"PCA needs at least 2 rows without NaN, got {m}", option="features")
    c = int(n_components)
    if not 1 <= c <= min(m, d):
        raise InvalidOptionError(f"n_components must be in [1, {min(m, d)}] for {m} rows of width {d}, got {n_components}",
                                 option="n_components")
    mean = X.mean(axis=0) if center else np.zeros(d)
    Xc = X - mean
    _, s, Vt = np.linalg.svd(Xc, full_matrices=False)
    comps = Vt[:c]
    signs = np.sign(comps[np.arange(c), np.argmax(np.abs(comps), axis=1)])
    signs[signs == 0] = 1.0
    comps = comps * signs[:, None]
    var = s**2
    total = var.sum()
    ratio = var[:c] / total if total > 0 else np.zeros(c)
    return PCAResult(coords=Xc @ comps.T, explained_variance_ratio=ratio, components=comps, features=ids, mean=mean)


def circular_order(coords: ArrayLike) -> list[int]:
    """Positions of the points sorted by angle around their centroid (counter-clockwise from +x).

    Uses the first two columns. A planted cycle (days of the week) should come out as a
    rotation of 0..n-1 or of its reverse: the direction and the starting point of a PCA
    picture are arbitrary, the cyclic order is not.
    """
    P = _matrix(coords, "coords").astype(np.float64)
    if P.shape[1] < 2:
        raise InvalidOptionError(f"coords need at least 2 columns, got {P.shape[1]}", option="coords")
    P = P[:, :2] - P[:, :2].mean(axis=0)
    angles = np.arctan2(P[:, 1], P[:, 0])
    return [int(i) for i in np.argsort(angles, kind="stable")]


# ---- hierarchical clustering ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ClusterResult:
    """Hierarchical clustering of a feature set.

    `linkage` is scipy's (m-1, 4) matrix over the rows in `features` order (leaf i is
    `features[i]`); heights are cosine distances (1 - cos) for "single", "complete",
    "average" and "weighted", Euclidean distances between unit rows for the others.
    `leaf_order` lists positions into `features` left to right in the dendrogram (scipy's
    `leaves_list`; `leaf_features` gives the feature ids in that order). `labels` (m,) are
    flat cluster numbers (1-based, scipy's) when a threshold or a cluster count was asked
    for, else None. Zero and NaN rows were dropped (cosine is undefined for them):
    `features` lists the rows clustered, `dropped` the ones left out.
    """

    linkage: np.ndarray
    leaf_order: np.ndarray  # (m,) positions into `features`
    labels: Optional[np.ndarray]  # (m,) int, aligned with `features`
    features: np.ndarray  # (m,) int64
    method: str = "average"
    dropped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def leaf_features(self) -> np.ndarray:
        """Feature ids left to right in the dendrogram."""
        return self.features[self.leaf_order]


_EUCLIDEAN_METHODS = ("ward", "centroid", "median")
_METHODS = ("single", "complete", "average", "weighted") + _EUCLIDEAN_METHODS


def cluster(
    W: ArrayLike,
    features: Features,
    *,
    threshold: Optional[float] = None,
    n_clusters: Optional[int] = None,
    method: str = "average",
    max_features: int = DEFAULT_MAX_CLUSTER_FEATURES,
) -> ClusterResult:
    """Agglomerative clustering of rows `features` of W on cosine distance (scipy linkage).

    `threshold` cuts the tree into flat clusters whose merge height is at most `threshold`
    (a cosine distance, 1 - cos, for "single"/"complete"/"average"/"weighted");
    `n_clusters` cuts it into that many instead; give at most one. "ward", "centroid" and
    "median" need Euclidean geometry: they run on the unit-normalised rows, whose squared
    Euclidean distance is 2 (1 - cos), so they still order by cosine; their heights (and so
    `threshold`) are scipy's, in Euclidean units (sqrt(2 (1 - cos)) for two single
    features; Ward heights also grow with cluster size): prefer `n_clusters` with them.

    The set is refused when larger than `max_features`: linkage needs all n^2/2 distances,
    which is what makes clustering a whole decoder (16k-1M rows) infeasible; choose a set.
    """
    from scipy.cluster.hierarchy import fcluster, leaves_list, linkage
    from scipy.spatial.distance import pdist

    if method not in _METHODS:
        raise InvalidOptionError(f"method must be one of {', '.join(_METHODS)}; got {method!r}", option="method")
    if threshold is not None and n_clusters is not None:
        raise InvalidOptionError("give threshold or n_clusters, not both", option="n_clusters")
    n_rows = _row_count(W)
    size = n_rows if features is None else len(_feature_ids(n_rows, features))
    if size > max_features:
        raise InvalidOptionError(
            f"cluster: {size} features is over the cap of {max_features} (max_features); "
            f"choose fewer features or raise the cap", option="features"
        )
    X, ids = _rows(W, features)
    valid = _valid_rows(X)
    dropped, X, ids = ids[~valid], X[valid], ids[valid]
    if X.shape[0] < 2:
        raise InvalidOptionError(f"clustering needs at least 2 rows with a direction (non-zero, no NaN), got {X.shape[0]}",
                                 option="features")
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    if method in _EUCLIDEAN_METHODS:
        Z = linkage(X, method=method, metric="euclidean")
    else:
        # 1 - X X^T on unit rows equals scipy's cosine metric; clip rounding below 0.
        dist = np.clip(pdist(X, metric="cosine"), 0.0, 2.0)
        Z = linkage(dist, method=method)
    labels: Optional[np.ndarray] = None
    if threshold is not None:
        labels = fcluster(Z, t=float(threshold), criterion="distance")
    elif n_clusters is not None:
        if n_clusters < 1:
            raise InvalidOptionError(f"n_clusters must be >= 1, got {n_clusters}", option="n_clusters")
        labels = fcluster(Z, t=int(n_clusters), criterion="maxclust")
    return ClusterResult(
        linkage=Z, leaf_order=leaves_list(Z).astype(np.int64), labels=labels, features=ids, method=method, dropped=dropped
    )


# ---- UMAP ---------------------------------------------------------------------------------------


def umap_embed(
    W: ArrayLike,
    *,
    k: int = 15,
    seed: int = 0,
    n_epochs: Optional[int] = None,
    features: Features = None,
    progress: Optional[Callable[..., Any]] = None,
    min_dist: float = 0.1,
    device: Optional[str] = None,
) -> np.ndarray:
    """2-D UMAP of decoder rows (all rows, or `features`), on cosine geometry.

    umap-learn's own neighbour search is approximate (NN-descent); ours is exact and, on a
    GPU, faster. So the k-NN graph comes from `knn.all_pairs_topk` (self first, as UMAP
    expects) and is handed to umap-learn as `precomputed_knn` with distance 1 - cos.
    Zero and NaN rows have no cosine neighbours: they are left out of the embedding and get
    NaN coordinates. Returns (m, 2) float32 aligned with `features` (or with W's rows).
    `progress` is passed to the neighbour search (the long part on big decoders);
    `seed` makes the layout reproducible (umap-learn then runs single-threaded).
    """
    X, ids = _rows(W, features, dtype=np.float32)
    valid = _valid_rows(X)
    Xv = X[valid]
    n = Xv.shape[0]
    if k < 2:
        raise InvalidOptionError(f"k must be >= 2 (self plus at least one neighbour), got {k}", option="k")
    if n <= k:
        raise InvalidOptionError(f"UMAP with k={k} needs more than {k} rows with a direction, got {n}", option="k")
    Xv /= np.linalg.norm(Xv, axis=1, keepdims=True)

    from .knn import all_pairs_topk  # looked up through the facade: tests spy on it there

    knn_kwargs: dict[str, Any] = {}
    if progress is not None:
        knn_kwargs["progress"] = progress
    if device is not None:
        knn_kwargs["device"] = device
    top = all_pairs_topk(Xv, k, **knn_kwargs)
    indices = np.ascontiguousarray(_to_numpy(top.indices), dtype=np.int32)
    dists = np.clip(1.0 - _to_numpy(top.values).astype(np.float32), 0.0, 2.0)
    bad = ~np.isfinite(dists) | (indices < 0)
    if bad.any():  # cannot happen for valid rows, but UMAP must never see NaN: disconnect the edge
        indices[bad], dists[bad] = -1, np.inf
    dists = np.ascontiguousarray(dists, dtype=np.float32)

    import umap  # slow import (numba): only here

    reducer = umap.UMAP(
        n_neighbors=k,
        n_components=2,
        metric="cosine",
        min_dist=min_dist,
        n_epochs=n_epochs,
        random_state=seed,
        precomputed_knn=(indices, dists, None),
    )
    with warnings.catch_warnings():
        # Expected: no NNDescent index (we never transform new data), and random_state forcing n_jobs=1.
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        warnings.filterwarnings("ignore", message=".*n_jobs.*overridden.*")
        emb = reducer.fit_transform(Xv)
    out = np.full((len(ids), 2), np.nan, dtype=np.float32)
    out[valid] = np.asarray(emb, dtype=np.float32)
    return out


# ---- null space of a matrix (what a head cannot see) ----------------------------------------------


@dataclass(frozen=True, eq=False)
class NullSpaceResult:
    """Each feature's share of squared norm in M's column space and in its orthogonal complement.

    For M = a head's W_K (d_in x d_head, keys computed as `x @ W_K`), a feature with
    `fraction_in_colspace` near 0 produces (almost) no key: the head cannot attend to it.
    The two fractions sum to 1 (NaN for zero/NaN rows). `invisible` lists the feature ids
    with colspace fraction <= threshold. `rank` is the rank of M found; `chance` = rank/d_in
    is the colspace fraction of a random direction, the baseline to compare against.
    """

    fraction_in_colspace: np.ndarray  # (n,) float64
    fraction_in_nullspace: np.ndarray  # (n,) float64
    invisible: np.ndarray  # int64 feature ids
    threshold: float
    rank: int
    chance: float
    features: np.ndarray  # (n,) int64

    @property
    def invisible_mask(self) -> np.ndarray:
        """(n,) bool aligned with `features`: True where the feature is invisible."""
        return np.isin(self.features, self.invisible)


def _colspace_basis(M: np.ndarray, rtol: Optional[float]) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal bases (d_in x rank, d_in x (d_in - rank)) of M's column space and its complement.

    The rank tolerance defaults to numpy's matrix_rank rule with the epsilon of M's *stored*
    dtype: a float32 W_K whose null directions were exact in float64 keeps ~1e-8 of leakage
    from the rounding, which must count as zero.
    """
    if not np.isfinite(M).all():
        raise InvalidOptionError("the matrix M contains NaN or inf", option="M")
    eps = np.finfo(M.dtype).eps if np.issubdtype(M.dtype, np.floating) else np.finfo(np.float64).eps
    M64 = M.astype(np.float64)
    U, s, _ = np.linalg.svd(M64, full_matrices=True)
    tol = (max(M.shape) * eps if rtol is None else float(rtol)) * (s[0] if s.size else 0.0)
    rank = int((s > tol).sum()) if s.size and s[0] > 0 else 0
    return U[:, :rank], U[:, rank:]


def null_space_fraction(
    W: ArrayLike,
    M: ArrayLike,
    *,
    threshold: float = 0.01,
    features: Features = None,
    rtol: Optional[float] = None,
) -> NullSpaceResult:
    """How much of each feature direction lies in the column space of M (d_in x r) vs outside it.

    fraction_in_colspace = |d Q|^2 / |d|^2 with Q an orthonormal basis of M's column space
    (SVD, rank by tolerance `rtol` relative to the largest singular value; default: the
    matrix_rank rule for M's dtype). The complement is measured the same way with the
    orthogonal basis, not as 1 - x, so tiny fractions on either side stay exact.

    `threshold` (default 0.01): a feature is *invisible* when its colspace fraction is at most
    this. The default is far below chance level (rank/d_in: 64/768 = 0.083 for a GPT-2 head,
    16/64 = 0.25 for the toy head), so it only catches features that are truly (almost)
    orthogonal to everything the head reads; a threshold near chance would flag ordinary
    features. Zero and NaN rows get NaN fractions and are never invisible.
    """
    Mn = _matrix(M, "M")
    d_in = Mn.shape[0]
    Q, Qperp = _colspace_basis(Mn, rtol)
    if hasattr(W, "shape") and len(W.shape) == 2 and int(W.shape[1]) != d_in:
        raise InvalidOptionError(f"W rows have width {int(W.shape[1])} but M has {d_in} rows (expected d_in x r)", option="M")
    n_rows = _row_count(W)
    ids = _feature_ids(n_rows, features)
    col = np.empty(len(ids))
    null = np.empty(len(ids))
    for block, X in _row_blocks(W, ids, d_in, f"M has {d_in} rows (expected d_in x r)"):
        norm2 = np.einsum("ij,ij->i", X, X)
        a = X @ Q
        b = X @ Qperp
        with np.errstate(invalid="ignore", divide="ignore"):
            c = np.einsum("ij,ij->i", a, a) / norm2
            z = np.einsum("ij,ij->i", b, b) / norm2
        undefined = ~_valid_rows(X)
        c[undefined] = np.nan
        z[undefined] = np.nan
        col[block] = c
        null[block] = z
    with np.errstate(invalid="ignore"):
        invisible = ids[np.isfinite(col) & (col <= threshold)]
    rank = Q.shape[1]
    return NullSpaceResult(
        fraction_in_colspace=col, fraction_in_nullspace=null, invisible=invisible, threshold=float(threshold),
        rank=rank, chance=rank / d_in if d_in else float("nan"), features=ids,
    )


# ---- suppression by an OV map ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SuppressionResult:
    """How strongly an OV map writes each feature back as its own negative.

    `score` is the negative self-gain -(d . (d @ OV)) / |d|^2 (see `suppression`);
    `cosine` is -cos(d, d @ OV): 1 for a pure negative copy, whatever the gain. `suppressed`
    lists feature ids with score >= threshold (and cosine >= min_cosine when given),
    strongest first. NaN for zero/NaN rows, which are never suppressed.
    """

    score: np.ndarray  # (n,) float64
    cosine: np.ndarray  # (n,) float64
    suppressed: np.ndarray  # int64 feature ids, by descending score
    threshold: float
    features: np.ndarray  # (n,) int64

    @property
    def suppressed_mask(self) -> np.ndarray:
        """(n,) bool aligned with `features`: True where the feature is suppressed."""
        return np.isin(self.features, self.suppressed)


def suppression(
    W: ArrayLike,
    OV: ArrayLike,
    *,
    threshold: float = 1.0,
    min_cosine: Optional[float] = None,
    features: Features = None,
) -> SuppressionResult:
    """Which features an OV map (d_in x d_in, applied as `d @ OV`) suppresses.

    Definition: score(d) = -(d . (d @ OV)) / |d|^2, the coefficient of d's own direction in
    what the head writes when it reads d, negated. score 2 means the head writes -2 d
    along d (plus whatever goes elsewhere); 0 means it writes nothing back along d; negative
    means it copies d. This is the quadratic form of OV's symmetric part, so it is
    independent of d's norm and sign, and of anything the head writes orthogonally to d.

    Threshold semantics: a feature is suppressed when score >= `threshold`. The default 1.0
    means that the head's output along d is at least as large as d itself and opposite, i.e.
    adding the head's output to a residual stream holding d would cancel d entirely. Since the
    score has the head's scale, a head with a small OV norm needs a lower threshold: compare
    against the score's distribution, or add `min_cosine` (0..1), which also requires
    -cos(d, d @ OV) >= min_cosine: that the output is mostly the negative copy and not a
    large write elsewhere with a small negative component.
    """
    OVn = _matrix(OV, "OV").astype(np.float64)
    if OVn.shape[0] != OVn.shape[1]:
        raise InvalidOptionError(f"OV must be square (d_in x d_in), got {tuple(OVn.shape)}", option="OV")
    d_in = OVn.shape[0]
    n_rows = _row_count(W)
    ids = _feature_ids(n_rows, features)
    score = np.empty(len(ids))
    cosine = np.empty(len(ids))
    for block, X in _row_blocks(W, ids, d_in, f"OV is {d_in} x {d_in}"):
        Y = X @ OVn
        self_dot = np.einsum("ij,ij->i", X, Y)
        norm2 = np.einsum("ij,ij->i", X, X)
        ynorm = np.sqrt(np.einsum("ij,ij->i", Y, Y))
        with np.errstate(invalid="ignore", divide="ignore"):
            s = -self_dot / norm2
            c = np.where(ynorm > 0, -self_dot / (np.sqrt(norm2) * ynorm), 0.0)
        undefined = ~_valid_rows(X)
        s[undefined] = np.nan
        c[undefined] = np.nan
        score[block] = s
        cosine[block] = c
    with np.errstate(invalid="ignore"):
        hit = np.isfinite(score) & (score >= threshold)
        if min_cosine is not None:
            hit &= cosine >= float(min_cosine)
    order = np.argsort(-score[hit], kind="stable")
    return SuppressionResult(
        score=score, cosine=cosine, suppressed=ids[hit][order], threshold=float(threshold), features=ids
    )
