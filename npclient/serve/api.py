"""Neuronpedia's read routes, answered from a local mirror.

The contract (paths, body validation, not-found bodies, orderings) is `npclient.wire`, the
one shared with the client and the emulator; this module maps its outcomes to statuses.
Unlike Neuronpedia (and the emulator, which copies it), **serve never answers 500 to bad
input**: a body that is not JSON, a yup failure and the cases Neuronpedia's own catch turns
into `500 {"message": "Unknown Error"}` (an empty `[]` of features, empty `layers`, a negative
offset) are 400 `{"message"}`; an unknown model or source set in a search is 404 `{"message"}`.

| route (wire) | served | how |
|---|---|---|
| `GET /api/feature/...` | yes | the stored body, activations ranked top-first (`wire.activation_rank_key`); byte-exact when already in that order |
| `POST /api/features` | yes | `getNeurons`'s item shape; top N activations only with `maxActsToReturn` (first item's) |
| `POST /api/model/list` | yes | models, dashboard sets, sources with `wire.MODEL_LIST_SOURCE_FIELDS` only |
| `GET /api/source-set/...` | yes | the set row with `model`, `releases`, `sources`; `null` when unknown |
| `POST /api/explanation/search` | yes | keyword ranking over local explanations (offline: no embeddings), `"regex": true` for RE2 |
| `GET /api/explanation/export` | yes | Neuronpedia's own answer: 400, removed, with the bulk-export URL |
| `POST /api/vector/get` | stored vectors | a GET-synced body's non-empty `vector`; else 404 envelope (Neuronpedia asks an inference server, 500 without one); SAE decoder rows are under our own route |
| `POST /api/features-offset` | no (404 JSON) | pages by `maxActApprox > 0` with explanation authors and votes, which a mirror does not keep |

Set, model and release rows are built from what the mirror stores (`sources.raw`, `models.raw`,
the `model`/`source`/`sourceSet` relations of a GET-origin feature body) over Neuronpedia's
column defaults (`prisma/schema.prisma`). One route of ours, `/api/np-mirror/decoder/...`,
serves a decoder row from attached weights. Request text only ever reaches DuckDB as a
parameter (`?`), never as SQL; NaN and infinities stored from exports go out as `null`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

import duckdb
import numpy as np
import orjson
import pydantic_core
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from .. import wire
from ..errors import InvalidIdError
from ..ids import SourceId
from ..mirror import Mirror

__all__ = [
    "MirrorReader", "api_routes", "json_response", "raw_json_response", "dumps", "loads",
    "SERVED_ROUTES", "UNSERVED_ROUTES", "DECODER_PATH", "MAX_BODY", "MAX_BATCH", "MAX_LAYERS",
]

DECODER_PATH = "/api/np-mirror/decoder/{model_id}/{source_id}/{index}"
EXPORTS_URL = "https://neuronpedia-datasets.s3.us-east-1.amazonaws.com/index.html?prefix=v1/"
#: Bounds Neuronpedia does not have; past them a request is refused with 400 (413 for the body).
MAX_BODY = 8 << 20
MAX_BATCH = 1000
MAX_LAYERS = 256
_MAX_QUERY_WORDS = 16
_MAX_ID = 512  # longer model/source names are unknown without asking the database
_INT_RE = re.compile(r"[0-9]+")

# --------------------------------------------------------------------------- JSON out


def _finite(value: Any) -> Any:
    """`value` with every NaN/Infinity replaced by None (what JSON.stringify writes)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(value: Any) -> bytes:
    """Compact JSON that is always valid: NaN/Infinity become `null` (orjson does that); the rare
    integer wider than 64 bits or lone surrogate (orjson refuses both) is written by the standard
    library, exactly."""
    try:
        return orjson.dumps(value)
    except TypeError:
        # ASCII with escapes: a lone surrogate (JSON.parse accepts "\ud800") cannot be UTF-8
        return json.dumps(_finite(value), separators=(",", ":"), allow_nan=False).encode()


def loads(body: bytes | str) -> Any:
    """A stored body, exactly (wide integers kept) and leniently: an export's bare `NaN`,
    `Infinity` and out-of-range numbers are read as floats (and written back as `null`)."""
    return pydantic_core.from_json(body, allow_inf_nan=True)


