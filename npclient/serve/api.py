"""Neuronpedia's read routes, answered from a local mirror.

Same paths, status codes and JSON shapes as the emulator (`npclient.testing.emulator.routes`,
which follows the real webapp): `GET /api/feature/...` answers the stored body exactly as
the server sent it; errors keep Neuronpedia's shapes (404 `{"error": ...}`, 400/500
`{"message"}`). One route of ours, `/api/np-mirror/decoder/...`, serves a decoder row from
attached weights.

Route table: the emulator owns the list of Neuronpedia paths (`api_routes()` there);
`SHARED_PATHS` is read from it, and `api_routes()` here serves a subset of it, checked at
import, so the two cannot drift apart. Request text only ever reaches DuckDB as a
parameter (`?`), never as SQL.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import duckdb
import numpy as np
import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import InvalidIdError, NPError
from ..ids import FeatureId, SourceId
from ..mirror import Mirror
from ..store import rawblob
from ..testing.emulator.routes import json_response, parse_features_body, parse_search_body, raw_json_response, source_missing
from ..testing.emulator.routes import api_routes as _emulator_routes
from ..testing.emulator.state import SEARCH_PAGE, collect_features_post, search_page, words

__all__ = ["MirrorReader", "api_routes", "json_response", "SHARED_PATHS", "SEARCH_PAGE", "DECODER_PATH"]

#: Neuronpedia's API paths as the emulator serves them (the shared route table).
SHARED_PATHS: tuple[str, ...] = tuple(r.path for r in _emulator_routes())
DECODER_PATH = "/api/np-mirror/decoder/{model_id}/{source_id}/{index}"
_MAX_QUERY_WORDS = 16
_MAX_LAYERS = 256
_MAX_BATCH = 1000
_INT_RE = re.compile(r"[0-9]+")


def _like_pattern(word: str) -> str:
    return "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _valid_source(model_id: str, source_id: str) -> Optional[SourceId]:
    try:
        return SourceId(model_id, source_id)
    except (InvalidIdError, ValueError, TypeError):
        return None


class MirrorReader:
    """Read-only queries the server needs; every statement is a constant with `?` parameters."""

    def __init__(self, path: str | Path, *, linger_s: float = 0.5, wait_s: float = 30.0) -> None:
        self.mirror = Mirror(path, read_only=True, linger_s=linger_s, wait_s=wait_s)

    @property
    def db(self) -> Any:
        return self.mirror.db

    def close(self) -> None:
        self.mirror.close()

    def rows(self, query: str, params: list[Any]) -> list[dict[str, Any]]:
        with self.db.connect() as cur:
            result = cur.execute(query, params)
            cols = [d[0] for d in result.description]
            return [dict(zip(cols, r)) for r in result.fetchall()]

    def has_table(self, name: str) -> bool:
        return bool(self.rows("SELECT 1 AS x FROM duckdb_tables() WHERE table_name = ?", [name]))

    # ---- features ------------------------------------------------------------------
    def source_known(self, model_id: str, source_id: str) -> bool:
        return bool(self.rows(
            "SELECT 1 AS x FROM sources WHERE model_id = ? AND source = ? "
            "UNION ALL SELECT 1 FROM features WHERE model_id = ? AND source = ? LIMIT 1",
            [model_id, source_id, model_id, source_id],
        ))

    def feature_bytes(self, model_id: str, source_id: str, index: int) -> Optional[bytes]:
        """The stored body, byte for byte as the server sent it (a POST item: as `orjson` wrote it)."""
        key = f"{model_id}/{source_id}/{index}"
        with self.db.connect() as cur:
            chunks = cur.execute("SELECT chunk FROM raw_chunks WHERE feature_key = ? ORDER BY seq", [key]).fetchall()
        if chunks:
            return rawblob.unpack(c[0] for c in chunks)
        feature = self.mirror.feature(FeatureId(model_id, source_id, index))  # an imported (export) feature
        return None if feature is None else feature.raw_json

    def feature_raw(self, model_id: str, source_id: str, index: int) -> Optional[dict[str, Any]]:
        body = self.feature_bytes(model_id, source_id, index)
        return None if body is None else orjson.loads(body)

    def features_post_item(self, model_id: str, source_id: str, index: int, max_acts: Optional[int]) -> Optional[dict[str, Any]]:
        """One element of POST /api/features, built from the stored body (GET or POST shaped)."""
        raw = self.feature_raw(model_id, source_id, index)
        if raw is None:
            return None
        acts = list(raw.pop("activations", None) or [])
        explanations = raw.pop("explanations", None) or []
        for rel in ("model", "lists", "creator", "source", "sourceSet", "comments"):
            raw.pop(rel, None)
        if all(isinstance(a, dict) and isinstance(a.get("id"), str) for a in acts):
            acts.sort(key=lambda a: a["id"])  # storage order
        if max_acts:
            acts.sort(key=lambda a: -(a.get("maxValue") or 0.0))
            acts = acts[:max_acts]
        if explanations and all(isinstance(e.get("id"), str) for e in explanations):
            explanations = sorted(explanations, key=lambda e: e["id"])  # storage (id) order
        raw["explanations"] = [
            {"description": e.get("description"), "explanationModelName": e.get("explanationModelName"),
             "typeName": e.get("typeName")}
            for e in explanations
        ]
        raw["activations"] = acts
        return raw

    def features_post(self, items: list[tuple[str, str, int]], max_acts: Optional[int]) -> list[dict[str, Any]]:
        return collect_features_post(
            items,
            lambda m, s, i: self.features_post_item(m, s, i, max_acts) if _valid_source(m, s) is not None else None,
        )

    # ---- models and sources --------------------------------------------------------
    def source_rows(self, model_id: Optional[str] = None) -> list[dict[str, Any]]:
        if model_id is None:
            return self.rows("SELECT model_id, source, set_name, raw FROM sources ORDER BY model_id", [])
        return self.rows("SELECT model_id, source, set_name, raw FROM sources WHERE model_id = ?", [model_id])

    @staticmethod
    def _source_json(row: dict[str, Any]) -> dict[str, Any]:
        if row["raw"]:
            return orjson.loads(row["raw"])
        return {"id": row["source"], "modelId": row["model_id"], "setName": row["set_name"]}

    def _set_json(self, model_id: str, set_name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        sources = [self._source_json(r) for r in rows]
        sources.sort(key=lambda s: (_layer_num(s.get("id", "")), s.get("id", "")))
        return {"modelId": model_id, "name": set_name, "hasDashboards": True, "visibility": "PUBLIC",
                "sources": sources}

    def source_set(self, model_id: str, set_name: str) -> Optional[dict[str, Any]]:
        rows = [r for r in self.source_rows(model_id) if (r["set_name"] or r["source"].split("-", 1)[-1]) == set_name]
        return self._set_json(model_id, set_name, rows) if rows else None

    def models_list(self) -> list[dict[str, Any]]:
        models = {r["model_id"]: r for r in self.rows("SELECT model_id, display_name, raw FROM models", [])}
        by_model: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for r in self.source_rows():
            set_name = r["set_name"] or r["source"].split("-", 1)[-1]
            by_model.setdefault(r["model_id"], {}).setdefault(set_name, []).append(r)
        out = []
        for model_id in sorted(set(models) | set(by_model)):
            m = models.get(model_id)
            row = orjson.loads(m["raw"]) if m and m["raw"] else {"id": model_id, "displayName": model_id}
            row.pop("sourceSets", None)
            row["sourceSets"] = [self._set_json(model_id, name, rows) for name, rows in by_model.get(model_id, {}).items()]
            out.append(row)
        return out

    def model_ids(self) -> set[str]:
        return {r["model_id"] for r in self.rows("SELECT model_id FROM models UNION SELECT model_id FROM sources", [])}

    # ---- search -----------------------------------------------------------------------
    def search(self, model_id: str, layers: list[str], query: str, offset: int, regex: bool = False) -> dict[str, Any]:
        """Explanations of `layers` matching `query`, best first.

        Candidates: descriptions containing any query word (`ILIKE`), or matching the
        query as a case-insensitive regular expression (`regexp_matches`, RE2: no
        catastrophic backtracking) with `"regex": true`. Ranking: cosine of the word sets (as the
        emulator ranks), plus 1 when the whole query appears verbatim; ties by layer order,
        then index.
        """
        q = words(query)
        hits: list[tuple[float, int, int, int, dict[str, Any]]] = []
        layer_order = {layer: n for n, layer in enumerate(layers)}
        layer_marks = ", ".join("?" for _ in layers)
        base = ("SELECT source, \"index\", rank, explanation_id, description, author_id, type_name, "
                "explanation_model_name FROM explanations WHERE model_id = ? AND source IN (" + layer_marks + ") AND ")
        params: list[Any] = [model_id, *layers]
        if regex:
            rows = self.rows(base + "regexp_matches(description, ?, 'i')", [*params, query])
        else:
            terms = sorted(q)[:_MAX_QUERY_WORDS]
            if not terms:
                rows = []
            else:
                cond = " OR ".join("description ILIKE ? ESCAPE '\\'" for _ in terms)
                rows = self.rows(base + "(" + cond + ")", [*params, *(_like_pattern(t) for t in terms)])
        phrase = query.strip().lower()
        for r in rows:
            desc = r["description"] or ""
            ws = words(desc)
            common = len(q & ws)
            score = common / float(np.sqrt(len(q) * len(ws))) if common else 0.0
            if phrase and phrase in desc.lower():
                score += 1.0
            if score <= 0 and not regex:
                continue
            hits.append((-score, layer_order.get(r["source"], 0), r["index"], r["rank"], r))
        hits.sort(key=lambda h: h[:4])
        page = hits[offset : offset + SEARCH_PAGE]
        return search_page(model_id, layers, query, offset, len(hits), [{
            "id": r["explanation_id"],
            "modelId": model_id,
            "layer": r["source"],
            "index": str(r["index"]),
            "description": r["description"],
            "authorId": r["author_id"],
            "typeName": r["type_name"],
            "explanationModelName": r["explanation_model_name"],
            "cosine_similarity": round(-neg, 6),
        } for neg, _, _, _, r in page])

    # ---- decoder rows --------------------------------------------------------------------
    def decoder_row(self, model_id: str, source_id: str, index: int) -> Optional[dict[str, Any]]:
        """Row `index` of the attached decoder (numpy memory map; torch is not loaded)."""
        from ..weights.attach import get_weights

        sid = SourceId(model_id, source_id)
        record = get_weights(self.db, sid)
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


def _layer_num(source_id: str) -> int:
    head = source_id.split("-", 1)[0]
    return int(head) if head.isdigit() else 1 << 30


# --------------------------------------------------------------------------- handlers


def _reader(request: Request) -> MirrorReader:
    return request.app.state.reader  # type: ignore[no-any-return]


async def get_feature(request: Request) -> Response:
    rd = _reader(request)
    model_id, source_id = request.path_params["model_id"], request.path_params["source_id"]
    raw_index = request.path_params["index"]
    if _valid_source(model_id, source_id) is None:
        return source_missing(model_id, source_id)
    if not _INT_RE.fullmatch(raw_index):
        return json_response(
            {"error": "Invalid index", "message": f"index must be a non-negative integer, got {raw_index!r}"}, 400
        )
    index = int(raw_index)
    body = None
    if raw_index == str(index) and index < 2**31:  # the key is the canonical string: "007" matches nothing
        body = await run_in_threadpool(rd.feature_bytes, model_id, source_id, index)
    if body is not None:
        return raw_json_response(body)
    if not await run_in_threadpool(rd.source_known, model_id, source_id):
        return source_missing(model_id, source_id)
    return json_response({"error": "Feature Not Found"}, 404)


async def _json_body(request: Request) -> tuple[bool, Any]:
    try:
        return True, orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return False, None


async def post_features(request: Request) -> Response:
    ok, body = await _json_body(request)
    if not ok:
        return json_response({"message": "Invalid JSON body"}, 400)
    if isinstance(body, list) and len(body) > _MAX_BATCH:
        return json_response({"message": f"at most {_MAX_BATCH} features a request"}, 400)
    try:
        items, max_acts = parse_features_body(body)
    except ValueError as exc:
        return json_response({"message": str(exc)}, 400)
    items = [(m, s, i) for m, s, i in items if 0 <= i < 2**31] if items else []
    if not items:
        return json_response([])
    return json_response(await run_in_threadpool(_reader(request).features_post, items, max_acts))


async def post_model_list(request: Request) -> Response:
    return json_response(await run_in_threadpool(_reader(request).models_list))


async def get_source_set(request: Request) -> Response:
    model_id, set_name = request.path_params["model_id"], request.path_params["set_name"]
    if _valid_source(model_id, "0-" + set_name) is None:
        return json_response(None)  # as the emulator: an unknown set is `null`
    return json_response(await run_in_threadpool(_reader(request).source_set, model_id, set_name))


async def post_explanation_search(request: Request) -> Response:
    ok, body = await _json_body(request)
    if not ok:
        return json_response({"message": "Invalid JSON body"}, 500)
    try:
        model_id, layers, query, offset = parse_search_body(body, max_layers=_MAX_LAYERS)
    except ValueError as exc:
        return json_response({"message": str(exc)}, 500)
    regex = body.get("regex") is True
    rd = _reader(request)
    if model_id not in await run_in_threadpool(rd.model_ids):
        return json_response({"message": f"Model {model_id} not found"}, 500)
    try:
        result = await run_in_threadpool(rd.search, model_id, layers, query, offset, regex)
    except NPError as exc:
        return json_response({"message": str(exc)}, 500)
    except duckdb.Error as exc:  # e.g. a regular expression RE2 rejects
        return json_response({"message": "Invalid query: " + str(exc).strip().splitlines()[0]}, 500)
    return json_response(result)


async def get_decoder(request: Request) -> Response:
    model_id, source_id = request.path_params["model_id"], request.path_params["source_id"]
    raw_index = request.path_params["index"]
    if _valid_source(model_id, source_id) is None:
        return source_missing(model_id, source_id)
    if not _INT_RE.fullmatch(raw_index) or raw_index != str(int(raw_index)):
        return json_response({"error": "Invalid index", "message": f"index must be a non-negative integer, got {raw_index!r}"}, 400)
    row = await run_in_threadpool(_reader(request).decoder_row, model_id, source_id, int(raw_index))
    if row is None:
        return json_response({"error": f"No decoder row: no weights attached for {model_id}/{source_id}, or index out of range"}, 404)
    return json_response(row)


_NEURONPEDIA = [
    ("/api/feature/{model_id}/{source_id}/{index}", get_feature, "GET"),
    ("/api/features", post_features, "POST"),
    ("/api/model/list", post_model_list, "POST"),
    ("/api/source-set/{model_id}/{set_name}", get_source_set, "GET"),
    ("/api/explanation/search", post_explanation_search, "POST"),
]
assert all(path in SHARED_PATHS for path, _, _ in _NEURONPEDIA), "serve's API routes must be the emulator's paths"


def api_routes() -> list[Route]:
    return [Route(path, fn, methods=[method]) for path, fn, method in _NEURONPEDIA] + [
        Route(DECODER_PATH, get_decoder, methods=["GET"]),
    ]
