"""`npclient.wire` against a table of Neuronpedia's real behaviour.

Every row below was written from Neuronpedia's source (`hijohnnylin/neuronpedia` at ebb8426,
paths under `apps/webapp/`), with yup's messages as yup 1.7.1 (the version in its lockfile)
prints them; the expected values are literals, never wire's own output.
"""

from __future__ import annotations

import math

import pytest

from npclient import wire

# (body, expected message or, for a valid body, the looked-up index strings) — app/api/features/route.ts
FEATURES_BODIES = [
    ({}, "this must be a `array` type, but the final value was: `{}`."),
    ("x", "this must be a `array` type, but the final value was: `\"x\"`."),
    ([None], "[0] is a required field"),
    ([{}], "[0].index is a required field"),  # fields checked in reverse declaration order
    ([{"modelId": "m", "layer": "0-a"}], "[0].index is a required field"),
    ([{"layer": "0-a", "index": 1}], "[0].modelId is a required field"),
    ([{"modelId": "m", "layer": "0-a", "index": "abc"}],
     "[0].index must be a `number` type, but the final value was: `NaN` (cast from the value `\"abc\"`)."),
    ([{"modelId": "m", "layer": "0-a", "index": ""}],
     "[0].index must be a `number` type, but the final value was: `NaN` (cast from the value `\"\"`)."),
    ([{"modelId": "m", "layer": "0-a", "index": True}],
     "[0].index must be a `number` type, but the final value was: `NaN` (cast from the value `true`)."),
    ([{"modelId": "m", "layer": "0-a", "index": "1e400"}], "[0].index must be an integer"),
    ([{"modelId": "m", "layer": "0-a", "index": math.inf}], "[0].index must be an integer"),
    ([{"modelId": "m", "layer": "0-a", "index": 1.5}], "[0].index must be an integer"),
    ([{"modelId": "m", "layer": "0-a", "index": 1, "maxActsToReturn": 2.5}], "[0].maxActsToReturn must be an integer"),
    ([{"modelId": "m", "layer": "0-a", "index": 1}, {"modelId": "m", "layer": "0-a", "index": "x"}],
     "[1].index must be a `number` type, but the final value was: `NaN` (cast from the value `\"x\"`)."),
    ([{"modelId": {"a": "1"}, "layer": "0-a", "index": 1}],
     "[0].modelId must be a `string` type, but the final value was: `{\n  \"a\": \"1\"\n}`."),
    # casts that pass: the route looks up `feature.index.toString()`
    ([{"modelId": "m", "layer": "0-a", "index": "12"}], ["12"]),
    ([{"modelId": "m", "layer": "0-a", "index": " 1 2 "}], ["12"]),
    ([{"modelId": "m", "layer": "0-a", "index": "0x10"}], ["16"]),
    ([{"modelId": "m", "layer": "0-a", "index": "1e3"}], ["1000"]),
    ([{"modelId": "m", "layer": "0-a", "index": -1}], ["-1"]),
    ([{"modelId": "m", "layer": "0-a", "index": "-0"}], ["0"]),
    ([{"modelId": "m", "layer": "0-a", "index": 12345678901234567890}], ["12345678901234567000"]),
    ([{"modelId": "m", "layer": 5, "index": 3}], ["3"]),
]


@pytest.mark.parametrize("body,expected", FEATURES_BODIES)
def test_features_body_as_yup_reads_it(body, expected):
    if isinstance(expected, str):
        with pytest.raises(wire.WireError) as info:
            wire.parse_features_body(body)
        assert info.value.message == expected and info.value.kind == "validation"
    else:
        items, _ = wire.parse_features_body(body)
        assert [it.index for it in items] == expected


