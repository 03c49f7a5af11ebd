"""Geometry questions asked of a mirror: decoder rows in, tables joined with explanations out.

Each function takes a `Mirror` whose source has weights attached (`np-mirror weights add`),
runs the torch engine (`topk`, `subspace`), stores what is worth keeping (`Mirror.store`), and
returns an Arrow table that carries each feature's top explanation, so a researcher reads
meanings, not indices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np
import pyarrow as pa

from ..errors import FeatureOutOfRange, InvalidOptionError, WeightsError
from ..ids import FeatureId, FeatureIdLike, SourceId

if TYPE_CHECKING:
    from ..mirror import Mirror

SourceLike = Union[SourceId, str]
Progress = Optional[Callable[[int, int], None]]

#: Hierarchical clustering needs every pairwise distance of the set: n² of them.
CLUSTER_CAP = 5000


def _sid(source: SourceLike) -> SourceId:
    return source if isinstance(source, SourceId) else SourceId.parse(source)


def _decoder(mirror: "Mirror", sid: SourceId, device: Any = None) -> Any:
    return mirror.decoder(sid, device=device)


def with_explanations(mirror: "Mirror", sid: SourceId, table: pa.Table, column: str = "index",
                      name: str = "explanation") -> pa.Table:
    """`table` plus the top explanation of the feature in `column` (null when unknown)."""
    return mirror.store.with_explanations(sid, table, column, name).drop_columns(["rowid_"])


def _numbered(columns: dict[str, Any]) -> pa.Table:
    n = len(next(iter(columns.values())))
    # from buffers, not pa.array: pyarrow's first pa.array call in a process imports pandas (~0.3 s)
    rowid = pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(np.arange(n, dtype=np.int64))])
    return pa.table({"rowid_": rowid, **columns})


def feature_count(mirror: "Mirror", sid: SourceId) -> Optional[int]:
    """How many features `sid` has: the count the mirror learned, else the attached decoder's rows."""
    count = mirror.store.feature_count(sid)
    if count:
        return int(count)
    record = mirror.store.weights(sid)
    return int(record.d_sae) if record is not None else None


def _beyond(indices: Sequence[int], sid: SourceId, count: int) -> str:
    shown = ", ".join(str(i) for i in indices[:5]) + (", ..." if len(indices) > 5 else "")
    return f"{shown} {'is' if len(indices) == 1 else 'are'} beyond {sid}, which has {count:,} features (0..{count - 1})"


def check_indices(mirror: "Mirror", sid: SourceId, indices: Sequence[int], option: Optional[str] = None) -> None:
    """Refuse indices outside the source (FeatureOutOfRange) before any work is done, where its
    size is known (else the decoder's own check applies when it loads)."""
    count = feature_count(mirror, sid)
    bad = [int(i) for i in indices if int(i) < 0 or (count is not None and int(i) >= count)]
    if bad:
        what = _beyond(bad, sid, count) if count is not None else f"{', '.join(map(str, bad[:5]))}: a negative index"
        raise FeatureOutOfRange(f"{option or ('feature' if len(bad) == 1 else 'features')} {what}", option=option)


def select_features(mirror: "Mirror", source: SourceLike, *, features: Optional[Sequence[int]] = None,
                    where: Optional[str] = None) -> np.ndarray:
    """Feature indices by list or by a SQL condition on the `features` table (e.g. `top_explanation ILIKE '%day%'`).

    Listed indices beyond the source are refused here (`FeatureOutOfRange`), before any work."""
    sid = _sid(source)
    if features is not None and where is not None:
        raise InvalidOptionError("choose the features by a list (features) or by a condition (where), not both",
                                 option="where")
    if features is not None:
        chosen = sorted(set(int(i) for i in features))
        check_indices(mirror, sid, chosen, option="features")
        return np.asarray(chosen, dtype=np.int64)
    if where is None:
        raise InvalidOptionError("choose the features: a list of indices (features), or a SQL condition on the "
                                 "features table (where), e.g. \"top_explanation ILIKE '%day%'\"", option="features")
    table = mirror.features(sid, ["index"], where=where)  # one read-only SELECT: a condition never writes
    return np.asarray(table.column("index").to_pylist(), dtype=np.int64)


