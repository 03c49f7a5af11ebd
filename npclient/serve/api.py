"""Neuronpedia's read routes, answered from a local mirror.

The contract (paths, body validation, not-found bodies, orderings) is `npclient.wire`, the
one shared with the client and the emulator; this module maps its outcomes to statuses (the
handlers and the route table). The queries are `reader.MirrorReader`'s, the JSON and row shapes
`shapes.py`'s (`dumps`, `loads` and `MirrorReader` are importable from here too).
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

import re
from typing import Any, Optional

import duckdb
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from .. import wire
from .reader import MirrorReader, _stored_index, _valid_source
from .shapes import dumps, loads  # noqa: F401 - re-exported

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

# --------------------------------------------------------------------------- JSON out


def json_response(data: Any, status: int = 200, headers: Optional[dict[str, str]] = None) -> Response:
    return Response(dumps(data), status_code=status, media_type="application/json", headers=headers)


def raw_json_response(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json")


def _message(text: str, status: int) -> Response:
    """The features/search routes' own error shape: `{"message"}`."""
    return json_response({"message": text}, status)


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
