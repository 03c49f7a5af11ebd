"""The Neuronpedia contract: paths, body validation, envelopes and orderings, in one place.

The client, the emulator (`npclient.testing`) and `np-mirror serve` all speak Neuronpedia's
API, and each of them used to carry its own idea of it. This module is that idea, written
from Neuronpedia's own code (`hijohnnylin/neuronpedia` at ebb8426, 2026-08-20; every rule
names the file it follows, paths relative to `apps/webapp/`). It holds no I/O and maps no
error to a status: each server decides that itself (the emulator answers 500 where
Neuronpedia does; `serve` never answers 500 to bad input).

`tests/test_wire.py` checks every rule here against a table written from Neuronpedia's
code, not against this module's own output.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

__all__ = [
    "FEATURE_PATH", "FEATURES_PATH", "FEATURES_OFFSET_PATH", "MODEL_LIST_PATH", "SOURCE_SET_PATH",
    "SEARCH_PATH", "VECTOR_GET_PATH", "EXPLANATION_EXPORT_PATH", "READ_ROUTES",
    "SEARCH_PAGE", "OFFSET_PAGE", "SEARCH_MIN_QUERY", "NEURONS_SET",
    "NOT_FOUND_MESSAGE", "SERVER_ERROR_MESSAGE", "UNKNOWN_ERROR", "INVALID_JSON_BODY",
    "MODEL_LIST_SOURCE_FIELDS", "EXPORT_FEATURE_FIELDS", "EXPORT_ACTIVATION_FIELDS", "EXPORT_EXPLANATION_FIELDS",
    "WireError", "FeatureRequest", "SearchRequest", "parse_json", "js_falsy", "yup_string",
    "parse_features_body", "parse_search_body", "error_envelope", "not_found_body",
    "search_page", "search_echo", "order_features_post", "activation_rank_key", "rank_activations",
    "explanation_order_key", "canonical_index", "is_neuron_layer", "set_name_of", "layer_number", "words", "limit_bucket",
]

# --------------------------------------------------------------------------- routes
# app/api/<path>/route.ts(x); the brace names are ours.
FEATURE_PATH = "/api/feature/{model_id}/{source_id}/{index}"
FEATURES_PATH = "/api/features"
FEATURES_OFFSET_PATH = "/api/features-offset"
MODEL_LIST_PATH = "/api/model/list"
SOURCE_SET_PATH = "/api/source-set/{model_id}/{set_name}"
SEARCH_PATH = "/api/explanation/search"
VECTOR_GET_PATH = "/api/vector/get"
EXPLANATION_EXPORT_PATH = "/api/explanation/export"

#: The read routes a mirror uses, with the one method each answers.
READ_ROUTES: tuple[tuple[str, str], ...] = (
    (FEATURE_PATH, "GET"),
    (FEATURES_PATH, "POST"),
    (FEATURES_OFFSET_PATH, "POST"),
    (MODEL_LIST_PATH, "POST"),
    (SOURCE_SET_PATH, "GET"),
    (SEARCH_PATH, "POST"),
    (VECTOR_GET_PATH, "POST"),
    (EXPLANATION_EXPORT_PATH, "GET"),
)

#: lib/db/explanation.ts: MAX_EXPLANATION_SEARCH_RESULTS
SEARCH_PAGE = 20
#: lib/db/neuron.ts: NEURONS_TO_LOAD_PER_REQUEST
OFFSET_PAGE = 25
#: app/api/explanation/search/route.tsx: `query: string().required().min(3)`
SEARCH_MIN_QUERY = 3
#: lib/utils/source.ts: NEURONS_SOURCESET
NEURONS_SET = "neurons"

# --------------------------------------------------------------------------- messages
#: lib/db/userCanAccess.ts: ERROR_NOT_FOUND_MESSAGE (NEXT_PUBLIC_URL is the site root)
NOT_FOUND_MESSAGE = (
    "The model, source, or feature you specified is not available. Check available public "
    "models/sources (including which ones have inference enabled) at "
    "https://www.neuronpedia.org/available-resources"
)
#: lib/api-error.ts: what `toErrorResponse` answers for anything that is not an ApiError
SERVER_ERROR_MESSAGE = "Something went wrong on our end. The error has been reported."
#: app/api/features/route.ts, app/api/explanation/search/route.tsx: their own catch-all
UNKNOWN_ERROR = "Unknown Error"
#: app/api/features/route.ts and the search routes: a falsy JSON body
INVALID_JSON_BODY = "Invalid JSON body"

# --------------------------------------------------------------------------- shapes
#: lib/db/model.ts (`getGlobalModels`): the only source columns POST /api/model/list selects.
MODEL_LIST_SOURCE_FIELDS: tuple[str, ...] = (
    "id", "modelId", "visibility", "setName", "hasUmap", "hasUmapLogSparsity", "hasUmapClusters",
    "num_prompts", "num_tokens_in_prompt", "dataset", "inferenceEnabled", "hasDashboards", "notes",
    "createdAt", "cosSimMatchSourceId", "cosSimMatchModelId",
)
#: utils/neuronpedia-utils/neuronpedia_utils/export-data.py: the feature columns it selects, in order
#: (no createdAt, no umap_*, no correlated_features_*).
EXPORT_FEATURE_FIELDS: tuple[str, ...] = (
    "modelId", "layer", "index", "maxActApprox", "creatorId", "frac_nonzero",
    "freq_hist_data_bar_heights", "freq_hist_data_bar_values", "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values", "neuron_alignment_indices", "neuron_alignment_l1",
    "neuron_alignment_values", "correlated_neurons_indices", "correlated_neurons_l1",
    "correlated_neurons_pearson", "decoder_weights_dist", "neg_str", "neg_values", "pos_str", "pos_values",
    "sourceSetName", "topkCosSimIndices", "topkCosSimValues", "vector", "vectorLabel", "hookName",
    "vectorDefaultSteerStrength", "hasVector",
)
#: export-data.py: activation columns (no createdAt, dataIndex, lossValues, z*).
EXPORT_ACTIVATION_FIELDS: tuple[str, ...] = (
    "id", "modelId", "layer", "index", "creatorId", "dataSource", "tokens", "maxValue", "minValue",
    "values", "maxValueTokenIndex", "dfaValues", "dfaMaxValue", "dfaTargetIndex", "binContains", "binMin",
    "binMax",
)
#: export-data.py: explanation columns (no scores; UMAP coordinates ride here).
EXPORT_EXPLANATION_FIELDS: tuple[str, ...] = (
    "id", "modelId", "layer", "index", "authorId", "description", "embedding", "typeName",
    "explanationModelName", "umap_x", "umap_y", "umap_cluster", "umap_log_feature_sparsity",
)


# --------------------------------------------------------------------------- ids
_NEURON_LAYER = re.compile(r"^-?\d+$")


def is_neuron_layer(source: str) -> bool:
    """lib/utils/source.ts `isNeuronLayerSource`: a bare layer number (`5`) is the neurons set."""
    return bool(_NEURON_LAYER.match(source))


def set_name_of(source: str) -> str:
    """lib/utils/source.ts `getSourceSetNameFromSource`.

    `5` -> `neurons`; `0-res-jb` -> `res-jb`; `e-res-sm` -> `res-sm` (an embedding layer);
    `5-gemmascope-res-16k__l0-143` -> `gemmascope-res-16k`; a string without `-` is itself.
    """
    if is_neuron_layer(source):
        return NEURONS_SET
    if "-" in source:
        return source.split("-", 1)[1].split("__", 1)[0]
    return source


def layer_number(source: str) -> Optional[int]:
    """lib/utils/source.ts `getLayerNumFromSource`: `e-...` (the embedding) is 0."""
    if is_neuron_layer(source):
        return int(source)
    head = source.split("-", 1)[0]
    if head == "e":
        return 0
    return int(head) if head.isdigit() else None


def canonical_index(text: str) -> Optional[int]:
    """The feature index a path or body string names exactly (`"12"`), or None: Neuronpedia's
    `index` is a text column matched as is, so `"012"`, `"-1"` or `"1e3"` name no feature."""
    if not text.isdigit() or len(text) > 18 or (len(text) > 1 and text[0] == "0") or not text.isascii():
        return None
    return int(text)


# --------------------------------------------------------------------------- errors and envelopes


class WireError(ValueError):
    """A request Neuronpedia refuses; `message` is the text its route answers with."""

    def __init__(self, message: str, *, kind: str = "validation") -> None:
        super().__init__(message)
        self.message = message
        #: validation (yup: 400), unknown (the route's own catch-all: 500 "Unknown Error"),
        #: invalid_json (a falsy body: 400), not_json (thrown before the route's try: 500 envelope)
        self.kind = kind


def error_envelope(message: str) -> dict[str, str]:
    """lib/api-error.ts `toErrorResponse`: both keys, the same text, `error` first."""
    return {"error": message, "message": message}


def not_found_body(*, access_denied: bool) -> dict[str, str]:
    """GET /api/feature 404 bodies: an unknown model or source *set* fails the access assert
    (lib/db/userCanAccess.ts, envelope with both keys); a missing feature in a known set is the
    route's own `{"error"}` (app/api/feature/[modelId]/[layer]/[index]/route.ts)."""
    return error_envelope(NOT_FOUND_MESSAGE) if access_denied else {"error": NOT_FOUND_MESSAGE}