def test_features_body_edge_cases():
    # falsy JSON: 400 "Invalid JSON body" (app/api/features/route.ts)
    for falsy in (None, False, 0, ""):
        with pytest.raises(wire.WireError) as info:
            wire.parse_features_body(falsy)
        assert info.value.kind == "invalid_json" and info.value.message == "Invalid JSON body"
    # []: passes yup, then `featuresRequest[0].maxActsToReturn` throws inside the try -> "Unknown Error"
    with pytest.raises(wire.WireError) as info:
        wire.parse_features_body([])
    assert info.value.kind == "unknown" and info.value.message == "Unknown Error"
    # maxActsToReturn is read from the first item only
    items, max_acts = wire.parse_features_body([
        {"modelId": "m", "layer": "0-a", "index": 1, "maxActsToReturn": 3},
        {"modelId": "m", "layer": "0-a", "index": 2, "maxActsToReturn": 9},
    ])
    assert max_acts == 3 and [it.layer for it in items] == ["0-a", "0-a"]
    _, none = wire.parse_features_body([{"modelId": "m", "layer": "0-a", "index": 1}, {"modelId": "m", "layer": "0-a", "index": 2, "maxActsToReturn": 9}])
    assert none is None


def test_request_json_is_javascripts():
    # JSON.parse: a 5,000-digit number is Infinity, which yup calls "not an integer"
    body = wire.parse_json(b'[{"modelId":"m","layer":"0-a","index":' + b"9" * 5000 + b"}]")
    with pytest.raises(wire.WireError, match=r"^\[0\]\.index must be an integer$"):
        wire.parse_features_body(body)
    assert wire.parse_json(b"[1e400]") == [math.inf]
    for bad in (b"{not json", b"", b"[NaN]", b"\xff"):
        with pytest.raises(wire.WireError) as info:
            wire.parse_json(bad)
        assert info.value.kind == "not_json"


# app/api/explanation/search/route.tsx (schema fields modelId, layers, query min(3), offset)
SEARCH_BODIES = [
    ({}, "query is a required field"),
    ({"modelId": 5, "query": "ab"}, "query must be at least 3 characters"),
    ({"modelId": "m", "query": "abc"}, "layers is a required field"),
    ({"layers": ["0-a"], "query": "abc"}, "modelId is a required field"),
    ({"modelId": "m", "layers": "a", "query": "abc"}, "layers must be a `array` type, but the final value was: `\"a\"`."),
    ({"modelId": "m", "layers": ["0-a"], "query": "abc", "offset": "x"},
     "offset must be a `number` type, but the final value was: `NaN` (cast from the value `\"x\"`)."),
    ({"modelId": "m", "layers": ["0-a"], "query": "abc", "offset": 1.5}, "offset must be an integer"),
    ([], "this must be a `object` type, but the final value was: `[]`."),
]


@pytest.mark.parametrize("body,message", SEARCH_BODIES)
def test_search_body_as_yup_reads_it(body, message):
    with pytest.raises(wire.WireError) as info:
        wire.parse_search_body(body)
    assert info.value.message == message and info.value.kind == "validation"


def test_search_body_casts_and_route_errors():
    req = wire.parse_search_body({"modelId": "m", "layers": [5], "query": 12345, "offset": "20"})
    assert req == wire.SearchRequest("m", ("5",), "12345", 20)
    assert wire.parse_search_body({"modelId": "m", "layers": ["0-a"], "query": "   "}).query == "   "  # counted raw
    for body in ({"modelId": "m", "layers": [], "query": "abc"}, {"modelId": "m", "layers": ["0-a"], "query": "abc", "offset": -1}):
        with pytest.raises(wire.WireError) as info:  # pass yup, fail inside the route's try
            wire.parse_search_body(body)
        assert info.value.kind == "unknown"


def test_search_page_has_next_offset_only_when_full():
    full = wire.search_page({"q": 1}, [{}] * 20, 40)
    assert full["hasMore"] is True and full["nextOffset"] == 60 and full["resultsCount"] == 20
    short = wire.search_page({"q": 1}, [{}] * 19, 40)
    assert short["hasMore"] is False and "nextOffset" not in short