def json_response(data: Any, status: int = 200, headers: Optional[dict[str, str]] = None) -> Response:
    return Response(dumps(data), status_code=status, media_type="application/json", headers=headers)


def raw_json_response(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json")


def _message(text: str, status: int) -> Response:
    """The features/search routes' own error shape: `{"message"}`."""
    return json_response({"message": text}, status)


# --------------------------------------------------------------------------- Neuronpedia's column defaults
# prisma/schema.prisma (apps/webapp), in column order. `visibility` defaults to PRIVATE there; what
# a mirror holds came from public answers, so PUBLIC. Required columns without a default (strings:
# "", integers and dates: null) are the ones the mirror may not know.


def _model_defaults(model_id: str) -> dict[str, Any]:
    return {
        "id": model_id, "displayNameShort": "", "displayName": "", "creatorId": "", "tlensId": None,
        "openRouterId": None, "dimension": None, "thinking": False, "visibility": "PUBLIC",
        "defaultSourceSetName": None, "defaultSourceId": None, "defaultGraphSourceSetName": None,
        "inferenceEnabled": False, "instruct": False, "layers": None, "neuronsPerLayer": None,
        "createdAt": None, "owner": "", "updatedAt": None, "website": None,
    }


def _source_defaults(model_id: str, source_id: str) -> dict[str, Any]:
    return {
        "id": source_id, "modelId": model_id, "hasDashboards": True, "inferenceEnabled": False,
        "saelensConfig": None, "saelensRelease": None, "saelensSaeId": None, "hfRepoId": None,
        "hfFolderId": None, "visibility": "PUBLIC", "defaultOfModelId": None, "setName": wire.set_name_of(source_id),
        "creatorId": "", "hasUmap": False, "hasUmapLogSparsity": False, "hasUmapClusters": False,
        "num_prompts": None, "num_tokens_in_prompt": None, "dataset": None, "notes": None,
        "cosSimMatchModelId": None, "cosSimMatchSourceId": None, "createdAt": None,
    }


def _set_defaults(model_id: str, set_name: str) -> dict[str, Any]:
    return {
        "modelId": model_id, "name": set_name, "hasDashboards": True, "allowInferenceSearch": True,
        "visibility": "PUBLIC", "description": "", "type": "", "creatorName": "", "urls": [],
        "creatorEmail": None, "creatorId": "", "releaseName": None, "hasGraphs": False, "graphEnabled": False,
        "similarityMatrixEnabled": False, "defaultOfModelId": None, "defaultGraphModelId": None,
        "defaultRange": 1, "defaultShowBreaks": True, "showDfa": False, "showCorrelated": False,
        "showHeadAttribution": False, "showUmap": False, "createdAt": None,
    }


def _release_defaults(name: str) -> dict[str, Any]:
    return {
        "name": name, "visibility": "PUBLIC", "isNewUi": False, "featured": False, "description": "",
        "descriptionShort": None, "urls": [], "creatorEmail": None, "creatorName": "", "creatorNameShort": None,
        "creatorId": "", "defaultSourceSetName": None, "defaultSourceId": None, "defaultUmapSourceIds": [],
        "createdAt": None,
    }


def _overlay(base: dict[str, Any], *layers: Optional[dict[str, Any]]) -> dict[str, Any]:
    """`base` updated by each layer in turn; a layer's null never hides a value an earlier one knew."""
    out = dict(base)
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        for key, value in layer.items():
            if value is not None or out.get(key) is None:
                out[key] = value
    return out


def _visible(row: dict[str, Any], *allowed: str) -> bool:
    return row.get("visibility") in (None, *allowed)


# --------------------------------------------------------------------------- activations


def _act_key(a: Any) -> tuple[float, str]:
    return wire.activation_rank_key(a.get("maxValue"), a.get("id"))


def _all_dicts(items: Any) -> bool:
    return isinstance(items, list) and all(isinstance(a, dict) for a in items)


def _in_rank_order(acts: Any) -> bool:
    if not _all_dicts(acts):
        return True  # nothing we can rank: leave it as stored
    keys = [_act_key(a) for a in acts]
    return all(keys[k] <= keys[k + 1] for k in range(len(keys) - 1))


def _by_storage_id(items: list[Any]) -> list[Any]:
    """Database order for a query without ORDER BY, as the emulator models it: by row id."""
    if _all_dicts(items) and all(isinstance(x.get("id"), str) for x in items):
        return sorted(items, key=lambda x: x["id"])
    return items


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
        plus 1 when the whole query appears verbatim; ties by layer order, then index. Each
        result carries its feature as `neuron` (the POST /api/features item with 3 top
        activations), as Neuronpedia's search does, unless `neurons` is false.
        """
        q = wire.words(query)
        layer_order: dict[str, int] = {}
        for n, layer in enumerate(layers):
            layer_order.setdefault(layer, n)
        layer_marks = ", ".join("?" for _ in layer_order)
        base = ("SELECT source, \"index\", rank, description, type_name, explanation_model_name "
                "FROM explanations WHERE model_id = ? AND source IN (" + layer_marks + ") AND ")
        params: list[Any] = [_db_text(model_id), *(_db_text(x) for x in layer_order)]
        if regex:
            rows = self.rows(base + "regexp_matches(description, ?, 'i')", [*params, _db_text(query)])
        else:
            terms = sorted(q)[:_MAX_QUERY_WORDS]
            if not terms:
                rows = []
            else:
                cond = " OR ".join("description ILIKE ? ESCAPE '\\'" for _ in terms)
                rows = self.rows(base + "(" + cond + ")", [*params, *(_like_pattern(t) for t in terms)])
        phrase = query.strip().lower()
        hits: list[tuple[float, int, int, int, dict[str, Any]]] = []
        for r in rows:
            desc = r["description"] or ""
            ws = wire.words(desc)
            common = len(q & ws)
            score = common / float(np.sqrt(len(q) * len(ws))) if common else 0.0
            if phrase and phrase in desc.lower():
                score += 1.0
            if score <= 0 and not regex:
                continue
            hits.append((-score, layer_order.get(r["source"], 0), r["index"], r["rank"], r))
        hits.sort(key=lambda h: h[:4])
        results = []
        for neg, _, _, _, r in hits[offset: offset + wire.SEARCH_PAGE]:
            result: dict[str, Any] = {
                "modelId": model_id,
                "layer": r["source"],
                "index": str(r["index"]),
                "description": r["description"],
                "explanationModelName": r["explanation_model_name"],
                "typeName": r["type_name"],
                "cosine_similarity": round(-neg, 6),
            }
            if neurons:
                neuron = self.features_post_item(model_id, r["source"], r["index"], 3)
                if neuron is not None:  # Neuronpedia leaves the key out when the feature is missing
                    result["neuron"] = neuron
            results.append(result)
        return results, len(hits)

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


def _db_text(text: str) -> str:
    """`text` as DuckDB can take it: a lone surrogate (valid in a JSON string, not in UTF-8) is `?`."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _like_pattern(word: str) -> str:
    return "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _stored_index(text: str) -> Optional[int]:
    """The index a stored feature can have (`wire.canonical_index`, below 2**31: the mirror's
    INTEGER column), or None. `007`, `-1`, `1e400` or 5,000 digits simply miss, as on Neuronpedia
    (a text column), and no int() is taken of a long string (Python refuses past 4,300 digits)."""
    i = wire.canonical_index(text)
    return i if i is not None and i < 2**31 else None


# --------------------------------------------------------------------------- handlers


def _reader(request: Request) -> MirrorReader:
    return request.app.state.reader  # type: ignore[no-any-return]


async def _read_json(request: Request) -> tuple[Any, Optional[tuple[str, int]]]:
    """(the body as JavaScript's JSON.parse reads it, None), or (None, (why, 400 or 413)):
    Neuronpedia answers a body that is not JSON with 500 (parsed before the route's try)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None, (f"request body over {MAX_BODY >> 20} MiB", 413)
        chunks.append(chunk)
    try:
        return wire.parse_json(b"".join(chunks)), None
    except wire.WireError as exc:
        return None, (exc.message, 400)


async def _body(request: Request) -> tuple[Any, Optional[Response]]:
    """`_read_json` for the features and search routes: a refusal in their `{"message"}` shape."""
    body, refused = await _read_json(request)
    return body, (None if refused is None else _message(*refused))


async def get_feature(request: Request) -> Response:
    """app/api/feature/[modelId]/[layer]/[index]/route.ts."""
    rd = _reader(request)
    model_id, source_id = request.path_params["model_id"], request.path_params["source_id"]
    index = _stored_index(request.path_params["index"])
    body = None
    if index is not None and _valid_source(model_id, source_id) is not None:
        body = await run_in_threadpool(rd.feature_body, model_id, source_id, index)
    if body is not None:
        return raw_json_response(body)
    # A miss: which 404 depends on whether the model and the layer's source set are known.
    known = await run_in_threadpool(rd.can_access, model_id, source_id)
    return json_response(wire.not_found_body(access_denied=not known), 404)


async def post_features(request: Request) -> Response:
    """app/api/features/route.ts: yup errors 400; `[]` (Neuronpedia: 500 Unknown Error) 400 here."""
    body, refused = await _body(request)
    if refused is not None:
        return refused
    if isinstance(body, list) and len(body) > MAX_BATCH:
        return _message(f"at most {MAX_BATCH} features a request", 400)
    try:
        items, max_acts = wire.parse_features_body(body)
    except wire.WireError as exc:
        return _message(exc.message, 400)
    return json_response(await run_in_threadpool(_reader(request).features_post, items, max_acts))


async def post_model_list(request: Request) -> Response:
    return json_response(await run_in_threadpool(_reader(request).models_list))


async def get_source_set(request: Request) -> Response:
    """app/api/source-set/[modelId]/[name]/route.tsx: an unknown set is 200 `null`."""
    model_id, set_name = request.path_params["model_id"], request.path_params["set_name"]
    return json_response(await run_in_threadpool(_reader(request).source_set, model_id, set_name))


async def post_explanation_search(request: Request) -> Response:
    """app/api/explanation/search/route.tsx, ranked by keywords (offline: no embeddings)."""
    body, refused = await _body(request)
    if refused is not None:
        return refused
    try:
        req = wire.parse_search_body(body)
    except wire.WireError as exc:  # validation, a falsy body, or what Neuronpedia's catch answers 500
        return _message(exc.message, 400)
    if len(req.layers) > MAX_LAYERS:
        return _message(f"at most {MAX_LAYERS} layers", 400)
    rd = _reader(request)
    sets = await run_in_threadpool(rd.known_sets, req.model_id)
    if sets is None:
        return _message(f"Model {req.model_id} is not in this mirror. {wire.NOT_FOUND_MESSAGE}", 404)
    missing = sorted({wire.set_name_of(layer) for layer in req.layers} - sets)
    if missing:
        return _message(f"Source set {req.model_id}/{missing[0]} is not in this mirror. {wire.NOT_FOUND_MESSAGE}", 404)
    regex = body.get("regex") is True
    try:
        results, _ = await run_in_threadpool(rd.search, req.model_id, list(req.layers), req.query, req.offset, regex)
    except duckdb.Error as exc:  # e.g. a regular expression RE2 refuses
        return _message("Invalid query: " + (str(exc).strip().splitlines() or [""])[0], 400)
    return json_response(wire.search_page(wire.search_echo(body, req), results, req.offset))


async def post_vector_get(request: Request) -> Response:
    """app/api/vector/get/route.tsx: yup failures are its 400 envelope; a feature without a stored
    vector, where Neuronpedia would ask an inference server (and answers 500 without one), is 404."""
    body, refused = await _read_json(request)
    if refused is not None:
        return json_response(wire.error_envelope(refused[0]), refused[1])
    if wire.js_falsy(body) or not isinstance(body, dict):
        return json_response(wire.error_envelope(
            f"this must be a `object` type, but the final value was: `{dumps(body).decode()}`."), 400)
    fields: dict[str, str] = {}
    for key in ("index", "source", "modelId"):  # yup reports the last-declared field first
        value = body.get(key)
        try:
            if value is None:
                raise wire.WireError(f"{key} is a required field")
            fields[key] = wire.yup_string(value, key)
        except wire.WireError as exc:
            return json_response(wire.error_envelope(exc.message), 400)
    model_id, source_id, index = fields["modelId"], fields["source"], _stored_index(fields["index"])
    vector = None
    if index is not None and _valid_source(model_id, source_id) is not None:
        vector = await run_in_threadpool(_reader(request).vector, model_id, source_id, index)
    if vector is None:
        text = (f"No stored vector for {model_id[:128]}/{source_id[:128]}/{fields['index'][:40]}: np-mirror serve "
                "answers only vectors a GET sync stored (Neuronpedia would ask an inference server)")
        return json_response(wire.error_envelope(text), 404)
    return json_response({"vector": vector})


async def get_explanation_export(request: Request) -> Response:
    """app/api/explanation/export/route.ts: removed on Neuronpedia, which answers this."""
    return json_response({
        "newUrl": EXPORTS_URL,
        "message": "This endpoint has been removed. Explanations exports can be downloaded more quickly and "
        f"efficiently at {EXPORTS_URL}  Please contact support@neuronpedia.org if you have any questions.",
    }, 400)


def _not_served(method: str, path: str, reason: str) -> Any:
    async def handler(request: Request) -> Response:
        text = f"np-mirror serve does not serve {method} {path}: {reason}"
        return json_response(wire.error_envelope(text), 404)

    return handler


async def get_decoder(request: Request) -> Response:
    model_id, source_id = request.path_params["model_id"], request.path_params["source_id"]
    raw_index = request.path_params["index"]
    if _valid_source(model_id, source_id) is None:
        return json_response({"error": f"No decoder row: {model_id[:200]}/{source_id[:200]} is not a source id"}, 404)
    index = _stored_index(raw_index)
    if index is None:
        return json_response({"error": "Invalid index", "message": f"index must be a non-negative integer, got {raw_index[:40]!r}"}, 400)
    row = await run_in_threadpool(_reader(request).decoder_row, model_id, source_id, index)
    if row is None:
        return json_response({"error": f"No decoder row: no weights attached for {model_id}/{source_id}, or index out of range"}, 404)
    return json_response(row)


_HANDLERS = {
    wire.FEATURE_PATH: get_feature,
    wire.FEATURES_PATH: post_features,
    wire.MODEL_LIST_PATH: post_model_list,
    wire.SOURCE_SET_PATH: get_source_set,
    wire.SEARCH_PATH: post_explanation_search,
    wire.EXPLANATION_EXPORT_PATH: get_explanation_export,
    wire.VECTOR_GET_PATH: post_vector_get,
}
#: Routes of `wire.READ_ROUTES` answered with a 404 JSON that says why.
UNSERVED_ROUTES: dict[str, str] = {
    wire.FEATURES_OFFSET_PATH: "it pages by maxActApprox > 0 with explanation authors and votes, which a mirror "
    "does not keep; use POST /api/features or the /{model}/{source} page",
}
#: The subset of `wire.READ_ROUTES` serve answers (path, method).
SERVED_ROUTES: tuple[tuple[str, str], ...] = tuple((p, m) for p, m in wire.READ_ROUTES if p in _HANDLERS)
assert set(_HANDLERS) | set(UNSERVED_ROUTES) == {p for p, _ in wire.READ_ROUTES}, "every wire route is served or refused"


def api_routes() -> list[BaseRoute]:
    """Everything under `/api`, as one mount: a known path asked with another method is 405 (with
    `Allow`), an unknown one 404, and no `/api/...` path ever falls through to the pages."""
    routes: list[BaseRoute] = []
    for path, method in wire.READ_ROUTES:
        handler = _HANDLERS.get(path) or _not_served(method, path, UNSERVED_ROUTES[path])
        routes.append(Route(path.removeprefix("/api"), handler, methods=[method]))
    routes.append(Route(DECODER_PATH.removeprefix("/api"), get_decoder, methods=["GET"]))
    mount = Mount("/api", routes=routes)
    # Starlette's `{path:path}` is `.*`, which stops at a newline: `/api/x%0Ay` would reach the pages.
    mount.path_regex = re.compile(mount.path_regex.pattern, re.DOTALL)
    return [mount]