# --------------------------------------------------------------------------- bodies


def parse_json(raw: bytes) -> Any:
    """A request body as JavaScript's `JSON.parse` reads it (`await request.json()`).

    Numbers beyond a double's range become infinite, as in JavaScript (a 5,000-digit index is
    `Infinity`, which yup then calls "not an integer"); `NaN`/`Infinity` tokens are not JSON.
    Raises `WireError(kind="not_json")`, which Neuronpedia answers with its 500 envelope: the
    parse happens before the routes' own try.
    """
    import json

    def big_int(text: str) -> Any:
        return int(text) if len(text) < 300 else (math.inf if not text.startswith("-") else -math.inf)

    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    try:
        text = raw.decode("utf-8")
        return json.loads(text, parse_int=big_int, parse_constant=refuse) if text.strip() else _no_body()
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireError(f"invalid JSON body: {str(exc)[:120]}", kind="not_json") from None


def _no_body() -> Any:
    raise ValueError("empty body")


# --------------------------------------------------------------------------- yup semantics


def _shown(value: Any) -> str:
    """How yup prints a value in a type error (JSON, strings quoted; 2-space indent)."""
    import json

    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return json.dumps(value, indent=2, ensure_ascii=False)


def js_falsy(v: Any) -> bool:
    """`!value` in JavaScript: [] and {} are truthy, 0, "" and NaN are not."""
    if v is None or v is False or v == "":
        return True
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (v == 0 or v != v)


