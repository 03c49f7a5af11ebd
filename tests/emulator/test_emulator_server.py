"""The emulator over real loopback (uvicorn thread + httpx): lifecycle, load, faults, rate limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from npclient.testing import EmulatorConfig, EmulatorServer, EmulatorState, FaultConfig, RateLimitConfig

M, S = "gpt2-small", "0-res-jb"


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    with EmulatorServer() as srv:
        yield srv


@pytest.fixture
def srv(server: EmulatorServer) -> Iterator[EmulatorServer]:
    server.state.faults = FaultConfig()
    server.state.reset()
    yield server
    server.state.faults = FaultConfig()
    server.state.latency_s = 0.0
    server.state.rate_limit = None


def test_start_stop_fast_and_repeatable() -> None:
    t0 = time.perf_counter()
    ports = set()
    for _ in range(5):
        with EmulatorServer(EmulatorConfig(seed=1)) as s:
            assert s.url.startswith("http://127.0.0.1:") and s.running
            ports.add(s.port)
            assert httpx.get(s.url + f"/api/feature/{M}/{S}/1").status_code == 200
        assert not s.running
    assert (time.perf_counter() - t0) / 5 < 1.0
    assert all(p > 0 for p in ports)
    with pytest.raises(ValueError):
        EmulatorServer(host="0.0.0.0")


def test_bytes_match_the_state(srv: EmulatorServer) -> None:
    with httpx.Client(base_url=srv.url) as c:
        for i in (0, 5, 900):
            r = c.get(f"/api/feature/{M}/{S}/{i}")
            assert r.status_code == 200 and r.content == srv.state.feature_bytes(M, S, i)
            assert int(r.headers["content-length"]) == len(r.content)


async def test_concurrent_load(srv: EmulatorServer) -> None:
    # httpcore's pool costs O(connections x queued requests) per event: keep both modest
    n, conc = 400, 16
    sem = asyncio.Semaphore(conc)
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(base_url=srv.url, limits=limits) as c:

        async def one(i: int) -> httpx.Response:
            async with sem:
                return await c.get(f"/api/feature/{M}/1-res-jb/{i}")

        t0 = time.perf_counter()
        rs = await asyncio.gather(*(one(i) for i in range(n)))
        dt = time.perf_counter() - t0
    assert all(r.status_code == 200 for r in rs)
    assert [r.json()["index"] for r in rs] == [str(i) for i in range(n)]
    assert all(r.content == srv.state.feature_bytes(M, "1-res-jb", i) for i, r in enumerate(rs))
    print(f"\n{n} uncached feature GETs, {conc} connections, client in-process: {n / dt:.0f} req/s")
    assert len(srv.state.requests) == n


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("reset", (httpx.ReadError, httpx.RemoteProtocolError)),
        ("truncated", (httpx.RemoteProtocolError,)),
    ],
)
def test_connection_faults_raise_transport_errors(srv: EmulatorServer, kind: str, expected: tuple) -> None:
    srv.state.faults = FaultConfig(rate=1.0, kinds=(kind,))
    with httpx.Client(base_url=srv.url) as c:
        for _ in range(3):
            with pytest.raises(expected):
                c.get(f"/api/feature/{M}/{S}/1")
        srv.state.faults = FaultConfig()
        assert c.get(f"/api/feature/{M}/{S}/1").status_code == 200  # the server is still fine
    deadline = time.monotonic() + 2
    while not all(r.done for r in srv.state.requests) and time.monotonic() < deadline:
        time.sleep(0.01)  # the handler finishes just after the client has its answer
    log = srv.state.requests
    assert [r.fault for r in log] == [kind] * 3 + [None]
    assert all(r.done for r in log) and [r.status for r in log] == [None if kind == "reset" else 200] * 3 + [200]


@pytest.mark.parametrize(
    ("kind", "status", "ctype"),
    [("json500", 500, "application/json"), ("html500", 500, "text/html"), ("html502", 502, "text/html"),
     ("malformed", 200, "application/json")],
)
def test_response_faults(srv: EmulatorServer, kind: str, status: int, ctype: str) -> None:
    srv.state.faults = FaultConfig(rate=1.0, kinds=(kind,))
    with httpx.Client(base_url=srv.url) as c:
        r = c.get(f"/api/feature/{M}/{S}/2")
        assert r.status_code == status and r.headers["content-type"].startswith(ctype)
        assert int(r.headers["content-length"]) == len(r.content)
        if kind == "json500":
            assert set(r.json()) == {"error", "message"}
        else:
            with pytest.raises(ValueError):
                r.json()
        if kind == "malformed":
            assert srv.state.feature_bytes(M, S, 2).startswith(r.content)  # type: ignore[union-attr]


def test_slow_fault(srv: EmulatorServer) -> None:
    srv.state.faults = FaultConfig(rate=1.0, kinds=("slow",), slow_s=0.4)
    with httpx.Client(base_url=srv.url) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.get(f"/api/feature/{M}/{S}/3", timeout=0.1)
        t0 = time.perf_counter()
        r = c.get(f"/api/feature/{M}/{S}/3")
        assert r.status_code == 200 and time.perf_counter() - t0 >= 0.39


def _pattern(srv: EmulatorServer) -> list[str | None]:
    with httpx.Client(base_url=srv.url, timeout=5) as c:
        for rep in range(3):
            for i in range(12):
                try:
                    c.get(f"/api/feature/{M}/{S}/{i}")
                except httpx.TransportError:
                    pass
            try:
                c.post("/api/features", json=[{"modelId": M, "layer": S, "index": rep}])
            except httpx.TransportError:
                pass
    return [r.fault for r in srv.state.requests]


def test_faults_are_deterministic_across_reset_and_servers(srv: EmulatorServer) -> None:
    faults = FaultConfig(rate=0.5, seed=11, kinds=("json500", "html502", "reset", "truncated", "malformed"))
    srv.state.faults = faults
    first = _pattern(srv)
    assert 8 < sum(f is not None for f in first) < 32
    assert len({f for f in first if f}) >= 4
    srv.state.reset()
    assert _pattern(srv) == first
    with EmulatorServer(EmulatorConfig(faults=faults)) as other:
        assert _pattern(other) == first
    srv.state.reset()
    srv.state.faults = FaultConfig(rate=0.5, seed=12, kinds=faults.kinds)
    assert _pattern(srv) != first


def test_rate_limit_window_slides(srv: EmulatorServer) -> None:
    srv.state.rate_limit = RateLimitConfig(api_limit=4, window_s=0.5, algorithm="log")
    with httpx.Client(base_url=srv.url) as c:
        rs = [c.get(f"/api/feature/{M}/{S}/{i}") for i in range(5)]
        assert [r.status_code for r in rs] == [200, 200, 200, 200, 429]
        assert [r.headers.get("x-limit-remaining") for r in rs] == ["3", "2", "1", "0", None]
        body = rs[-1].json()
        assert body["requestWindow"] == "0.5 s" and "retry-after" not in rs[-1].headers
        time.sleep(0.55)
        assert c.get(f"/api/feature/{M}/{S}/1").status_code == 200

    srv.state.rate_limit = RateLimitConfig(api_limit=4, window_s=0.3)  # upstash approximation
    with httpx.Client(base_url=srv.url) as c:
        codes = [c.get(f"/api/feature/{M}/{S}/1").status_code for _ in range(6)]
        assert codes.count(200) <= 4 + 4 and 429 in codes  # at most one window boundary crossed
        time.sleep(0.7)  # two full windows: all forgotten
        assert c.get(f"/api/feature/{M}/{S}/1").headers["x-limit-remaining"] == "3"
    limited = [r for r in srv.state.requests if r.limited]
    assert limited and all(r.status == 429 and r.fault is None for r in limited)


def test_log_over_http_and_latency(srv: EmulatorServer) -> None:
    srv.state.latency_s = 0.05
    with httpx.Client(base_url=srv.url) as c:
        t0 = time.perf_counter()
        c.get(f"/api/feature/{M}/{S}/4")
        assert time.perf_counter() - t0 >= 0.05
        c.post("/api/model/list")
        log = c.get("/_emulator/log").json()
        assert [(x["method"], x["path"], x["status"], x["client"]) for x in log] == [
            ("GET", f"/api/feature/{M}/{S}/4", 200, "127.0.0.1"), ("POST", "/api/model/list", 200, "127.0.0.1")]
        c.post("/_emulator/reset")
        assert orjson.loads(c.get("/_emulator/log").content) == []


def test_shared_state_across_servers() -> None:
    st = EmulatorState()
    with EmulatorServer(st) as a:
        httpx.get(a.url + f"/api/feature/{M}/{S}/1")
    with EmulatorServer(st) as b:
        httpx.get(b.url + f"/api/feature/{M}/{S}/2")
    assert [r.path for r in st.requests] == [f"/api/feature/{M}/{S}/1", f"/api/feature/{M}/{S}/2"]
