"""Starlette handlers for Neuronpedia's read routes, rendered from `EmulatorState`.

Status codes and error bodies follow the real webapp: route-level validation answers
400 `{"message"}`, unknown model/source 404 `{"error", "message"}`, search failures 500
`{"message"}`, and errors the real code does not catch (a body that is not JSON, a yup
failure in /api/vector/get) a framework 500 with a plain-text body.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .config import FaultConfig, RateLimitConfig
from .state import EmulatorState

__all__ = [
    "api_routes", "control_routes", "json_response", "raw_json_response", "source_missing", "not_found_html",
    "parse_features_body", "parse_search_body",
]

_INT_RE = re.compile(r"[0-9]+")
EXPORTS_URL = "https://neuronpedia-datasets.s3.amazonaws.com/index.html?prefix=v1/"


class _Uncaught(Exception):
    """An error the real route does not catch: Next.js answers a bare 500."""


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def raw_json_response(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json")


def _framework_500() -> Response:
    return Response(b"Internal Server Error", status_code=500, media_type="text/plain; charset=utf-8")


async def not_found_html(request: Request, exc: Exception) -> Response:
    body = (
        "<!DOCTYPE html><html><head><title>404: This page could not be found.</title></head>"
        "<body><h1>404</h1><h2>This page could not be found.</h2></body></html>"
    )
    return Response(body, status_code=404, media_type="text/html; charset=utf-8")


def _state(request: Request) -> EmulatorState:
    return request.app.state.emulator  # type: ignore[no-any-return]


async def _json_body(request: Request) -> Any:
    """`await request.json()` as Next.js does it: a bad body throws out of the route."""
    raw = await request.body()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _Uncaught(str(exc)) from exc


def _js_falsy(v: Any) -> bool:
    """`!value` in JavaScript: [] and {} are truthy, 0 and "" are not."""
    return v is None or v is False or v == "" or (isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0)


def source_missing(model_id: str, source_id: str) -> Response:
    return json_response(
        {"error": "Not Found", "message": f"Model or source not found: {model_id}/{source_id}"}, 404
    )


# --------------------------------------------------------------------------- /api


async def get_feature(request: Request) -> Response:
    st = _state(request)
    model_id = request.path_params["model_id"]
    source_id = request.path_params["source_id"]
    raw_index = request.path_params["index"]
    if st.source(model_id, source_id) is None:
        return source_missing(model_id, source_id)
    if not _INT_RE.fullmatch(raw_index):
        return json_response(
            {"error": "Invalid index", "message": f"index must be a non-negative integer, got {raw_index!r}"}, 400
        )
    index = int(raw_index)
    # the DB key is the canonical string: "007" matches nothing
    body = st.feature_bytes(model_id, source_id, index) if raw_index == str(index) else None
    if body is None:
        return json_response({"error": "Feature Not Found"}, 404)
    return raw_json_response(body)


def _yup_string(item: dict[str, Any], key: str, pos: int) -> str:
    v = item.get(key)
    if v is None:
        raise ValueError(f"[{pos}].{key} is a required field")
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        shown = orjson.dumps(v).decode()
        raise ValueError(f"[{pos}].{key} must be a `string` type, but the final value was: `{shown}`.")
    return v if isinstance(v, str) else str(v)


def _yup_int(item: dict[str, Any], key: str, pos: int, required: bool) -> int | None:
    v = item.get(key)
    if v is None:
        if required:
            raise ValueError(f"[{pos}].{key} is a required field")
        return None
    if isinstance(v, str):  # yup casts numeric strings
        try:
            v = float(v.strip()) if v.strip() else None
        except ValueError:
            v = None
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise ValueError(f"[{pos}].{key} must be a `number` type, but the final value was: `NaN`.")
    if float(v) != int(v):
        raise ValueError(f"[{pos}].{key} must be an integer")
    return int(v)


def parse_features_body(body: Any) -> tuple[list[tuple[str, str, int]], int | None]:
    """Validate a `POST /api/features` body as the real route does (yup messages included).

    Returns the (modelId, layer, index) items and `maxActsToReturn`, which the real route reads
    from the first item only. Raises ValueError with the message the route answers 400 with.
    """
    if _js_falsy(body):
        raise ValueError("Invalid JSON body")
    if not isinstance(body, list):
        raise ValueError(f"this must be a `array` type, but the final value was: `{orjson.dumps(body).decode()}`.")
    items: list[tuple[str, str, int]] = []
    max_acts: int | None = None
    for pos, item in enumerate(body):
        if not isinstance(item, dict):
            raise ValueError(f"[{pos}] must be a `object` type")
        model_id = _yup_string(item, "modelId", pos)
        layer = _yup_string(item, "layer", pos)
        index = _yup_int(item, "index", pos, required=True)
        acts = _yup_int(item, "maxActsToReturn", pos, required=False)
        if pos == 0:
            max_acts = acts
        assert index is not None
        items.append((model_id, layer, index))
    return items, max_acts


def parse_search_body(body: Any, *, max_layers: int | None = None) -> tuple[str, list[str], str, int]:
    """Validate a `POST /api/explanation/search` body as the real route does.

    Returns (modelId, layers, query, offset). Raises ValueError with the message the route
    answers 500 with; `max_layers` adds a bound the real route does not have.
    """
    if not isinstance(body, dict):
        raise ValueError("Invalid request body")
    model_id, layers, query = body.get("modelId"), body.get("layers"), body.get("query")
    offset = body.get("offset") or 0
    if not isinstance(model_id, str) or not model_id:
        raise ValueError("modelId is a required field")
    if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers) or not layers:
        raise ValueError("layers is a required field")
    if max_layers is not None and len(layers) > max_layers:
        raise ValueError(f"at most {max_layers} layers")
    if not isinstance(query, str) or not query.strip():
        raise ValueError("query is a required field")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError("offset must be a non-negative integer")
    return model_id, layers, query, offset


async def post_features(request: Request) -> Response:
    st = _state(request)
    try:
        items, max_acts = parse_features_body(await _json_body(request))
    except ValueError as exc:
        return json_response({"message": str(exc)}, 400)
    if not items:
        return json_response([])
    return json_response(st.features_post(items, max_acts))


async def post_features_offset(request: Request) -> Response:
    st = _state(request)
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise _Uncaught("cannot destructure body")
    model_id, layer, offset = body.get("modelId"), body.get("layer"), body.get("offset")
    if not isinstance(model_id, str) or not isinstance(layer, str) or st.source(model_id, layer) is None:
        return source_missing(str(model_id), str(layer))
    if offset is None or offset == 0:
        offset = 0
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise _Uncaught("bad offset")
    return json_response(st.features_offset(model_id, layer, offset))


async def post_model_list(request: Request) -> Response:
    return json_response(_state(request).models_list())


async def get_source_set(request: Request) -> Response:
    st = _state(request)
    return json_response(st.source_set(request.path_params["model_id"], request.path_params["set_name"]))


async def post_explanation_search(request: Request) -> Response:
    st = _state(request)
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return json_response({"message": "Invalid JSON body"}, 500)
    try:
        model_id, layers, query, offset = parse_search_body(body)
    except ValueError as exc:
        return json_response({"message": str(exc)}, 500)
    if model_id not in st.model_ids():
        return json_response({"message": f"Model {model_id} not found"}, 500)
    return json_response(st.search(model_id, layers, query, offset))


async def post_vector_get(request: Request) -> Response:
    st = _state(request)
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise _Uncaught("validation")
    fields = []
    for key in ("modelId", "source", "index"):
        v = body.get(key)
        if v is None or isinstance(v, bool) or not isinstance(v, (str, int, float)) or v == "":
            raise _Uncaught(f"{key} is a required field")  # yup throws outside any try
        fields.append(str(v))
    model_id, source, raw_index = fields
    index = int(raw_index) if _INT_RE.fullmatch(raw_index) and raw_index == str(int(raw_index)) else None
    vector = st.vector(model_id, source, index) if index is not None else None
    return json_response({"vector": vector})


async def get_explanation_export(request: Request) -> Response:
    return json_response(
        {
            "error": "This endpoint has been removed. Download explanations from the bulk exports instead: "
            + EXPORTS_URL
        },
        400,
    )


def _guard(handler: Any) -> Any:
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except _Uncaught:
            return _framework_500()

    wrapped.__name__ = handler.__name__
    return wrapped


def api_routes() -> list[Route]:
    return [
        Route("/api/feature/{model_id}/{source_id}/{index}", _guard(get_feature), methods=["GET"]),
        Route("/api/features", _guard(post_features), methods=["POST"]),
        Route("/api/features-offset", _guard(post_features_offset), methods=["POST"]),
        Route("/api/model/list", _guard(post_model_list), methods=["POST"]),
        Route("/api/source-set/{model_id}/{set_name}", _guard(get_source_set), methods=["GET"]),
        Route("/api/explanation/search", _guard(post_explanation_search), methods=["POST"]),
        Route("/api/vector/get", _guard(post_vector_get), methods=["POST"]),
        Route("/api/explanation/export", _guard(get_explanation_export), methods=["GET"]),
    ]


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