_JS_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _js_number(text: str) -> float:
    """yup's number cast of a string: all whitespace removed, then JavaScript's `Number()`."""
    s = re.sub(r"\s", "", text)
    if s == "":
        return math.nan  # yup: an empty string is NaN, unlike Number("")
    low = s.lower()
    for prefix, base in (("0x", 16), ("0o", 8), ("0b", 2)):
        if low.startswith(prefix):
            try:
                return float(int(s[2:], base))
            except ValueError:
                return math.nan
    if low in ("infinity", "+infinity"):
        return math.inf
    if low == "-infinity":
        return -math.inf
    if not _JS_NUMBER.match(s):
        return math.nan
    return float(s)


def _yup_number(value: Any, path: str) -> float:
    """yup `number().integer()`: cast, then check; raises WireError with yup's wording."""
    if isinstance(value, bool):
        raise WireError(f"{path} must be a `number` type, but the final value was: `NaN` (cast from the value `{_shown(value)}`).")
    if isinstance(value, str):
        cast = _js_number(value)
        if math.isnan(cast):
            raise WireError(
                f"{path} must be a `number` type, but the final value was: `NaN` (cast from the value `{_shown(value)}`)."
            )
        value = cast
    if not isinstance(value, (int, float)):
        raise WireError(f"{path} must be a `number` type, but the final value was: `{_shown(value)}`.")
    value = _js_float(value)
    if not math.isfinite(value) or not value.is_integer():
        raise WireError(f"{path} must be an integer")
    return value


