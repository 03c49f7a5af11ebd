"""Routes in-process through httpx.ASGITransport: status codes, bodies, rate limiting, control."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from npclient.testing import EmulatorConfig, EmulatorState, FaultConfig, RateLimitConfig, create_app

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
    st, c = st_client
    r = await c.get(f"/api/feature/{M}/{S}/12")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.content == st.feature_bytes(M, S, 12)
    assert r.json()["index"] == "12"
    hole = next(i for i in range(1024) if st.is_hole(M, S, i))
    r = await c.get(f"/api/feature/{M}/{S}/{hole}")
    assert r.status_code == 404 and set(r.json()) == {"error"}
    for path in (f"/api/feature/{M}/{S}/1024", f"/api/feature/{M}/{S}/007"):
        assert (await c.get(path)).status_code == 404
    r = await c.get(f"/api/feature/{M}/99-res-jb/1")
    assert r.status_code == 404 and set(r.json()) == {"error", "message"}
    r = await c.get(f"/api/feature/nope/{S}/1")
    assert r.status_code == 404 and set(r.json()) == {"error", "message"}
    for bad in ("abc", "-1", "1.5"):
        assert (await c.get(f"/api/feature/{M}/{S}/{bad}")).status_code == 400
    r = await c.get("/api/no-such-route")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")


async def test_post_features(st_client: tuple[EmulatorState, httpx.AsyncClient]) -> None:
    st, c = st_client
    hole = next(i for i in range(1024) if st.is_hole(M, S, i))
    body = [
        {"modelId": M, "layer": S, "index": 40, "maxActsToReturn": 2},
        {"modelId": M, "layer": S, "index": hole},
        {"modelId": M, "layer": S, "index": "7"},  # yup casts numeric strings
        {"modelId": "nope", "layer": S, "index": 1},
    ]
    r = await c.post("/api/features", json=body)
    assert r.status_code == 200
    out = r.json()
    assert [x["index"] for x in out] == ["40", "7"]
    assert all(len(x["activations"]) == 2 for x in out)  # maxActsToReturn of the first item applies to all
    assert out[1]["activations"] == st.feature(M, S, 7)["activations"][:2]
    assert all(set(e) == {"description", "explanationModelName", "typeName"} for x in out for e in x["explanations"])
    assert "model" not in out[0] and "source" not in out[0]
    assert out == st.features_post([(M, S, 40), (M, S, hole), (M, S, 7), ("nope", S, 1)], max_acts=2)

    assert (await c.post("/api/features", json=[])).json() == []
    r = await c.post("/api/features", content=b"null")
    assert r.status_code == 400 and r.json() == {"message": "Invalid JSON body"}
    for bad in ({"modelId": M}, [{"modelId": M, "layer": S}], [{"modelId": M, "layer": S, "index": 1.5}]):
        r = await c.post("/api/features", json=bad)
        assert r.status_code == 400 and "message" in r.json()
    r = await c.post("/api/features", content=b"{not json")
    assert r.status_code == 500 and r.headers["content-type"].startswith("text/plain")


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
    st, c = st_client
    r = await c.post("/api/model/list")
    assert r.status_code == 200 and r.json() == st.models_list()
    assert {m["id"] for m in r.json()} == {"gpt2-small", "gemma-2-2b"}
    r = await c.get(f"/api/source-set/{M}/res-jb")
    assert [s["id"] for s in r.json()["sources"]] == ["0-res-jb", "1-res-jb"]
    r = await c.get(f"/api/source-set/{M}/nope")
    assert r.status_code == 200 and r.content == b"null"


async def test_search_route(st_client: tuple[EmulatorState, httpx.AsyncClient]) -> None:
    st, c = st_client
    req = {"modelId": M, "layers": [S], "query": "references to text", "offset": 0}
    r = await c.post("/api/explanation/search", json=req)
    body = r.json()
    assert r.status_code == 200 and set(body) == {"request", "results", "resultsCount", "hasMore", "nextOffset"}
    assert len(body["results"]) == 20 and body["hasMore"] and body["nextOffset"] == 20
    assert {"modelId", "layer", "index", "description", "cosine_similarity"} <= set(body["results"][0])
    r2 = await c.post("/api/explanation/search", json={**req, "offset": 20})
    assert {x["id"] for x in r2.json()["results"]}.isdisjoint({x["id"] for x in body["results"]})
    bad_bodies = ({"modelId": M, "layers": [S]}, {"modelId": M, "query": "x"},
                  {"modelId": "nope", "layers": [S], "query": "x"})
    for bad in bad_bodies:
        r = await c.post("/api/explanation/search", json=bad)
        assert r.status_code == 500 and set(r.json()) == {"message"}


async def test_vector_and_export(st_client: tuple[EmulatorState, httpx.AsyncClient]) -> None:
    st, c = st_client
    vs = "6-res-vectors"
    idx = st.vector_indices(M, vs)[0]
    r = await c.post("/api/vector/get", json={"modelId": M, "source": vs, "index": str(idx)})
    assert r.status_code == 200 and r.json() == {"vector": st.vector(M, vs, idx)}
    r = await c.post("/api/vector/get", json={"modelId": M, "source": S, "index": "3"})
    assert r.json() == {"vector": None}
    r = await c.post("/api/vector/get", json={"modelId": M, "source": vs})
    assert r.status_code == 500
    r = await c.get("/api/explanation/export", params={"modelId": M, "saeId": S})
    assert r.status_code == 400 and "neuronpedia-datasets" in r.json()["error"]


async def test_rate_limit_429_and_remaining() -> None:
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
    cfg = EmulatorConfig(rate_limit=RateLimitConfig(api_limit=1, window_s=10.0))
    async with client_for(cfg) as c:
        assert (await c.get(f"/api/feature/{M}/{S}/1")).status_code == 200
        r = await c.get(f"/api/feature/{M}/{S}/1")
        assert r.status_code == 429 and r.json()["requestWindow"] == "10 s"
        r = await c.get(f"/api/feature/{M}/{S}/1", headers={"x-forwarded-for": "10.0.0.2"})
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
