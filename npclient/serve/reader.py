"""`MirrorReader`: the read-only queries `np-mirror serve` answers from (features, catalog,
search, decoder rows). Every statement is a constant with `?` parameters; request text never
becomes SQL. The mirror is reached through `Mirror` only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import orjson

from .. import wire
from ..errors import InvalidIdError
from ..ids import SourceId
from ..mirror import Mirror
from .shapes import (
    _act_key,
    _all_dicts,
    _by_storage_id,
    _in_rank_order,
    _model_defaults,
    _overlay,
    _release_defaults,
    _set_defaults,
    _source_defaults,
    _visible,
    dumps,
    loads,
)

__all__ = ["MirrorReader", "PageReads", "PAGE_SORTS", "PAGE_ORDERS"]

_MAX_ID = 512  # longer model/source names are unknown without asking the database
_INT_RE = re.compile(r"[0-9]+")  # an index as the pages accept it


def _valid_source(model_id: str, source_id: str) -> Optional[SourceId]:
    try:
        return SourceId(model_id, source_id)
    except (InvalidIdError, ValueError, TypeError):
        return None


def _layer_num(source_id: str) -> int:
    n = wire.layer_number(source_id)
    return n if n is not None else 1 << 30


# --------------------------------------------------------------------------- the reader

#: A source of a set: (its catalog entry, the stored listing row with the typed columns under it).
_Member = tuple[dict[str, Any], dict[str, Any]]


class MirrorReader:
    """Read-only queries the server needs; every statement is a constant with `?` parameters."""

    def __init__(self, path: str | Path, *, linger_s: float = 0.5, wait_s: float = 30.0) -> None:
        self.mirror = Mirror(path, read_only=True, linger_s=linger_s, wait_s=wait_s)

    def close(self) -> None:
        self.mirror.close()

    def rows(self, query: str, params: list[Any]) -> list[dict[str, Any]]:
        return self.mirror.store.rows(query, params)

    def has_table(self, name: str) -> bool:
        return bool(self.rows("SELECT 1 AS x FROM duckdb_tables() WHERE table_name = ?", [name]))

    # ---- features ------------------------------------------------------------------
    def source_known(self, model_id: str, source_id: str) -> bool:
        return bool(self.rows(
            "SELECT 1 AS x FROM sources WHERE model_id = ? AND source = ? "
            "UNION ALL SELECT 1 FROM features WHERE model_id = ? AND source = ? LIMIT 1",
            [model_id, source_id, model_id, source_id],
        ))

    def _stored(self, model_id: str, source_id: str, index: int) -> tuple[Optional[bytes], Optional[dict[str, Any]]]:
        """(the stored bytes, None) for a fetched feature; (None, its object) for an imported one."""
        key = f"{model_id}/{source_id}/{index}"
        body = self.mirror.store.raw_body(key)
        if body is not None:
            return body, None
        # An imported feature: the export's record (bare NaN/Infinity kept, as the export
        # wrote them) plus its typed activation and explanation rows.
        return None, self.mirror.store.export_feature(key)

    def feature_raw(self, model_id: str, source_id: str, index: int) -> Optional[dict[str, Any]]:
        """The stored object (GET, POST or export shaped), as stored."""
        body, raw = self._stored(model_id, source_id, index)
        if body is not None:
            parsed = loads(body)
            return parsed if isinstance(parsed, dict) else None
        return raw

    def feature_body(self, model_id: str, source_id: str, index: int) -> Optional[bytes]:
        """What GET /api/feature answers: the stored body with its activations ranked top-first.

        A body already in that order (a GET-origin body: Neuronpedia sorts by maxValue) and
        valid as JSON goes out byte for byte; any other (a POST item, an export, NaN) is
        parsed, ranked and written again.
        """
        body, raw = self._stored(model_id, source_id, index)
        if body is not None:
            try:
                strict = orjson.loads(body)
            except orjson.JSONDecodeError:  # NaN, Infinity, 1e400: not JSON as stored
                strict = None
            if isinstance(strict, dict) and _in_rank_order(strict.get("activations")):
                return body
            raw = loads(body)
        if not isinstance(raw, dict):
            return None if raw is None else dumps(raw)
        acts = raw.get("activations")
        if _all_dicts(acts):
            raw["activations"] = sorted(acts, key=_act_key)
        return dumps(raw)

    def features_post_item(self, model_id: str, source_id: str, index: int, max_acts: Optional[int]) -> Optional[dict[str, Any]]:
        """One element of POST /api/features (lib/db/neuron.ts `getNeurons`), from the stored body.

        The Neuron row without relations; explanations trimmed to description, model and type
        in storage order; activations in storage order, or with `max_acts` the top N (a negative
        N: Prisma's negative take, the last |N| of that order).
        """
        raw = self.feature_raw(model_id, source_id, index)
        if raw is None:
            return None
        acts = raw.pop("activations", None)
        acts = list(acts) if isinstance(acts, list) else []
        explanations = raw.pop("explanations", None)
        explanations = list(explanations) if _all_dicts(explanations) else []
        for rel in ("model", "lists", "creator", "source", "sourceSet", "comments"):
            raw.pop(rel, None)
        if max_acts and _all_dicts(acts):
            ranked = sorted(acts, key=_act_key)
            acts = ranked[:max_acts] if max_acts > 0 else ranked[max_acts:]
        else:
            acts = _by_storage_id(acts)
        raw["explanations"] = [
            {"description": e.get("description"), "explanationModelName": e.get("explanationModelName"),
             "typeName": e.get("typeName")}
            for e in _by_storage_id(explanations)
        ]
        raw["activations"] = acts
        return raw

    def features_post(self, items: list[wire.FeatureRequest], max_acts: Optional[int]) -> list[dict[str, Any]]:
        def lookup(model_id: str, layer: str, index: str) -> Optional[dict[str, Any]]:
            i = _stored_index(index)
            if i is None or _valid_source(model_id, layer) is None:
                return None  # getNeurons checks no access: what is not there is simply not returned
            return self.features_post_item(model_id, layer, i, max_acts)

        return wire.order_features_post(items, lookup)

    def vector(self, model_id: str, source_id: str, index: int) -> Optional[dict[str, Any]]:
        """POST /api/vector/get's `vector` (lib/db/neuron.ts `getVectorFromDb`) from a stored body
        whose `vector` is non-empty (a steering vector synced by GET), else None."""
        raw = self.feature_raw(model_id, source_id, index)
        if raw is None or not isinstance(raw.get("vector"), list) or not raw["vector"]:
            return None
        return {"modelId": model_id, "layer": source_id, "index": str(index), "vectorLabel": raw.get("vectorLabel"),
                "createdAt": raw.get("createdAt"), "creatorId": raw.get("creatorId"),
                "vectorDefaultSteerStrength": raw.get("vectorDefaultSteerStrength"), "hookName": raw.get("hookName"),
                "vector": raw["vector"]}

    # ---- models, sets and sources -------------------------------------------------------
    def catalog(self, model_id: Optional[str] = None) -> dict[str, dict[str, dict[str, Any]]]:
        """model -> source -> what the mirror stores of it (`sources` row, or only features)."""
        where = "" if model_id is None else " WHERE model_id = ?"
        params = [] if model_id is None else [_db_text(model_id)]
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for r in self.rows("SELECT model_id, source, set_name, saelens_release, saelens_sae_id, raw FROM sources"
                           + where, params):
            out.setdefault(r["model_id"], {})[r["source"]] = r
        for r in self.rows("SELECT DISTINCT model_id, source FROM features" + where, params):
            out.setdefault(r["model_id"], {}).setdefault(
                r["source"], {"model_id": r["model_id"], "source": r["source"], "set_name": None,
                              "saelens_release": None, "saelens_sae_id": None, "raw": None})
        for r in self.rows("SELECT model_id FROM models" + where, params):
            out.setdefault(r["model_id"], {})
        return out

    @staticmethod
    def _source_raw(entry: dict[str, Any]) -> dict[str, Any]:
        raw = entry.get("raw")
        parsed = loads(raw) if raw else None
        typed = {"setName": entry.get("set_name"), "saelensRelease": entry.get("saelens_release"),
                 "saelensSaeId": entry.get("saelens_sae_id")}
        return _overlay(typed, parsed if isinstance(parsed, dict) else None)

    @staticmethod
    def _set_of(entry: dict[str, Any], stored: dict[str, Any]) -> str:
        name = stored.get("setName")
        return name if isinstance(name, str) and name else wire.set_name_of(entry["source"])

    def relations(self, model_id: str, source_id: str) -> dict[str, dict[str, Any]]:
        """The `model`, `source` and `sourceSet` rows a GET-origin feature of this source carries
        (Neuronpedia sends them whole with every GET /api/feature), or {} if none is stored."""
        found = self.rows("SELECT feature_key FROM features WHERE model_id = ? AND source = ? AND origin = 'get' "
                          "LIMIT 1", [model_id, source_id])
        if not found:
            return {}
        body = self.mirror.store.raw_body(found[0]["feature_key"])
        if body is None:
            return {}
        try:
            raw = loads(body)
        except ValueError:
            return {}
        if not isinstance(raw, dict):
            return {}
        return {k: raw[k] for k in ("model", "source", "sourceSet") if isinstance(raw.get(k), dict)}

    def model_relation(self, model_id: str) -> Optional[dict[str, Any]]:
        """The `model` row of any GET-origin feature of `model_id`."""
        found = self.rows("SELECT source FROM features WHERE model_id = ? AND origin = 'get' LIMIT 1", [model_id])
        return self.relations(model_id, found[0]["source"]).get("model") if found else None

    def _model_row(self, model_id: str, rels: Iterable[dict[str, dict[str, Any]]]) -> dict[str, Any]:
        stored = self.rows("SELECT display_name, layers, dimension, raw FROM models WHERE model_id = ?", [model_id])
        layers: list[Optional[dict[str, Any]]] = []
        if stored:
            s = stored[0]
            layers.append({"displayName": s["display_name"], "layers": s["layers"], "dimension": s["dimension"]})
            raw = loads(s["raw"]) if s["raw"] else None
            if isinstance(raw, dict):
                raw.pop("sourceSets", None)
                layers.append(raw)
        known = [r["model"] for r in rels if r.get("model")]
        layers.extend(known or [self.model_relation(model_id)])
        row = _overlay(_model_defaults(model_id), *layers)
        row["id"] = model_id
        return row

    def _sets(self, model_id: str, sources: dict[str, dict[str, Any]]) -> dict[str, list[_Member]]:
        """set name -> its sources, each as (catalog entry, the stored listing row)."""
        grouped: dict[str, list[_Member]] = {}
        for entry in sources.values():
            stored = self._source_raw(entry)
            grouped.setdefault(self._set_of(entry, stored), []).append((entry, stored))
        return grouped

    def _build_set(self, model_id: str, set_name: str, members: list[_Member],
                   rel_cache: dict[str, dict[str, dict[str, Any]]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        def rels(source_id: str) -> dict[str, dict[str, Any]]:
            if source_id not in rel_cache:
                rel_cache[source_id] = self.relations(model_id, source_id)
            return rel_cache[source_id]

        members = sorted(members, key=lambda m: (_layer_num(m[0]["source"]), m[0]["source"]))
        sources = []
        set_rel: Optional[dict[str, Any]] = None
        for entry, stored in members:
            source_id = entry["source"]
            need_rel = entry.get("raw") is None or set_rel is None
            rel = rels(source_id) if need_rel else {}
            if set_rel is None and rel.get("sourceSet"):
                set_rel = rel["sourceSet"]
            row = _overlay(_source_defaults(model_id, source_id), rel.get("source"), stored)
            row["id"], row["modelId"] = source_id, model_id
            sources.append(row)
        set_row = _overlay(_set_defaults(model_id, set_name), set_rel)
        set_row["modelId"], set_row["name"] = model_id, set_name
        return set_row, sources

    def models_list(self) -> list[dict[str, Any]]:
        """POST /api/model/list (lib/db/model.ts `getGlobalModels`): every model with its sets that
        have dashboards, each with its dashboard sources reduced to `MODEL_LIST_SOURCE_FIELDS`."""
        out = []
        for model_id, sources in sorted(self.catalog().items()):
            rel_cache: dict[str, dict[str, dict[str, Any]]] = {}
            sets = []
            for set_name, members in sorted(self._sets(model_id, sources).items()):
                set_row, rows = self._build_set(model_id, set_name, members, rel_cache)
                if set_row.get("hasDashboards") is False or not _visible(set_row, "PUBLIC", "UNLISTED"):
                    continue
                set_row["sources"] = [
                    {k: r.get(k) for k in wire.MODEL_LIST_SOURCE_FIELDS}
                    for r in rows if r.get("hasDashboards") is not False and _visible(r, "PUBLIC", "UNLISTED")
                ]
                sets.append(set_row)
            row = self._model_row(model_id, rel_cache.values())
            row["sourceSets"] = sets
            out.append(row)
        return out

    def source_set(self, model_id: str, set_name: str) -> Optional[dict[str, Any]]:
        """GET /api/source-set/{model}/{set} (lib/db/source.ts `getSourceSet`): the set row with
        all columns of its public sources, its release (one object or null) and its model."""
        if len(model_id) > _MAX_ID or len(set_name) > _MAX_ID:
            return None
        sources = self.catalog(model_id).get(model_id, {})
        members = self._sets(model_id, sources).get(set_name)
        if not members:
            return None
        rel_cache: dict[str, dict[str, dict[str, Any]]] = {}
        set_row, rows = self._build_set(model_id, set_name, members, rel_cache)
        if not _visible(set_row, "PUBLIC", "UNLISTED"):
            return None
        release = set_row.get("releaseName")
        set_row["sources"] = [r for r in rows if _visible(r, "PUBLIC")]
        set_row["releases"] = _release_defaults(release) if isinstance(release, str) and release else None
        set_row["model"] = self._model_row(model_id, rel_cache.values())
        return set_row

    def known_sets(self, model_id: str) -> Optional[set[str]]:
        """The source sets of `model_id` the mirror knows, or None if it knows no such model."""
        if len(model_id) > _MAX_ID:
            return None
        sources = self.catalog(model_id).get(model_id)
        if sources is None:
            return None
        names: set[str] = set()
        for source_id, entry in sources.items():
            names.add(wire.set_name_of(source_id))
            names.add(self._set_of(entry, self._source_raw(entry)))
        return names

    def can_access(self, model_id: str, layer: str) -> bool:
        """lib/db/userCanAccess.ts `assertUserCanAccessModelAndSource`: the model and the layer's
        source *set* exist (the source itself is not checked)."""
        want = wire.set_name_of(layer)
        if len(model_id) <= _MAX_ID:  # the listed sources answer most cases without a scan of features
            for entry in self.rows("SELECT source, set_name, raw FROM sources WHERE model_id = ?", [_db_text(model_id)]):
                if want in (wire.set_name_of(entry["source"]), self._set_of(entry, self._source_raw(entry))):
                    return True
        sets = self.known_sets(model_id)
        return sets is not None and want in sets

    # ---- search -----------------------------------------------------------------------
    def search(self, model_id: str, layers: list[str], query: str, offset: int, regex: bool = False,
               *, neurons: bool = True) -> tuple[list[dict[str, Any]], int]:
        """Explanations of `layers` matching `query`, best first: (the page of up to 20, all hits).

        Candidates: descriptions containing any query word (`ILIKE`), or matching the query as
        a case-insensitive regular expression (`regexp_matches`, RE2: no catastrophic
        backtracking) with `regex`. Ranking: cosine of the word sets (as the emulator ranks),
        plus 1 when the whole query appears verbatim; ties by layer order, then index: the one
        ranking of `npclient.store.search`, shared with `Mirror.search`. Each
        result carries its feature as `neuron` (the POST /api/features item with 3 top
        activations), as Neuronpedia's search does, unless `neurons` is false.
        """
        found = self.mirror.store.search_page(query, model_id=model_id, sources=layers, regex=regex,
                                              offset=offset, limit=wire.SEARCH_PAGE)
        results = []
        for hit in found.hits:
            result: dict[str, Any] = {
                "modelId": model_id,
                "layer": hit.source,
                "index": str(hit.index),
                "description": hit.description,
                "explanationModelName": hit.explanation_model_name,
                "typeName": hit.type_name,
                "cosine_similarity": round(hit.score, 6),
            }
            if neurons:
                neuron = self.features_post_item(model_id, hit.source, hit.index, 3)
                if neuron is not None:  # Neuronpedia leaves the key out when the feature is missing
                    result["neuron"] = neuron
            results.append(result)
        return results, found.total

    # ---- decoder rows --------------------------------------------------------------------
    def decoder_row(self, model_id: str, source_id: str, index: int) -> Optional[dict[str, Any]]:
        """Row `index` of the attached decoder (numpy memory map; torch is not loaded)."""
        record = self.mirror.store.weights(SourceId(model_id, source_id))
        if record is None or not Path(record.decoder_path).is_file():
            return None
        if not 0 <= index < record.d_sae:
            return None
        array = np.load(record.decoder_path, mmap_mode="r")
        row = np.asarray(array[index])
        if record.dtype == "bfloat16":
            row = (row.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        return {"modelId": model_id, "source": source_id, "index": str(index), "dtype": record.dtype,
                "dIn": int(record.d_in), "vector": [float(v) for v in row.astype(np.float64)]}


#: The source page's sortable columns: the request names a key, the SQL comes from here only.
PAGE_SORTS: dict[str, str] = {
    "index": '"index"',
    "max_act": "max_act_approx",
    "density": "frac_nonzero",
    "explanations": "n_explanations",
    "explanation": "top_explanation",
}
PAGE_ORDERS: dict[str, str] = {"asc": "ASC", "desc": "DESC"}
#: Where a source's map comes from: the mirror's own UMAP (`np-mirror geometry umap`) or Neuronpedia's.
_MAP_QUERIES: dict[str, str] = {
    "local": """SELECT c."index" AS "index", c.x AS x, c.y AS y, f.max_act_approx AS colour, f.top_explanation AS title
                FROM coordinates c LEFT JOIN features f
                  ON f.model_id = c.model_id AND f.source = c.source AND f."index" = c."index"
                WHERE c.model_id = ? AND c.source = ? AND c.method = 'umap' AND isfinite(c.x) AND isfinite(c.y)
                ORDER BY c."index" """,
    "neuronpedia": """SELECT "index", umap_x AS x, umap_y AS y, max_act_approx AS colour, top_explanation AS title
                      FROM features WHERE model_id = ? AND source = ? AND isfinite(umap_x) AND isfinite(umap_y)
                      ORDER BY "index" """,
}


class PageReads:
    """The reads behind the HTML pages (not the API): paged and sorted listings, map points,
    search hits. Every statement is a constant; sort keys are looked up in `PAGE_SORTS`."""

    def __init__(self, reader: MirrorReader) -> None:
        self.rd = reader

    def feature_count(self, model_id: str, source_id: str) -> int:
        return int(self.rd.rows("SELECT count(*) AS n FROM features WHERE model_id = ? AND source = ?",
                                [model_id, source_id])[0]["n"])

    def source_size(self, model_id: str, source_id: str) -> Optional[int]:
        """The source's number of features as the catalog knows it (d_sae), or None."""
        return self.rd.mirror.store.feature_count(SourceId(model_id, source_id))

    def features_page(self, model_id: str, source_id: str, sort: str, order: str, limit: int,
                      offset: int) -> list[dict[str, Any]]:
        column, direction = PAGE_SORTS[sort], PAGE_ORDERS[order]  # KeyError: the caller checks first
        return self.rd.rows(
            'SELECT "index", top_explanation, max_act_approx, frac_nonzero, n_explanations FROM features '
            f'WHERE model_id = ? AND source = ? ORDER BY {column} {direction} NULLS LAST, "index" LIMIT ? OFFSET ?',
            [model_id, source_id, limit, offset])

    def map_counts(self, model_id: str, source_id: str) -> dict[str, int]:
        """How many points each map origin has for this source."""
        out = {"neuronpedia": int(self.rd.rows(
            "SELECT count(*) AS n FROM features WHERE model_id = ? AND source = ? AND isfinite(umap_x) "
            "AND isfinite(umap_y)", [model_id, source_id])[0]["n"]), "local": 0}
        if self.rd.has_table("coordinates"):
            out["local"] = int(self.rd.rows(
                "SELECT count(*) AS n FROM coordinates WHERE model_id = ? AND source = ? AND method = 'umap' "
                "AND isfinite(x) AND isfinite(y)", [model_id, source_id])[0]["n"])
        return out

    def map_points(self, model_id: str, source_id: str, origin: str, titles: bool) -> dict[str, np.ndarray]:
        """index, x, y, colour (max activation) as arrays, and title (top explanation) if `titles`."""
        query = _MAP_QUERIES[origin]
        if not titles:
            query = query.replace(", f.top_explanation AS title", "").replace(", top_explanation AS title", "")
        table = self.rd.mirror.sql(query, [model_id, source_id])
        out = {name: table.column(name).to_numpy(zero_copy_only=False) for name in ("index", "x", "y")}
        out["colour"] = table.column("colour").cast("double").fill_null(float("nan")).to_numpy(zero_copy_only=False)
        if titles:
            out["title"] = table.column("title").to_pylist()
        return out

    def search(self, model_id: str, source_id: str, query: str, limit: int) -> tuple[list[dict[str, Any]], int, list[tuple[int, str]]]:
        """One run of the shared ranking (`store.search`): (the best `wire.SEARCH_PAGE` explanations,
        how many matched, (index, description) of the first `limit` features hit, best first)."""
        found = self.rd.mirror.store.search_page(query, model_id=model_id, sources=[source_id],
                                                 limit=wire.SEARCH_PAGE, features=limit)
        page = [{"layer": h.source, "index": h.index, "description": h.description or "",
                 "cosine_similarity": round(h.score, 6)} for h in found.hits]
        return page, found.total, [(h.index, h.description or "") for h in found.features]

    def explanation_rows(self, model_id: str, source_id: str, index: int) -> list[dict[str, Any]]:
        return self.rd.rows("SELECT description, explanation_model_name, type_name, scores FROM explanations "
                            "WHERE feature_key = ? ORDER BY rank", [f"{model_id}/{source_id}/{index}"])

    def precomputed_neighbours(self, model_id: str, source_id: str, index: int) -> list[tuple[int, Optional[float]]]:
        """(index, cosine) from `np-mirror neighbors` (decoder weights), best first, if computed."""
        if not self.rd.has_table("neighbors"):
            return []
        table = self.rd.mirror.store.computed_neighbors(SourceId(model_id, source_id), index)
        return [(i, c) for i, c in zip(table.column("index").to_pylist(), table.column("cosine").to_pylist())
                if i is not None]

    def top_explanations(self, model_id: str, source_id: str, indices: list[int]) -> dict[int, Optional[str]]:
        """index -> top explanation for the stored features among `indices`."""
        if not indices:
            return {}
        return {r["index"]: r["top_explanation"] for r in self.rd.rows(
            'SELECT "index", top_explanation FROM features WHERE model_id = ? AND source = ? '
            'AND "index" IN (SELECT unnest(?::INTEGER[]))', [model_id, source_id, indices])}


def _db_text(text: str) -> str:
    """`text` as DuckDB can take it: a lone surrogate (valid in a JSON string, not in UTF-8) is `?`."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _stored_index(text: str) -> Optional[int]:
    """The index a stored feature can have (`wire.canonical_index`, below 2**31: the mirror's
    INTEGER column), or None. `007`, `-1`, `1e400` or 5,000 digits simply miss, as on Neuronpedia
    (a text column), and no int() is taken of a long string (Python refuses past 4,300 digits)."""
    i = wire.canonical_index(text)
    return i if i is not None and i < 2**31 else None
