"""Fuzzing `np-mirror serve`: whatever the request, never a 5xx, and an `/api` answer is JSON.

Bounded hypothesis runs (a few hundred requests in all, in-process) over bodies of the POST
routes (JSON values near the schemas, arbitrary JSON, arbitrary bytes), path segments of the
GET routes (long digit strings, unicode, encoded slashes) and methods. The mirror is the
hand-built one of `test_serve_contract.py`.
"""

from __future__ import annotations

import json
import string
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from npclient import wire
from npclient.serve import create_app
from test_serve_contract import M, RES, build_mirror

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = create_app(build_mirror(tmp_path_factory.mktemp("fuzz") / "mirror.duckdb"), linger_s=0.2)
    with TestClient(app, base_url="http://127.0.0.1:3000") as c:
        yield c
    app.state.reader.close()


def _check(r, *, api: bool = True) -> None:
    """No 5xx; JSON for what reached `/api` (the client resolves `..` segments: `/api/x/../../y` is a page)."""
    assert r.status_code < 500, (r.request.method, r.request.url, r.status_code, r.text[:300])
    path = r.request.url.path
    if api and (path == "/api" or path.startswith("/api/")):
        assert r.headers["content-type"].startswith("application/json"), r.text[:200]

        def refuse(token: str) -> None:
            raise AssertionError(f"{token} in a JSON answer")

        json.loads(r.content, parse_constant=refuse)


# --------------------------------------------------------------------------- values

numbers = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, 1e308, 2**31, 2**63, 2**64, 0.5]),
)
texts = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", " ", "1e400", "Infinity", "-Infinity", "NaN", "0x10", " 1 2 ", "-0", "007", "9" * 400,
                     M, f"0-{RES}", f"1-{RES}", "cats", "(unclosed", "%_\\", "\ud800", "a\x00b"]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
feature_items = st.fixed_dictionaries({}, optional={
    "modelId": st.one_of(st.just(M), json_values), "layer": st.one_of(st.sampled_from([f"0-{RES}", f"3-{RES}"]), json_values),
    "index": st.one_of(st.integers(-3, 30), texts, json_values), "maxActsToReturn": st.one_of(st.integers(-5, 5), json_values),
})
search_bodies = st.fixed_dictionaries({}, optional={
    "modelId": st.one_of(st.sampled_from([M, "nomodel"]), json_values),
    "layers": st.one_of(st.lists(st.one_of(st.sampled_from([f"0-{RES}", f"3-{RES}", "0-nosuchset"]), texts), max_size=4),
                        json_values),
    "query": st.one_of(st.sampled_from(["cats", "dogs number", "ab", "^c.ts$", "(x", "   "]), texts, json_values),
    "offset": st.one_of(st.integers(-2, 40), texts, json_values), "regex": st.one_of(st.booleans(), json_values),
})


def _encode(value) -> bytes:
    return json.dumps(value, allow_nan=False).encode("utf-8", "surrogatepass")


# --------------------------------------------------------------------------- tests


@FUZZ
@given(body=st.one_of(st.lists(feature_items, max_size=4), json_values))
@example(body=[{"modelId": M, "layer": f"0-{RES}", "index": "1e400"}])
@example(body=[{"modelId": M, "layer": f"0-{RES}", "index": "Infinity", "maxActsToReturn": "-Infinity"}])
@example(body=[{"modelId": M, "layer": f"0-{RES}", "index": 0, "unknown": 10**30, "s": "\ud800"}])
def test_post_features_never_5xx(client, body):
    _check(client.post(wire.FEATURES_PATH, content=_encode(body)))


@FUZZ
@given(body=st.one_of(search_bodies, json_values))
@example(body={"modelId": M, "layers": [f"0-{RES}"], "query": "cats\ud800", "extra": 10**30, "offset": "1"})
@example(body={"modelId": "\ud800", "layers": ["\ud800"], "query": "\ud800\ud800\ud800"})
@example(body={"modelId": M, "layers": [f"0-{RES}"], "query": "[z-a]", "regex": True})
def test_search_never_5xx(client, body):
    _check(client.post(wire.SEARCH_PATH, content=_encode(body)))


@FUZZ
@given(body=st.one_of(st.fixed_dictionaries({}, optional={"modelId": st.one_of(st.just(M), json_values),
                                                          "source": st.one_of(st.just("0-steer-toy"), json_values),
                                                          "index": st.one_of(st.just("0"), json_values)}), json_values))
def test_vector_get_never_5xx(client, body):
    _check(client.post(wire.VECTOR_GET_PATH, content=_encode(body)))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from([wire.FEATURES_PATH, wire.SEARCH_PATH, wire.MODEL_LIST_PATH, wire.VECTOR_GET_PATH]),
       raw=st.binary(max_size=64))
def test_arbitrary_bytes_never_5xx(client, path, raw):
    _check(client.post(path, content=raw))


segments = st.one_of(
    st.text(alphabet=string.ascii_letters + string.digits + "-_.", min_size=1, max_size=30),
    st.text(min_size=1, max_size=12),
    st.sampled_from([M, f"0-{RES}", f"3-{RES}", RES, "bare-toy", "9" * 5000, "1e400", "-1", "007", "..", "%2F"]),
)


@FUZZ
@given(model=segments, source=segments, index=st.one_of(segments, st.integers(-5, 2**40).map(str)))
@example(model=M, source=f"0-{RES}", index="9" * 5000)
@example(model=M, source=f"3-{RES}", index="0")
@example(model="\udcff", source=f"0-{RES}", index="0")
@example(model="0", source="..", index="\n0")  # the client makes it /api/feature/%0A0
def test_get_routes_never_5xx(client, model, source, index):
    m, s, i = (quote(x, safe="", errors="surrogatepass") for x in (model, source, index))
    _check(client.get(f"/api/feature/{m}/{s}/{i}"))
    _check(client.get(f"/api/source-set/{m}/{s}"))
    _check(client.get(f"/api/np-mirror/decoder/{m}/{s}/{i}"))
    _check(client.get(f"/{m}/{s}/{i}"), api=False)  # the pages: HTML, but never a 5xx
    _check(client.get(f"/{m}/{s}", params={"q": index, "offset": index}), api=False)


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
       path=st.one_of(st.sampled_from([p.format(model_id=M, source_id=f"0-{RES}", index="0", set_name=RES)
                                       for p, _ in wire.READ_ROUTES]),
                      st.lists(segments, min_size=0, max_size=5).map(lambda xs: "/api/" + "/".join(quote(x, safe="") for x in xs))),
       body=st.binary(max_size=32))
def test_any_method_on_any_api_path_is_json(client, method, path, body):
    r = client.request(method, path, content=body)
    if method == "HEAD":
        assert r.status_code < 500
        return
    _check(r)
    if r.status_code == 405:
        assert r.headers["allow"]
