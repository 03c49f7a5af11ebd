"""What the mirror knows about models and sources, and how complete each source is."""

from __future__ import annotations

from typing import Any, Optional

import orjson

from ..ids import SourceId
from ..models import ModelInfo, SourceInfo
from .database import Database


def save_models(db: Database, models: list[ModelInfo]) -> None:
    with db.transaction() as cur:
        for m in models:
            cur.execute(
                """INSERT INTO models (model_id, display_name, layers, dimension, raw, updated_at)
                   VALUES (?, ?, ?, ?, ?, current_timestamp)
                   ON CONFLICT (model_id) DO UPDATE SET display_name = excluded.display_name,
                     layers = excluded.layers, dimension = excluded.dimension, raw = excluded.raw,
                     updated_at = now()""",
                [m.id, m.display_name, m.layers, m.dimension, orjson.dumps(m.model_dump(by_alias=True, exclude={"source_sets"})).decode()],
            )


def save_source(
    db: Database, sid: SourceId, info: Optional[SourceInfo], feature_count: Optional[int], count_origin: Optional[str]
) -> None:
    """Record a source; a known feature count is never replaced by an unknown one."""
    cfg = (info.saelens_config or {}) if info else {}
    raw = orjson.dumps(info.model_dump(by_alias=True)).decode() if info else None
    with db.transaction() as cur:
        cur.execute(
            """INSERT INTO sources (model_id, source, set_name, feature_count, count_origin, saelens_release,
                                    saelens_sae_id, hook_name, raw, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, current_timestamp)
               ON CONFLICT (model_id, source) DO UPDATE SET
                 set_name = excluded.set_name,
                 feature_count = coalesce(excluded.feature_count, sources.feature_count),
                 count_origin = CASE WHEN excluded.feature_count IS NULL THEN sources.count_origin ELSE excluded.count_origin END,
                 saelens_release = coalesce(excluded.saelens_release, sources.saelens_release),
                 saelens_sae_id = coalesce(excluded.saelens_sae_id, sources.saelens_sae_id),
                 hook_name = coalesce(excluded.hook_name, sources.hook_name),
                 raw = coalesce(excluded.raw, sources.raw),
                 updated_at = now()""",
            [sid.model_id, sid.source, sid.set_name, feature_count, count_origin,
             info.saelens_release if info else None, info.saelens_sae_id if info else None,
             cfg.get("hook_name") if isinstance(cfg, dict) else None, raw],
        )


def stored_feature_count(db: Database, sid: SourceId) -> Optional[int]:
    with db.connect() as cur:
        rows = cur.execute(
            "SELECT feature_count FROM sources WHERE model_id = ? AND source = ?", [sid.model_id, sid.source]
        ).fetchall()
    return rows[0][0] if rows else None


def _indices(db: Database, table: str, condition: str, sid: SourceId, start: int, stop: int) -> set[int]:
    with db.connect() as cur:
        rows = cur.execute(
            f'SELECT "index" FROM {table} WHERE model_id = ? AND source = ? AND {condition} AND "index" >= ? AND "index" < ?',
            [sid.model_id, sid.source, start, stop],
        ).fetchall()
    return {r[0] for r in rows}


def present_indices(db: Database, sid: SourceId, start: int, stop: int) -> set[int]:
    """Features of `sid` in [start, stop) that the mirror holds."""
    return _indices(db, "features", "true", sid, start, stop)


def origin_indices(db: Database, sid: SourceId, start: int, stop: int, origin: str) -> set[int]:
    """Features of `sid` in [start, stop) stored from `origin` (`get`, `post` or `export`)."""
    with db.connect() as cur:
        rows = cur.execute(
            'SELECT "index" FROM features WHERE model_id = ? AND source = ? AND origin = ? AND "index" >= ? AND "index" < ?',
            [sid.model_id, sid.source, origin, start, stop],
        ).fetchall()
    return {r[0] for r in rows}


def permanent_failures(db: Database, sid: SourceId, start: int, stop: int) -> set[int]:
    """Features of `sid` in [start, stop) that stayed 404: not asked for again unless `--retry-failed`."""
    return _indices(db, "failures", "permanent", sid, start, stop)