def test_error_bodies():
    # lib/api-error.ts toErrorResponse: both keys; the feature route's own 404: "error" only
    assert wire.not_found_body(access_denied=True) == {"error": wire.NOT_FOUND_MESSAGE, "message": wire.NOT_FOUND_MESSAGE}
    assert wire.not_found_body(access_denied=False) == {"error": wire.NOT_FOUND_MESSAGE}
    assert wire.NOT_FOUND_MESSAGE.startswith("The model, source, or feature you specified is not available.")
    assert wire.SERVER_ERROR_MESSAGE == "Something went wrong on our end. The error has been reported."


@pytest.mark.parametrize("source,set_name,layer", [
    ("5", "neurons", 5), ("0-res-jb", "res-jb", 0), ("e-res-sm", "res-sm", 0),
    ("12-gemmascope-res-16k", "gemmascope-res-16k", 12), ("5-gemmascope-res-16k__l0-143", "gemmascope-res-16k", 5),
    ("abc", "abc", None),
])
def test_source_ids_as_source_ts_reads_them(source, set_name, layer):  # lib/utils/source.ts
    assert wire.set_name_of(source) == set_name and wire.layer_number(source) == layer


def test_orderings():
    # POST /api/features: by the position of the first request item with the same index
    items = [wire.FeatureRequest("m", "1-a", "7", None), wire.FeatureRequest("m", "0-a", "3", None),
             wire.FeatureRequest("m", "0-a", "7", None)]
    rows = {("m", "0-a", "7"): {"index": "7", "layer": "0-a"}, ("m", "0-a", "3"): {"index": "3", "layer": "0-a"},
            ("m", "1-a", "7"): {"index": "7", "layer": "1-a"}}
    out = wire.order_features_post(items, lambda m, s, i: rows.get((m, s, i)))
    assert [(r["layer"], r["index"]) for r in out] == [("1-a", "7"), ("0-a", "7"), ("0-a", "3")]
    # GET explanations: scoreV2 desc with NULL first (Postgres), then scoreV1 desc
    expl = [("a", 0.5, 0), ("b", None, 0), ("c", 0.9, 0), ("d", 0.5, 2)]
    ordered = sorted(expl, key=lambda e: wire.explanation_order_key(e[1], e[2], e[0]))
    assert [e[0] for e in ordered] == ["b", "c", "d", "a"]
    acts = [{"id": "b", "maxValue": 2.0}, {"id": "a", "maxValue": 2.0}, {"id": "c", "maxValue": None}, {"id": "d", "maxValue": 5}]
    assert [a["id"] for a in wire.rank_activations(acts)] == ["d", "a", "b", "c"]


@pytest.mark.parametrize("path,bucket", [
    ("/api/feature/gpt2-small/0-res-jb/1", "/api"),
    ("/api/features", "/api"),
    ("/api/explanation/search", "/api/explanation/search"),
    ("/api/explanation/search-all", "/api/explanation/search"),  # loose prefix: one 200/h bucket for all four
    ("/api/explanation/search-model", "/api/explanation/search"),
    ("/api/explanation/search-release", "/api/explanation/search"),
    ("/api/search-all", "/api/search-all"),
    ("/api/explanation/score/xyz/delete", "/api/explanation/score"),  # exact: path component
    ("/api/nla/explain-saelens", "/api/nla/explain-saelens"),  # not /api/nla/explain (exact)
    ("/API/Explanation/Search", "/api/explanation/search"),  # the path is lower-cased first
])
def test_limit_bucket_is_the_last_one_charged(path, bucket):  # middleware.ts
    assert wire.limit_bucket(path) == bucket


def test_search_echo_is_yups_cast():
    """The search answer's `request`: the body itself when yup cast nothing; else yup's rebuilt
    object, declared keys in reverse order first (app/api/explanation/search/route.tsx)."""
    body = {"modelId": "m", "layers": ["0-a"], "query": "abc", "extra": 1}
    assert wire.search_echo(body, wire.parse_search_body(body)) is body
    cast = {"modelId": "m", "layers": [5], "query": 12345, "offset": "20", "extra": 1}
    echo = wire.search_echo(cast, wire.parse_search_body(cast))
    assert list(echo.items()) == [("offset", 20), ("query", "12345"), ("layers", ["5"]), ("modelId", "m"), ("extra", 1)]
