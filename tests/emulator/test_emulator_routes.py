"""Routes in-process through httpx.ASGITransport: status codes, bodies, rate limiting, control."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from npclient import wire
from npclient.testing import EmulatorConfig, EmulatorState, FaultConfig, RateLimitConfig, SourceSpec, create_app

M, S = "gpt2-small", "0-res-jb"


def client_for(app_or_cfg: object = None) -> httpx.AsyncClient:
    app = create_app(app_or_cfg)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emulator")


@pytest.fixture
async def st_client() -> AsyncIterator[tuple[EmulatorState, httpx.AsyncClient]]:
    st = EmulatorState(EmulatorConfig(hole_rate=0.05))
    async with client_for(st) as c:
        yield st, c


async def test_get_feature(st_client: tuple[EmulatorState, httpx.AsyncClient]) -> None:
    """app/api/feature/[modelId]/[layer]/[index]/route.ts, lib/db/userCanAccess.ts."""
    st, c = st_client
    r = await c.get(f"/api/feature/{M}/{S}/12")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.content == st.feature_bytes(M, S, 12)
    assert r.json()["index"] == "12"
    hole = next(i for i in range(1024) if st.is_hole(M, S, i))
    missing = {"error": wire.NOT_FOUND_MESSAGE}
    both = {"error": wire.NOT_FOUND_MESSAGE, "message": wire.NOT_FOUND_MESSAGE}
    r = await c.get(f"/api/feature/{M}/{S}/{hole}")
    assert r.status_code == 404 and r.json() == missing
    # `index` is a text column matched exactly: malformed indices are simply not found (404)
    for bad in ("1024", "007", "abc", "-1", "1.5", "1e400", "9" * 5000):
        r = await c.get(f"/api/feature/{M}/{S}/{bad}")
        assert r.status_code == 404 and r.json() == missing, bad
    # the access check looks at the model and the source *set*, not the source row
    r = await c.get(f"/api/feature/{M}/99-res-jb/1")
    assert r.status_code == 404 and r.json() == missing
    for path in (f"/api/feature/nope/{S}/1", f"/api/feature/{M}/0-nope/1", f"/api/feature/{M}/5/1"):
        r = await c.get(path)
        assert r.status_code == 404 and r.json() == both, path
    r = await c.get("/api/no-such-route")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")


async def test_get_feature_payload_follows_neuron_ts(st_client: tuple[EmulatorState, httpx.AsyncClient]) -> None:
    """lib/db/neuron.ts `getNeuronOptimized`: activations by maxValue desc, explanations by
    scoreV2 desc (NULL first) then scoreV1 desc, correlated_features_* blanked."""
    st, c = st_client
    unscored_seen = 0
    for i in range(200):
        body = (await c.get(f"/api/feature/{M}/{S}/{i}")).json() if st.exists(M, S, i) else None
        if body is None:
            continue
        values = [a["maxValue"] for a in body["activations"]]
        assert values == sorted(values, reverse=True)
        assert all({"zQIndices", "zKIndices", "zValues"} <= set(a) for a in body["activations"])
        assert body["correlated_features_indices"] == []
        expl = body["explanations"]
        assert all(set(e) == {"id", "description", "explanationModelName", "typeName", "scores", "triggeredByUser"} for e in expl)
        rows = {e["id"]: e for e in st.explanations(M, S, i)}
        keys = [wire.explanation_order_key(rows[e["id"]]["scoreV2"], rows[e["id"]]["scoreV1"], e["id"]) for e in expl]
        assert keys == sorted(keys)
        unscored_seen += sum(rows[e["id"]]["scoreV2"] is None for e in expl)
        if expl and rows[expl[0]["id"]]["scoreV2"] is None:
            assert expl[0]["scores"] == []
    assert unscored_seen > 0  # the NULL-first rule was exercised


async def test_post_features(st_client: tuple[EmulatorState, httpx.AsyncClient]) -> None:
    """app/api/features/route.ts, lib/db/neuron.ts `getNeurons`."""
    st, c = st_client
    hole = next(i for i in range(1024) if st.is_hole(M, S, i))
    body = [
        {"modelId": M, "layer": S, "index": 40, "maxActsToReturn": 2},
        {"modelId": M, "layer": S, "index": hole},
        {"modelId": M, "layer": S, "index": "7"},  # yup casts numeric strings
        {"modelId": "nope", "layer": S, "index": 1},  # no access check: simply not found
        {"modelId": M, "layer": S, "index": "0x11", "maxActsToReturn": 9},  # looks up "17"; only the first item's maxActs counts
    ]
    r = await c.post("/api/features", json=body)
    assert r.status_code == 200
    out = r.json()
    assert [x["index"] for x in out] == ["40", "7", "17"]
    assert all(len(x["activations"]) == 2 for x in out)
    assert out[1]["activations"] == st.feature(M, S, 7)["activations"][:2]  # the top 2 by maxValue
    assert all(set(e) == {"description", "explanationModelName", "typeName"} for x in out for e in x["explanations"])
    assert "model" not in out[0] and "source" not in out[0]
    assert out == st.features_post([(M, S, 40), (M, S, hole), (M, S, 7), ("nope", S, 1), (M, S, 17)], max_acts=2)
    # without maxActsToReturn the activations come in storage order, not ranked
    got = (await c.post("/api/features", json=[{"modelId": M, "layer": S, "index": 40}])).json()[0]["activations"]
    assert [a["id"] for a in got] == sorted(a["id"] for a in got)
    assert [a["maxValue"] for a in got] != sorted((a["maxValue"] for a in got), reverse=True)

    r = await c.post("/api/features", json=[])
    assert r.status_code == 500 and r.json() == {"message": "Unknown Error"}
    r = await c.post("/api/features", content=b"null")
    assert r.status_code == 400 and r.json() == {"message": "Invalid JSON body"}
    for bad, message in (
        ({"modelId": M}, 'this must be a `array` type, but the final value was: `{\n  "modelId": "gpt2-small"\n}`.'),
        ([{"modelId": M, "layer": S}], "[0].index is a required field"),
        ([{"modelId": M, "layer": S, "index": 1.5}], "[0].index must be an integer"),
        ([{"modelId": M, "layer": S, "index": "1e400"}], "[0].index must be an integer"),
    ):
        r = await c.post("/api/features", json=bad)
        assert r.status_code == 400 and r.json() == {"message": message}
    r = await c.post("/api/features", content=b"{not json")  # parsed before the route's try
    assert r.status_code == 500 and r.json() == wire.error_envelope(wire.SERVER_ERROR_MESSAGE)


async def test_features_offset(st_client: tuple[EmulatorState, httpx.AsyncClient]) -> None:
    st, c = st_client
    seen: list[int] = []
    offset = 0
    while True:
        r = await c.post("/api/features-offset", json={"modelId": M, "layer": S, "offset": offset})
        assert r.status_code == 200
        page = r.json()
        if not page:
            break
        assert len(page) <= 25
        seen.extend(int(x["index"]) for x in page)
        offset += 25
    assert sorted(seen) == st.offset_indices(M, S)
    r = await c.post("/api/features-offset", json={"modelId": M, "layer": "99-x"})
    assert r.status_code == 404


async def test_models_and_source_sets(st_client: tuple[EmulatorState, httpx.AsyncClient]) -> None:
    """lib/db/model.ts `getGlobalModels`, lib/db/source.ts `getSourceSet`."""
    st, c = st_client
    r = await c.post("/api/model/list")
    assert r.status_code == 200 and r.json() == st.models_list()
    assert {m["id"] for m in r.json()} == {"gpt2-small", "gemma-2-2b"}
    gpt2 = next(m for m in r.json() if m["id"] == M)
    # sets and sources without dashboards are left out (the steering-vector set here)
    assert [s["name"] for s in gpt2["sourceSets"]] == ["res-jb"]
    for src in gpt2["sourceSets"][0]["sources"]:
        assert tuple(src) == wire.MODEL_LIST_SOURCE_FIELDS  # no saelensConfig, saelensRelease, ...
    r = await c.get(f"/api/source-set/{M}/res-jb")
    sset = r.json()
    assert [s["id"] for s in sset["sources"]] == ["0-res-jb", "1-res-jb"]
    assert isinstance(sset["sources"][0]["saelensConfig"], dict)  # GET source-set has every column
    assert isinstance(sset["releases"], dict) and sset["releases"]["name"] == sset["releaseName"]  # one object
    assert sset["model"]["id"] == M and {"description", "urls"} <= set(sset)
    vec = (await c.get(f"/api/source-set/{M}/res-vectors")).json()
    assert vec["releases"] is None and vec["hasDashboards"] is False
    r = await c.get(f"/api/source-set/{M}/nope")
    assert r.status_code == 200 and r.content == b"null"


async def test_saelens_config_may_be_null_or_a_string() -> None:
    """prisma/schema.prisma `saelensConfig Json?`; app/api/admin/upload-eval/route.ts stores a string."""
    cfg = EmulatorConfig(sources=(
        SourceSpec(M, "0-res-jb", d_sae=64), SourceSpec(M, "1-res-jb", d_sae=64, saelens_config="null"),
        SourceSpec(M, "2-res-jb", d_sae=64, saelens_config="string"),
    ))
    async with client_for(cfg) as c:
        srcs = {s["id"]: s["saelensConfig"] for s in (await c.get(f"/api/source-set/{M}/res-jb")).json()["sources"]}
    assert isinstance(srcs["0-res-jb"], dict) and srcs["1-res-jb"] is None
    assert isinstance(srcs["2-res-jb"], str) and orjson.loads(srcs["2-res-jb"])["d_sae"] == 64


async def test_search_route(st_client: tuple[EmulatorState, httpx.AsyncClient]) -> None:
    """app/api/explanation/search/route.tsx."""
    st, c = st_client
    req = {"modelId": M, "layers": [S], "query": "references to text", "offset": 0}
    r = await c.post("/api/explanation/search", json=req)
    body = r.json()
    assert r.status_code == 200 and set(body) == {"request", "results", "resultsCount", "hasMore", "nextOffset"}
    assert body["request"] == req
    assert len(body["results"]) == 20 and body["hasMore"] and body["nextOffset"] == 20
    first = body["results"][0]
    assert set(first) == {"modelId", "layer", "index", "description", "explanationModelName", "typeName",
                          "cosine_similarity", "neuron"}  # no id, no authorId
    assert first["neuron"]["index"] == first["index"] and len(first["neuron"]["activations"]) <= 3
    r2 = await c.post("/api/explanation/search", json={**req, "offset": 20})
    pairs = {(x["index"], x["description"]) for x in body["results"]}
    assert {(x["index"], x["description"]) for x in r2.json()["results"]}.isdisjoint(pairs)
    # a short last page: no nextOffset at all
    tail = (await c.post("/api/explanation/search", json={**req, "query": "Monday"})).json()
    assert 0 < len(tail["results"]) < 20 and tail["hasMore"] is False and "nextOffset" not in tail
    for bad, message in (
        ({"modelId": M, "layers": [S]}, "query is a required field"),
        ({"modelId": M, "layers": [S], "query": "ab"}, "query must be at least 3 characters"),
        ({"modelId": M, "query": "abc"}, "layers is a required field"),
    ):
        r = await c.post("/api/explanation/search", json=bad)
        assert r.status_code == 400 and r.json() == {"message": message}
    for bad in ({"modelId": "nope", "layers": [S], "query": "abc"}, {"modelId": M, "layers": ["0-nope"], "query": "abc"},
                {"modelId": M, "layers": [], "query": "abc"}, {"modelId": M, "layers": [S], "query": "abc", "offset": -1}):
        r = await c.post("/api/explanation/search", json=bad)
        assert r.status_code == 500 and r.json() == {"message": "Unknown Error"}
    r = await c.post("/api/explanation/search", content=b"{oops")
    assert r.status_code == 500 and r.json() == wire.error_envelope(wire.SERVER_ERROR_MESSAGE)


async def test_vector_and_export(st_client: tuple[EmulatorState, httpx.AsyncClient]) -> None:
    """app/api/vector/get/route.tsx, app/api/explanation/export/route.ts."""
    st, c = st_client
    vs = "6-res-vectors"
    idx = st.vector_indices(M, vs)[0]
    r = await c.post("/api/vector/get", json={"modelId": M, "source": vs, "index": str(idx)})
    assert r.status_code == 200 and r.json() == {"vector": st.vector(M, vs, idx)}
    r = await c.post("/api/vector/get", json={"modelId": M, "source": vs, "index": idx})  # yup casts to "..."
    assert r.status_code == 200
    # no stored vector: the inference-server fallback throws -> the 500 envelope
    r = await c.post("/api/vector/get", json={"modelId": M, "source": S, "index": "3"})
    assert r.status_code == 500 and r.json() == wire.error_envelope(wire.SERVER_ERROR_MESSAGE)
    r = await c.post("/api/vector/get", json={"modelId": M, "source": vs})
    assert r.status_code == 400 and r.json() == wire.error_envelope("index is a required field")
    r = await c.get("/api/explanation/export", params={"modelId": M, "saeId": S})
    assert r.status_code == 400 and set(r.json()) == {"newUrl", "message"} and "neuronpedia-datasets" in r.json()["newUrl"]


async def test_rate_limit_429_and_remaining() -> None:
    """middleware.ts: every matching bucket charged in order, the refusing one named in the 429
    body (`remainingRequests` always 0, no Retry-After, no x-limit-remaining), and
    `x-limit-remaining` = the last bucket charged (a search reports the search bucket)."""
    cfg = EmulatorConfig(rate_limit=RateLimitConfig(api_limit=5, endpoint_limits={"/api/explanation/search": 2}))
    async with client_for(cfg) as c:
        remaining = []
        for i in range(5):
            r = await c.get(f"/api/feature/{M}/{S}/{i}")
            assert r.status_code == 200
            remaining.append(int(r.headers["x-limit-remaining"]))
        assert remaining == [4, 3, 2, 1, 0]
        r = await c.get(f"/api/feature/{M}/{S}/9")
        assert r.status_code == 429
        assert "retry-after" not in r.headers and "x-limit-remaining" not in r.headers
        body = r.json()
        assert body["endpoint"] == "/api" and body["limitPerWindow"] == 5
        assert body["requestWindow"] == "60 m" and body["remainingRequests"] == 0 and "error" in body
        # control routes are never limited
        assert (await c.get("/_emulator/log")).status_code == 200

    async with client_for(cfg) as c:
        req = {"modelId": M, "layers": [S], "query": "Monday"}
        codes = [(await c.post("/api/explanation/search", json=req)) for _ in range(3)]
        assert [r.status_code for r in codes] == [200, 200, 429]
        assert [r.headers.get("x-limit-remaining") for r in codes[:2]] == ["1", "0"]  # the endpoint bucket speaks
        assert codes[2].json()["endpoint"] == "/api/explanation/search"
        assert codes[2].json()["limitPerWindow"] == 2
        # 3 charged to /api (the refused search too): 2 left
        r = await c.get(f"/api/feature/{M}/{S}/1")
        assert r.status_code == 200 and r.headers["x-limit-remaining"] == "1"


async def test_default_search_bucket_is_200_per_hour() -> None:
    """middleware.ts NORMAL_RATE_LIMITS: `/api/explanation/search` 200 per 60 m, `/api` 25,000."""
    async with client_for(EmulatorConfig(rate_limit=RateLimitConfig())) as c:
        req = {"modelId": M, "layers": [S], "query": "Monday"}
        for _ in range(200):
            assert (await c.post("/api/explanation/search", json=req)).status_code == 200
        r = await c.post("/api/explanation/search", json=req)
        assert r.status_code == 429
        assert r.json()["limitPerWindow"] == 200 and r.json()["requestWindow"] == "60 m"
        r = await c.get(f"/api/feature/{M}/{S}/1")
        assert r.status_code == 200 and r.headers["x-limit-remaining"] == str(25000 - 202)


async def test_rate_limit_per_ip_and_window_label() -> None:
    """middleware.ts keys buckets by `ipAddress(request)` (x-real-ip), not by API key."""
    cfg = EmulatorConfig(rate_limit=RateLimitConfig(api_limit=1, window_s=10.0))
    async with client_for(cfg) as c:
        assert (await c.get(f"/api/feature/{M}/{S}/1")).status_code == 200
        r = await c.get(f"/api/feature/{M}/{S}/1")
        assert r.status_code == 429 and r.json()["requestWindow"] == "10 s"
        r = await c.get(f"/api/feature/{M}/{S}/1", headers={"x-real-ip": "10.0.0.2"})
        assert r.status_code == 200


async def test_control_routes_and_log(st_client: tuple[EmulatorState, httpx.AsyncClient]) -> None:
    st, c = st_client
    await c.get(f"/api/feature/{M}/{S}/1")
    await c.post("/api/features", json=[{"modelId": M, "layer": S, "index": 2}])
    log = (await c.get("/_emulator/log")).json()
    assert [(x["method"], x["path"], x["status"]) for x in log] == [
        ("GET", f"/api/feature/{M}/{S}/1", 200), ("POST", "/api/features", 200)]
    assert log[1]["json"] == [{"modelId": M, "layer": S, "index": 2}]
    assert st.requests[0].t <= st.requests[1].t and st.requests[0].client == "127.0.0.1"

    r = await c.post("/_emulator/faults", json={"rate": 1.0, "kinds": ["json500"], "seed": 3})
    assert r.json()["rate"] == 1.0 and st.faults == FaultConfig(rate=1.0, kinds=("json500",), seed=3)
    r = await c.get(f"/api/feature/{M}/{S}/1")
    assert r.status_code == 500 and set(r.json()) == {"error", "message"}
    assert (await c.post("/_emulator/faults", json={"rate": 7})).status_code == 400
    await c.post("/_emulator/faults", json={"rate": 0.0})

    r = await c.post("/_emulator/config", json={"latency_s": 0.01, "rate_limit": {"api_limit": 3}})
    assert r.json()["latency_s"] == 0.01 and r.json()["rate_limit"]["api_limit"] == 3
    assert (await c.get(f"/api/feature/{M}/{S}/1")).headers["x-limit-remaining"] == "2"
    await c.post("/_emulator/config", json={"latency_s": 0, "rate_limit": None})

    assert (await c.post("/_emulator/reset")).json() == {"ok": True}
    assert st.requests == [] and (await c.get("/_emulator/log")).json() == []


async def test_in_process_faults() -> None:
    """Without a socket, reset raises in the client and truncated/malformed yield bad JSON."""
    st = EmulatorState(EmulatorConfig(faults=FaultConfig(rate=1.0, kinds=("reset",))))
    async with client_for(st) as c:
        with pytest.raises(ConnectionResetError):
            await c.get(f"/api/feature/{M}/{S}/1")
        for kind in ("truncated", "malformed"):
            st.faults = FaultConfig(rate=1.0, kinds=(kind,))
            r = await c.get(f"/api/feature/{M}/{S}/1")
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(r.content)
        st.faults = FaultConfig(rate=1.0, kinds=("html500",))
        r = await c.get(f"/api/feature/{M}/{S}/1")
        assert r.status_code == 500 and r.text.startswith("<!DOCTYPE html>")
    assert [x.fault for x in st.requests] == ["reset", "truncated", "malformed", "html500"]


def test_all_explanation_search_routes_share_one_bucket() -> None:
    """middleware.ts matches `/api/explanation/search` by prefix (no `exact`): search-all,
    search-model and search-release are charged to the same 200 an hour."""
    from npclient.testing.emulator.ratelimit import RateLimiter

    limiter = RateLimiter(RateLimitConfig(endpoint_limits={"/api/explanation/search": 3}), clock=lambda: 100.0)
    paths = ["/api/explanation/search", "/api/explanation/search-all", "/api/explanation/search-model",
             "/api/explanation/search-release"]
    decisions = [limiter.hit("1.2.3.4", p) for p in paths]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    assert decisions[3].endpoint == "/api/explanation/search"
    assert limiter.hit("1.2.3.4", "/api/search-all").allowed  # a different endpoint, its own bucket