STATUS_SQL = """
WITH f AS (
    SELECT model_id, source, count(*) AS present, sum(n_activations) AS activations,
           count(*) FILTER (WHERE origin = 'get') AS scored,
           count(*) FILTER (WHERE origin = 'export' AND umap_x IS NULL) AS no_umap,
           max(fetched_at) AS last_fetched,
           string_agg(DISTINCT origin, ',' ORDER BY origin) AS origins
    FROM features GROUP BY ALL
), e AS (
    -- from the explanations themselves, not features.n_explanations: a feature re-fetched
    -- without `explanations` in --parts keeps its stored explanations but records no count
    SELECT model_id, source, count(*) AS explanations, count(DISTINCT feature_key) AS explained
    FROM explanations GROUP BY ALL
), fl AS (
    SELECT model_id, source, count(*) AS failed FROM failures GROUP BY ALL
), keys AS (
    SELECT model_id, source FROM sources UNION SELECT model_id, source FROM f UNION SELECT model_id, source FROM fl
)
SELECT k.model_id || '/' || k.source AS source, coalesce(f.present, 0) AS present, s.feature_count AS total,
       coalesce(f.activations, 0) AS activations, coalesce(e.explanations, 0) AS explanations,
       coalesce(e.explained, 0) AS explained, coalesce(f.scored, 0) AS scored,
       coalesce(fl.failed, 0) AS failed, f.origins AS origins, f.last_fetched AS last_fetched,
       concat_ws(', ', CASE WHEN f.scored < f.present THEN 'scores' END,
                       CASE WHEN f.no_umap > 0 THEN 'umap' END) AS thin
FROM keys k
LEFT JOIN sources s USING (model_id, source)
LEFT JOIN f USING (model_id, source)
LEFT JOIN e USING (model_id, source)
LEFT JOIN fl USING (model_id, source)
ORDER BY k.model_id, try_cast(split_part(k.source, '-', 1) AS INTEGER), k.source
"""


def status_rows(db: Database) -> list[dict[str, Any]]:
    """Per source: `present`/`total` features, `activations` and `explanations` (rows),
    `explained` (distinct features with at least one stored explanation), `scored` (features whose explanations carry
    scores and Neuronpedia's order: fetched by GET), `failed`, and `thin`: the columns some
    present features lack because of where they came from ("scores": imported from an export
    or fetched by POST, see `sync --scores`; "umap": imported features without coordinates)."""
    with db.connect() as cur:
        result = cur.execute(STATUS_SQL)
        cols = [d[0] for d in result.description]
        return [dict(zip(cols, row)) for row in result.fetchall()]


# ---- the export bookkeeping the exports-first sync reads --------------------------------------


def failed_export_kinds(db: Database, sid: SourceId) -> set[str]:
    """The parts (`features`, `activations`, `explanations`) of which an export file failed."""
    with db.connect() as cur:
        kinds = cur.execute(
            "SELECT DISTINCT kind FROM export_files WHERE model_id = ? AND source = ? AND status = 'failed'",
            [sid.model_id, sid.source],
        ).fetchall()
    return {k[0] for k in kinds}


def export_file_rows(db: Database, sid: SourceId) -> list[tuple]:
    """(kind, batch, status, rows_imported, min_index, max_index) of the source's feature and
    activation files."""
    with db.connect() as cur:
        return cur.execute(
            """SELECT kind, batch, status, rows_imported, min_index, max_index FROM export_files
               WHERE model_id = ? AND source = ? AND kind IN ('features', 'activations')""",
            [sid.model_id, sid.source],
        ).fetchall()


def export_features_without_activations(db: Database, sid: SourceId, start: int, stop: int) -> list[int]:
    """Indices in [start, stop) of imported features that hold no activations."""
    with db.connect() as cur:
        return [r[0] for r in cur.execute(
            """SELECT "index" FROM features WHERE model_id = ? AND source = ? AND origin = 'export'
                 AND "index" >= ? AND "index" < ? AND coalesce(n_activations, 0) = 0""",
            [sid.model_id, sid.source, start, stop],
        ).fetchall()]
