"""Starlette handlers for Neuronpedia's read routes, rendered from `EmulatorState`.

The contract (paths, yup validation, envelopes, orderings) is `npclient.wire`; this module
only maps its outcomes to the statuses Neuronpedia answers (paths relative to
`apps/webapp/` of `hijohnnylin/neuronpedia`):

| case | status and body | follows |
|---|---|---|
| body that is not JSON (parsed before a route's try) | 500 envelope, "Something went wrong..." | lib/with-user.ts, lib/api-error.ts |
| features/search: falsy body | 400 `{"message": "Invalid JSON body"}` | app/api/features/route.ts |
| features/search: yup failure | 400 `{"message": yup's text}` | same, app/api/explanation/search/route.tsx |
| features: `[]`; search: unknown model/set, empty layers, negative offset | 500 `{"message": "Unknown Error"}` | same (the route's own catch) |
| GET feature: unknown model or source set | 404 envelope (both keys) | lib/db/userCanAccess.ts |
| GET feature: no such index (malformed ones included) | 404 `{"error"}` | app/api/feature/[modelId]/[layer]/[index]/route.ts |
| features-offset: unknown model/set | 404 envelope | lib/db/neuron.ts `getNeuronsOffset` |
| vector/get: yup failure | 400 envelope | app/api/vector/get/route.tsx |
| vector/get: no stored vector (the inference fallback fails) | 500 envelope | same, lib/utils/inference.ts |
| explanation/export | 400 `{"newUrl", "message"}` | app/api/explanation/export/route.ts |
| source-set: unknown set | 200 `null` | app/api/source-set/[modelId]/[name]/route.tsx |
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ... import wire
from .config import FaultConfig, RateLimitConfig
from .state import EmulatorState

__all__ = ["api_routes", "control_routes", "json_response", "raw_json_response", "not_found_html"]

EXPORTS_URL = "https://neuronpedia-datasets.s3.us-east-1.amazonaws.com/index.html?prefix=v1/"


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def raw_json_response(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json")


def _envelope(message: str, status: int) -> Response:
    return json_response(wire.error_envelope(message), status)


def _server_error() -> Response:
    return _envelope(wire.SERVER_ERROR_MESSAGE, 500)


async def not_found_html(request: Request, exc: Exception) -> Response:
    body = (
        "<!DOCTYPE html><html><head><title>404: This page could not be found.</title></head>"
        "<body><h1>404</h1><h2>This page could not be found.</h2></body></html>"
    )
    return Response(body, status_code=404, media_type="text/html; charset=utf-8")


def _state(request: Request) -> EmulatorState:
    return request.app.state.emulator  # type: ignore[no-any-return]


async def _body(request: Request) -> Any:
    """`await request.json()`: raises WireError(not_json) as Next.js would throw."""
    return wire.parse_json(await request.body())


def _route_error(exc: wire.WireError) -> Response:
    """How the features and search routes answer what their own try catches."""
    if exc.kind == "not_json":
        return _server_error()
    if exc.kind == "unknown":
        return json_response({"message": wire.UNKNOWN_ERROR}, 500)
    return json_response({"message": exc.message}, 400)


# --------------------------------------------------------------------------- /api


async def get_feature(request: Request) -> Response:
    st = _state(request)
    model_id = request.path_params["model_id"]
    source_id = request.path_params["source_id"]
    raw_index = request.path_params["index"]
    if not st.can_access(model_id, source_id):
        return json_response(wire.not_found_body(access_denied=True), 404)
    # `index` is a text column matched exactly: "abc", "-1", "007", "1e400" simply miss.
    index = wire.canonical_index(raw_index)
    body = st.feature_bytes(model_id, source_id, index) if index is not None else None
    if body is None:
        return json_response(wire.not_found_body(access_denied=False), 404)
    return raw_json_response(body)


async def post_features(request: Request) -> Response:
    st = _state(request)
    try:
        items, max_acts = wire.parse_features_body(await _body(request))
    except wire.WireError as exc:
        return _route_error(exc)

    def lookup(model_id: str, layer: str, index: str) -> dict[str, Any] | None:
        # getNeurons checks no access: an unknown model or source simply finds nothing.
        i = wire.canonical_index(index)
        if i is None or st.source(model_id, layer) is None:
            return None
        return st.features_post_item(model_id, layer, i, max_acts)

    return json_response(wire.order_features_post(items, lookup))


async def post_features_offset(request: Request) -> Response:
    st = _state(request)
    try:
        body = await _body(request)
    except wire.WireError:
        return _server_error()
    if not isinstance(body, dict):
        return _server_error()  # destructuring null throws a TypeError
    model_id, layer, offset = body.get("modelId"), body.get("layer"), body.get("offset")
    if not isinstance(model_id, str) or not isinstance(layer, str):
        return _server_error()  # Prisma refuses the missing field
    if not st.can_access(model_id, layer):
        return _envelope(wire.NOT_FOUND_MESSAGE, 404)
    if offset is None or offset is False or offset == 0:
        offset = 0
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        return _server_error()  # Postgres refuses the OFFSET
    return json_response(st.features_offset(model_id, layer, offset))


async def post_model_list(request: Request) -> Response:
    return json_response(_state(request).models_list())


async def get_source_set(request: Request) -> Response:
    st = _state(request)
    return json_response(st.source_set(request.path_params["model_id"], request.path_params["set_name"]))


async def post_explanation_search(request: Request) -> Response:
    st = _state(request)
    try:
        raw = await _body(request)
        req = wire.parse_search_body(raw)
    except wire.WireError as exc:
        return _route_error(exc)
    sets = {wire.set_name_of(layer) for layer in req.layers}
    if req.model_id not in st.model_ids() or not sets <= set(st.set_names(req.model_id)):
        # lib/db/explanation.ts asserts access; the route's catch turns the 404 into this.
        return json_response({"message": wire.UNKNOWN_ERROR}, 500)
    return json_response(st.search(req.model_id, req.layers, req.query, req.offset, request=wire.search_echo(raw, req)))


async def post_vector_get(request: Request) -> Response:
    st = _state(request)
    try:
        body = await _body(request)
    except wire.WireError:
        return _server_error()
    if wire.js_falsy(body) or not isinstance(body, dict):
        return _envelope("this must be a `object` type, but the final value was: `" + orjson.dumps(body).decode() + "`.", 400)
    fields: dict[str, str] = {}
    for key in ("index", "source", "modelId"):  # yup reports the last-declared field first
        v = body.get(key)
        if v is None:
            return _envelope(f"{key} is a required field", 400)
        try:
            fields[key] = wire.yup_string(v, key)
        except wire.WireError as exc:
            return _envelope(exc.message, 400)
    index = wire.canonical_index(fields["index"])
    vector = st.vector(fields["modelId"], fields["source"], index) if index is not None else None
    if vector is None:
        return _server_error()  # no stored vector: the inference-server fallback throws
    return json_response({"vector": vector})


async def get_explanation_export(request: Request) -> Response:
    return json_response(
        {
            "newUrl": EXPORTS_URL,
            "message": "This endpoint has been removed. Explanations exports can be downloaded more quickly and "
            f"efficiently at {EXPORTS_URL}  Please contact support@neuronpedia.org if you have any questions.",
        },
        400,
    )


_HANDLERS = {
    wire.FEATURE_PATH: get_feature,
    wire.FEATURES_PATH: post_features,
    wire.FEATURES_OFFSET_PATH: post_features_offset,
    wire.MODEL_LIST_PATH: post_model_list,
    wire.SOURCE_SET_PATH: get_source_set,
    wire.SEARCH_PATH: post_explanation_search,
    wire.VECTOR_GET_PATH: post_vector_get,
    wire.EXPLANATION_EXPORT_PATH: get_explanation_export,
}


def api_routes() -> list[Route]:
    return [Route(path, _HANDLERS[path], methods=[method]) for path, method in wire.READ_ROUTES]


# --------------------------------------------------------------------------- /_emulator


async def control_reset(request: Request) -> Response:
    _state(request).reset()
    return json_response({"ok": True})


async def control_faults(request: Request) -> Response:
    st = _state(request)
    if request.method == "POST":
        try:
            st.faults = FaultConfig.from_json(orjson.loads(await request.body()))
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            return json_response({"error": str(exc)}, 400)
    return json_response(st.faults.to_json())


async def control_log(request: Request) -> Response:
    return json_response([r.to_json() for r in _state(request).requests])


async def control_config(request: Request) -> Response:
    st = _state(request)
    if request.method == "POST":
        try:
            body = orjson.loads(await request.body())
            if "latency_s" in body:
                st.latency_s = float(body["latency_s"])
            if "rate_limit" in body:
                rl = body["rate_limit"]
                st.rate_limit = None if rl is None else RateLimitConfig.from_json(rl)
        except (ValueError, TypeError, AttributeError, orjson.JSONDecodeError) as exc:
            return json_response({"error": str(exc)}, 400)
    rl_now = st.rate_limit
    return json_response({
        "latency_s": st.latency_s,
        "rate_limit": rl_now.to_json() if rl_now else None,
        "faults": st.faults.to_json(),
        "seed": st.config.seed,
    })


def control_routes() -> list[Route]:
    return [
        Route("/_emulator/reset", control_reset, methods=["POST"]),
        Route("/_emulator/faults", control_faults, methods=["GET", "POST"]),
        Route("/_emulator/log", control_log, methods=["GET"]),
        Route("/_emulator/config", control_config, methods=["GET", "POST"]),
    ]