def yup_string(value: Any, path: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _js_to_string(value)
    raise WireError(f"{path} must be a `string` type, but the final value was: `{_shown(value)}`.")


def _js_to_string(n: float | int) -> str:
    """JavaScript's `String(number)` for the integral values an index can take.

    Below 1e21 that is the plain digits (past 2**53, the shortest round-trip digits padded with
    zeros, as JavaScript prints them); beyond, Python's repr (`1e+21`) matches JavaScript's.
    """
    f = _js_float(n)
    if f == 0:
        return "0"
    if abs(f) < 2**53:
        return str(int(f))
    text = repr(f)  # the shortest digits that round-trip, as JavaScript picks them
    if abs(f) >= 1e21 or not math.isfinite(f):
        return text if math.isfinite(f) else ("Infinity" if f > 0 else "-Infinity")
    mantissa, _, exp = text.partition("e")
    digits = mantissa.replace(".", "").lstrip("-")
    int_digits = int(exp) + 1 if exp else len(mantissa.split(".")[0].lstrip("-"))
    return ("-" if f < 0 else "") + digits.ljust(int_digits, "0")[:int_digits]


def _js_float(n: float | int) -> float:
    """A JSON number as JavaScript holds it: a double, Infinity past its range."""
    try:
        return float(n)
    except OverflowError:
        return math.inf if n > 0 else -math.inf


@dataclass(frozen=True)
class FeatureRequest:
    """One item of a `POST /api/features` body, after yup's casts."""

    model_id: str
    layer: str
    #: the string Neuronpedia looks up (`feature.index.toString()`): `"0x10"` asks for `"16"`
    index: str
    max_acts: Optional[int]

    @property
    def int_index(self) -> Optional[int]:
        """The index as a non-negative integer, or None where no feature can have it."""
        return canonical_index(self.index)


def parse_features_body(body: Any) -> tuple[list[FeatureRequest], Optional[int]]:
    """Validate a `POST /api/features` body as app/api/features/route.ts does.

    Returns the items and `maxActsToReturn`, which the route reads from the *first* item only.
    yup checks the array in order and, inside an object, the fields in reverse declaration
    order (`maxActsToReturn`, `index`, `layer`, `modelId`); the first failure is the message.
    An empty array passes validation and then fails inside the route's try (`Unknown Error`).
    """
    if js_falsy(body):
        raise WireError(INVALID_JSON_BODY, kind="invalid_json")
    if not isinstance(body, list):
        raise WireError(f"this must be a `array` type, but the final value was: `{_shown(body)}`.")
    items: list[FeatureRequest] = []
    for pos, item in enumerate(body):
        if item is None:
            raise WireError(f"[{pos}] is a required field")
        if not isinstance(item, dict):
            raise WireError(f"[{pos}] must be a `object` type, but the final value was: `{_shown(item)}`.")
        acts = item.get("maxActsToReturn")
        if acts is not None:
            acts = int(_yup_number(acts, f"[{pos}].maxActsToReturn"))
        raw_index = item.get("index")
        if raw_index is None:
            raise WireError(f"[{pos}].index is a required field")
        index = _yup_number(raw_index, f"[{pos}].index")
        fields = {}
        for key in ("layer", "modelId"):
            v = item.get(key)
            if v is None:
                raise WireError(f"[{pos}].{key} is a required field")
            fields[key] = yup_string(v, f"[{pos}].{key}")
        items.append(FeatureRequest(fields["modelId"], fields["layer"], _js_to_string(index), acts))
    if not items:
        raise WireError(UNKNOWN_ERROR, kind="unknown")  # `featuresRequest[0].maxActsToReturn` throws
    return items, items[0].max_acts


@dataclass(frozen=True)
class SearchRequest:
    model_id: str
    layers: tuple[str, ...]
    query: str
    offset: int


def parse_search_body(body: Any) -> SearchRequest:
    """Validate a `POST /api/explanation/search` body as app/api/explanation/search/route.tsx does.

    Fields are checked in reverse declaration order (`offset`, `query`, `layers`, `modelId`);
    `query` needs at least 3 characters, counted raw (three spaces pass). An empty `layers`
    passes yup and then fails inside the route (`Unknown Error`), as does a negative offset.
    """
    if js_falsy(body):
        raise WireError(INVALID_JSON_BODY, kind="invalid_json")
    if not isinstance(body, dict):
        raise WireError(f"this must be a `object` type, but the final value was: `{_shown(body)}`.")
    offset = body.get("offset")
    if offset is not None:
        offset = int(_yup_number(offset, "offset"))
    query = body.get("query")
    if query is None:
        raise WireError("query is a required field")
    query = yup_string(query, "query")
    if len(query) < SEARCH_MIN_QUERY:
        raise WireError(f"query must be at least {SEARCH_MIN_QUERY} characters")
    layers = body.get("layers")
    if layers is None:
        raise WireError("layers is a required field")
    if not isinstance(layers, list):
        raise WireError(f"layers must be a `array` type, but the final value was: `{_shown(layers)}`.")
    cast_layers = []
    for pos, layer in enumerate(layers):
        if layer is None:
            raise WireError(f"layers[{pos}] is a required field")
        cast_layers.append(yup_string(layer, f"layers[{pos}]"))
    model_id = body.get("modelId")
    if model_id is None:
        raise WireError("modelId is a required field")
    model_id = yup_string(model_id, "modelId")
    if not cast_layers or (offset is not None and offset < 0):
        raise WireError(UNKNOWN_ERROR, kind="unknown")
    return SearchRequest(model_id, tuple(cast_layers), query, offset or 0)


def search_page(request: dict[str, Any], results: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """The search envelope (app/api/explanation/search/route.tsx): `hasMore` means the page is
    full, and `nextOffset` is present only then."""
    page: dict[str, Any] = {
        "request": request,
        "results": results,
        "resultsCount": len(results),
        "hasMore": len(results) == SEARCH_PAGE,
    }
    if page["hasMore"]:
        page["nextOffset"] = offset + len(results)
    return page


def search_echo(body: dict[str, Any], req: SearchRequest) -> dict[str, Any]:
    """The `request` of a search answer (app/api/explanation/search/route.tsx echoes yup's cast): the body itself when yup cast nothing, else yup's rebuilt
    object (declared keys in reverse order: offset, query, layers, modelId; then the others)."""
    offset = body.get("offset")
    same = (body.get("modelId") == req.model_id and body.get("query") == req.query
            and isinstance(body.get("layers"), list) and list(body["layers"]) == list(req.layers)
            and all(isinstance(x, str) for x in body["layers"])
            and isinstance(body.get("modelId"), str) and isinstance(body.get("query"), str)
            and (offset is None or (isinstance(offset, (int, float)) and not isinstance(offset, bool)
                                    and offset == req.offset)))
    if same:
        return body
    echo: dict[str, Any] = {}
    if "offset" in body:
        echo["offset"] = None if offset is None else req.offset
    echo.update({"query": req.query, "layers": list(req.layers), "modelId": req.model_id})
    for key, value in body.items():
        echo.setdefault(key, value)
    return echo


# --------------------------------------------------------------------------- orderings


def order_features_post(
    items: Sequence[FeatureRequest], lookup: Callable[[str, str, str], Optional[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """What POST /api/features answers: the rows found, once each, ordered by the position of
    the first request item with the same *index* (app/api/features/route.ts compares
    `parseInt(row.index)` only, not model or layer)."""
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for it in items:
        key = (it.model_id, it.layer, it.index)
        if key in found:
            continue
        row = lookup(*key)
        if row is not None:
            found[key] = row
    first_pos: dict[str, int] = {}
    for pos, it in enumerate(items):
        first_pos.setdefault(it.index, pos)
    return sorted(found.values(), key=lambda r: first_pos.get(str(r.get("index")), len(items)))


def _num(value: Any) -> float:
    """A sortable number: None and NaN count as the smallest."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return -math.inf
    return float(value)


def activation_rank_key(max_value: Any, activation_id: Any) -> tuple[float, str]:
    """Rank 0 is the largest `maxValue`, ties by activation id (lib/db/neuron.ts orders GET's
    activations by `maxValue desc` with no tiebreak; the id is ours, so every path agrees)."""
    return (-_num(max_value), "" if activation_id is None else str(activation_id))


def rank_activations(acts: Iterable[Any], *, max_value: str = "maxValue", ident: str = "id") -> list[Any]:
    """Activation dicts (or objects with those attributes) sorted top-first."""
    def get(a: Any, name: str) -> Any:
        return a.get(name) if isinstance(a, dict) else getattr(a, name)

    return sorted(acts, key=lambda a: activation_rank_key(get(a, max_value), get(a, ident)))


def explanation_order_key(score_v2: Any, score_v1: Any, explanation_id: Any) -> tuple[int, float, float, str]:
    """GET's explanation order (lib/db/neuron.ts: `orderBy [{scoreV2: desc}, {scoreV1: desc}]`):
    Postgres puts NULL first in a descending sort, so an unscored explanation leads; ties,
    which Neuronpedia leaves unspecified, go by explanation id here."""
    v2_null = score_v2 is None or (isinstance(score_v2, float) and score_v2 != score_v2)
    return (0 if v2_null else 1, 0.0 if v2_null else -float(score_v2), -_num(score_v1),
            "" if explanation_id is None else str(explanation_id))


# --------------------------------------------------------------------------- search text
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> set[str]:
    """Lower-case alphanumeric words: what keyword search matches on (offline, no embeddings)."""
    return set(_WORD.findall(text.lower()))


# --------------------------------------------------------------------------- rate limit
#: middleware.ts NORMAL_RATE_LIMITS, in order: (endpoint, per hour, exact match). Every entry
#: a path matches is charged in this order; the first that refuses answers 429, and
#: `x-limit-remaining` is the remaining count of the last one charged.
NORMAL_RATE_LIMITS: tuple[tuple[str, int, bool], ...] = (
    ("/", 25000, False), ("/api", 25000, False), ("/api/activation/new", 1000, False),
    ("/api/explanation/search", 200, False), ("/api/explanation/score", 120, True), ("/api/steer", 240, False),
    ("/api/search-topk-by-token", 500, False), ("/api/search-all", 1600, False),
    ("/api/graph/generate", 30, False), ("/api/lens/prompt", 240, True), ("/api/lens/share", 30, True),
    ("/api/features/upload-batch", 1000, False), ("/api/model/new", 5, False),
    ("/api/source-set/new", 10, False), ("/api/graph/tokenize", 300, False),
    ("/api/graph/parse-chat-prompt", 300, False), ("/api/auth/signin", 5, False),
    ("/api/explorer/url-metadata", 120, False), ("/api/explorer/node/submit-urls", 30, False),
    ("/api/explorer/node/new", 60, False), ("/api/explorer/node/update", 120, False),
    ("/api/explorer/node/delete", 60, False), ("/api/explorer/node/approve", 60, False),
    ("/api/explorer/comment/new", 120, False), ("/api/explorer/comment/delete", 60, False),
    ("/api/explorer/edge/new", 60, False), ("/api/explorer/edge/delete", 60, False),
    ("/api/saelens/latent-decoder", 3600, False), ("/api/nla/explain-saelens", 120, False),
    ("/api/nla/completion", 240, False), ("/api/nla/explain", 120, True), ("/api/nla/sources", 1200, False),
)
#: middleware.ts NO_LIMIT_ENDPOINTS
NO_LIMIT_PREFIXES: tuple[str, ...] = ("/api/steer-load",)


def path_matches(path: str, endpoint: str, exact: bool) -> bool:
    """middleware.ts `pathMatchesEndpoint` (on the lower-cased path)."""
    if exact:
        return path == endpoint or path.startswith(endpoint + "/")
    return path.startswith(endpoint)


def limit_bucket(path: str) -> str:
    """The bucket whose count `x-limit-remaining` reports for `path`: the last one charged.

    `/api/feature/...` -> `/api`; every `/api/explanation/search*` route -> the 200/h search
    bucket they share by prefix.
    """
    path = path.lower()
    last = "/"
    for endpoint, _, exact in NORMAL_RATE_LIMITS:
        if path_matches(path, endpoint, exact):
            last = endpoint
    return last