def neighbors(mirror: "Mirror", feature: FeatureIdLike, k: int = 10, *, against: Optional[SourceLike] = None,
              device: Any = None) -> pa.Table:
    """The k nearest decoder directions of one feature (in its own source, or in `against`).

    Within its own source a stored all-pairs table is reused when it holds k neighbours;
    otherwise one exact blocked query runs against the decoder.
    """
    from .topk import feature_topk, topk_cosine

    fid = FeatureId.coerce(feature)
    sid = fid.source_id
    check_indices(mirror, sid, [fid.index])  # an index beyond the source: refused, not an empty table
    target = _sid(against) if against is not None else sid
    if target == sid and mirror.store.stored_neighbors_k(sid) >= k:
        table = mirror.store.computed_neighbors(sid, fid.index, k)
        return with_explanations(mirror, target, _numbered({c: table.column(c) for c in table.column_names}))
    W = _decoder(mirror, sid, device)
    if not 0 <= fid.index < W.shape[0]:
        raise FeatureOutOfRange(f"{fid}: index outside the attached decoder's {W.shape[0]:,} rows (0..{W.shape[0] - 1})")
    if target == sid:  # self first, exactly as the stored all-pairs table and topkCosSim lay it out
        found = feature_topk(W, [fid.index], k, device=device)
    else:
        found = topk_cosine(W[fid.index : fid.index + 1], _decoder(mirror, target, device), k, device=device)
    width = found.indices.shape[1]
    return with_explanations(mirror, target, _numbered({
        "rank": pa.array(np.arange(width, dtype=np.int32)),
        "index": pa.array(found.indices[0].numpy().astype(np.int64)),
        "cosine": pa.array(found.values[0].double().numpy()),
    }))



def all_pairs(mirror: "Mirror", source: SourceLike, k: int = 25, *, device: Any = None, dtype: Any = None,
              progress: Progress = None, engine: str = "local", address: Optional[str] = None) -> int:
    """Every feature's k nearest neighbours (self first), stored in `neighbors`; returns rows written.

    `engine`: "local" (`all_pairs_topk` in this process) or "ray" (`npclient.distributed.ray_allpairs`
    on the Ray cluster at `address`; the actors pick their own devices). Both store the same table
    the same way (`geometry/jobs.py`, which also writes dataset units and runs many sources)."""
    from .jobs import all_pairs as run

    return run(mirror, source, k, device=device, dtype=dtype, progress=progress, engine=engine, address=address).rows


def stored_neighbors(mirror: "Mirror", source: SourceLike, *, limit: Optional[int] = None) -> pa.Table:
    """The stored all-pairs neighbours of `source` (self left out), each with both explanations,
    by feature then rank; `limit` rows at most."""
    sid = _sid(source)
    table = mirror.sql(
        f"""SELECT "index", rank, neighbor_index, cosine FROM neighbors
           WHERE model_id = ? AND source = ? AND neighbor_index <> "index" ORDER BY "index", rank
           {'LIMIT ' + str(int(limit)) if limit else ''}""",
        [sid.model_id, sid.source],
    )
    table = with_explanations(mirror, sid, _numbered({c: table.column(c) for c in table.column_names}))
    return with_explanations(mirror, sid, _numbered({c: table.column(c) for c in table.column_names}),
                             column="neighbor_index", name="neighbor_explanation")


def match(mirror: "Mirror", source_a: SourceLike, source_b: SourceLike, k: int = 1, *, device: Any = None,
          progress: Progress = None) -> pa.Table:
    """For each feature of A its k best decoder matches in B (feature splitting across widths), stored in `matches`."""
    from .topk import topk_cosine

    a, b = _sid(source_a), _sid(source_b)
    WA, WB = _decoder(mirror, a, device), _decoder(mirror, b, device)
    if WA.shape[1] != WB.shape[1]:
        raise WeightsError(f"{a} has d_in {WA.shape[1]} but {b} has {WB.shape[1]}: they live in different spaces")
    found = topk_cosine(WA, WB, k, device=device, progress=progress)
    mirror.store.save_matches(a, b, found.values.numpy(), found.indices.numpy())
    n = WA.shape[0]
    table = _numbered({
        "index": pa.array(np.repeat(np.arange(n), k)),
        "rank": pa.array(np.tile(np.arange(k, dtype=np.int32), n)),
        "match_index": pa.array(found.indices.numpy().reshape(-1).astype(np.int64)),
        "cosine": pa.array(found.values.double().numpy().reshape(-1)),
    })
    table = with_explanations(mirror, a, _numbered({c: table.column(c) for c in table.column_names if c != "rowid_"}))
    return with_explanations(mirror, b, _numbered({c: table.column(c) for c in table.column_names}),
                             column="match_index", name="match_explanation")


def head_features(mirror: "Mirror", source: SourceLike, matrix: Any, *, name: str, threshold: float = 0.01,
                  ov: Any = None, suppression_threshold: Optional[float] = None) -> pa.Table:
    """Features a head cannot see (their direction lies in the null space of `matrix`, e.g. W_K),
    and, given an OV map, the features it suppresses. Stored in `head_features`."""
    from .subspace import null_space_fraction, suppression

    sid = _sid(source)
    W = _decoder(mirror, sid).float().numpy()
    M = np.asarray(matrix, dtype=np.float64)
    if M.ndim != 2 or M.shape[0] != W.shape[1]:
        raise WeightsError(f"the matrix must be d_in x r with d_in = {W.shape[1]}, got shape {tuple(M.shape)}")
    ns = null_space_fraction(W, M, threshold=threshold)
    sup_scores = sup_flags = None
    if ov is not None:
        kwargs = {} if suppression_threshold is None else {"threshold": suppression_threshold}
        sup = suppression(W, np.asarray(ov, dtype=np.float64), **kwargs)
        sup_scores = np.asarray(sup.score)
        sup_flags = np.zeros(W.shape[0], dtype=bool)
        sup_flags[np.asarray(sup.suppressed, dtype=np.int64)] = True
    invisible = np.zeros(W.shape[0], dtype=bool)
    invisible[np.asarray(ns.invisible, dtype=np.int64)] = True
    mirror.store.save_head_features(sid, name, np.asarray(ns.fraction_in_colspace), invisible, sup_scores, sup_flags)
    table = mirror.sql(
        """SELECT "index", colspace_fraction, invisible, suppression, suppressed FROM head_features
           WHERE model_id = ? AND source = ? AND matrix = ? AND (invisible OR suppressed) ORDER BY "index\"""",
        [sid.model_id, sid.source, name],
    )
    return with_explanations(mirror, sid, _numbered({c: table.column(c) for c in table.column_names}))


def pca(mirror: "Mirror", source: SourceLike, features: np.ndarray, *, n_components: int = 2, seed: int = 0) -> tuple[Any, pa.Table]:
    """PCA of the chosen features' decoder rows (e.g. the days of the week), stored in `coordinates`."""
    from .subspace import pca as run_pca

    sid = _sid(source)
    result = run_pca(_decoder(mirror, sid).float().numpy(), features, n_components=n_components, seed=seed)
    coords = np.asarray(result.coords)
    feats = np.asarray(result.features)
    mirror.store.save_coordinates(sid, "pca", feats, coords[:, :2])
    return result, with_explanations(mirror, sid, _numbered({
        "index": pa.array(feats.astype(np.int64)), "x": pa.array(coords[:, 0]), "y": pa.array(coords[:, 1])}))


def umap(mirror: "Mirror", source: SourceLike, *, features: Optional[np.ndarray] = None, k: int = 15, seed: int = 0,
         progress: Progress = None) -> pa.Table:
    """UMAP of a source's decoder fed our exact kNN graph (cosine), stored in `coordinates`."""
    from .subspace import umap_embed

    sid = _sid(source)
    if features is not None:
        check_indices(mirror, sid, list(features), option="features")
    W = _decoder(mirror, sid).float().numpy()
    feats = np.arange(W.shape[0]) if features is None else np.asarray(features, dtype=np.int64)
    coords = np.asarray(umap_embed(W, k=k, seed=seed, features=None if features is None else feats, progress=progress))
    mirror.store.save_coordinates(sid, "umap", feats, coords)
    return with_explanations(mirror, sid, _numbered({
        "index": pa.array(feats.astype(np.int64)), "x": pa.array(coords[:, 0]), "y": pa.array(coords[:, 1])}))


def cluster(mirror: "Mirror", source: SourceLike, features: np.ndarray, *, threshold: Optional[float] = None,
            n_clusters: Optional[int] = None, run: str = "default") -> tuple[Any, pa.Table]:
    """Hierarchical clustering (cosine, average linkage) of a chosen set, stored in `clusters`."""
    from .subspace import cluster as run_cluster

    sid = _sid(source)
    if threshold is None and n_clusters is None:
        threshold = 0.5  # a flat cut is what gets stored; 0.5 cosine distance is a loose family
    result = run_cluster(_decoder(mirror, sid).float().numpy(), features, threshold=threshold,
                         n_clusters=n_clusters, max_features=CLUSTER_CAP)
    feats = np.asarray(result.features)
    mirror.store.save_clusters(sid, run, feats, np.asarray(result.labels), result.leaf_order)
    return result, with_explanations(mirror, sid, _numbered({
        "index": pa.array(feats.astype(np.int64)), "label": pa.array(np.asarray(result.labels).astype(np.int32))}))
