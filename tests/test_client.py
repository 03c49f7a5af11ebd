"""The client against the emulator over real loopback sockets (no mocked HTTP)."""

import asyncio
import time

import httpx
import pytest

from npclient import (
    Budget,
    Feature,
    FeatureId,
    InvalidIdError,
    NeuronpediaClient,
    NotFound,
    NPError,
    RateLimited,
    RetryPolicy,
)
from npclient.testing import EmulatorConfig, FaultConfig, RateLimitConfig, create_app

FAST_RETRY = RetryPolicy(max_attempts=8, initial_wait_s=0.01, max_wait_s=0.05)
SOURCE = ("gpt2-small", "0-res-jb")


def ids(n, start=0):
    return [FeatureId(*SOURCE, i) for i in range(start, start + n)]


def client_for(server, **kw):
    kw.setdefault("budget", None)
    kw.setdefault("retry", FAST_RETRY)
    return NeuronpediaClient(server.url, **kw)


@pytest.mark.parametrize("method", ["get", "post"])
async def test_faulty_server_gives_truth_or_typed_error(np_emulator_factory, method):
    server = np_emulator_factory(
        hole_rate=0.05,
        faults=FaultConfig(rate=0.3, seed=7, slow_s=1.0),
    )
    state = server.state
    wanted = ids(150)
    async with client_for(server, timeout=httpx.Timeout(0.4, connect=2.0), concurrency=16) as client:
        results = await client.get_features(wanted, method=method, max_acts=None)
    assert len(results) == len(wanted)
    ok = errors = 0
    for fid, result in zip(wanted, results):
        hole = state.is_hole(fid.model_id, fid.source, fid.index)
        if isinstance(result, Feature):
            assert not hole
            truth = (
                state.feature(fid.model_id, fid.source, fid.index)
                if method == "get" or result.raw.get("model") is not None
                else state.features_post_item(fid.model_id, fid.source, fid.index)
            )
            assert result.raw == truth
            assert result.id == fid
            ok += 1
        else:
            assert isinstance(result, NPError)
            if hole:
                assert isinstance(result, NotFound)
            errors += 1
    holes = sum(state.is_hole(f.model_id, f.source, f.index) for f in wanted)
    assert holes > 0
    assert ok >= len(wanted) - holes - 3  # retries recover nearly every transient fault
    faults = {r.fault for r in state.requests if r.fault}
    assert len(faults) >= 4, faults  # the run really went through several fault kinds


async def test_404_is_never_retried(np_emulator_factory):
    server = np_emulator_factory(hole_rate=0.2)
    state = server.state
    holes = [f for f in ids(60) if state.is_hole(f.model_id, f.source, f.index)]
    assert holes
    async with client_for(server) as client:
        for fid in holes:
            with pytest.raises(NotFound):
                await client.get_feature(fid)
    for fid in holes:
        path = f"/api/feature/{fid.model_id}/{fid.source}/{fid.index}"
        assert len(state.log.matching(path)) == 1


async def test_unknown_source_is_not_found(np_emulator):
    async with client_for(np_emulator) as client:
        with pytest.raises(NotFound):
            await client.get_feature("gpt2-small/99-nope/1")


async def test_malformed_ids_fail_before_any_request(np_emulator):
    async with client_for(np_emulator) as client:
        with pytest.raises(InvalidIdError):
            await client.get_features(["gpt2-small/0-res-jb/1", "gpt2-small/../2"])
    assert len(np_emulator.state.log) == 0


async def test_after_a_429_no_request_leaves_until_the_cooldown_ends(np_emulator_factory):
    server = np_emulator_factory(
        rate_limit=RateLimitConfig(api_limit=10, window_s=3.0, algorithm="log"),
    )
    cooldown = 1.0
    # Our budget is far above the server's: we hit its limit on purpose (11 requests in 3 s).
    retry = RetryPolicy(max_attempts=8, initial_wait_s=0.01, max_wait_s=0.05, max_rate_limited=10)
    async with client_for(server, budget=Budget(limit=1000, window_s=1.0, burst=1000), cooldown_s=cooldown,
                          concurrency=4, retry=retry) as client:
        results = await client.get_features(ids(20), method="get")
    assert all(isinstance(r, Feature) for r in results)
    log = server.state.requests
    limited = [r for r in log if r.status == 429]
    assert limited, "the test must provoke at least one 429"
    first_429 = min(r.t for r in limited)
    later = [r for r in log if r.t > first_429]
    # Requests already in flight at the 429 may land within a few ms; after that, silence.
    in_flight_grace = 0.05
    gap = [r for r in later if first_429 + in_flight_grace < r.t < first_429 + cooldown - 0.05]
    assert gap == [], [round(r.t - first_429, 3) for r in gap]
    body = limited[0]
    assert body.limited


async def test_429_body_and_no_retry_after_become_rate_limited(np_emulator_factory):
    server = np_emulator_factory(rate_limit=RateLimitConfig(api_limit=1, window_s=60.0, algorithm="log"))
    async with client_for(server, retry=RetryPolicy(max_rate_limited=0)) as client:
        await client.get_feature(ids(1)[0])
        with pytest.raises(RateLimited) as err:
            await client.get_feature(ids(2)[1])
    assert err.value.retry_after is None
    assert "limitPerWindow" in err.value.body


async def test_paced_client_never_sees_a_429(np_emulator_factory):
    server = np_emulator_factory(rate_limit=RateLimitConfig(api_limit=20, window_s=1.0, algorithm="log"))
    async with client_for(server, budget=Budget(limit=20, window_s=1.0, burst=5), concurrency=8) as client:
        start = time.monotonic()
        results = await client.get_features(ids(60), method="get")
        elapsed = time.monotonic() - start
    assert all(isinstance(r, Feature) for r in results)
    assert not [r for r in server.state.requests if r.status == 429]
    assert elapsed >= 1.9  # 60 requests at 20/s cannot finish in under ~2 s


async def test_x_limit_remaining_tightens_the_pacer(np_emulator_factory):
    server = np_emulator_factory(rate_limit=RateLimitConfig(api_limit=100, window_s=60.0, algorithm="log"))
    async with client_for(server, budget=Budget(limit=1000, window_s=60.0, burst=100)) as client:
        await client.get_feature(ids(1)[0])
        assert client.pacer.remaining <= 99


async def test_post_batches_and_falls_back_for_missing(np_emulator_factory):
    server = np_emulator_factory(hole_rate=0.1)
    state = server.state
    wanted = ids(60)
    async with client_for(server, batch_size=20) as client:
        results = await client.get_features(wanted, max_acts=5)
    posts = state.log.matching("/api/features", "POST")
    assert len(posts) == 3
    for fid, result in zip(wanted, results):
        if state.is_hole(fid.model_id, fid.source, fid.index):
            assert isinstance(result, NotFound)
        else:
            assert result.raw == state.features_post_item(fid.model_id, fid.source, fid.index, 5)
            full = state.feature(fid.model_id, fid.source, fid.index)
            assert len(result.activations) == min(5, len(full["activations"]))


async def test_listing_search_and_vectors(np_emulator):
    async with client_for(np_emulator) as client:
        models = await client.list_models()
        assert {m.id for m in models} >= {"gpt2-small", "gemma-2-2b"}
        sset = await client.get_source_set("gpt2-small", "res-jb")
        assert sset is not None and {s.id for s in sset.sources} >= {"0-res-jb", "1-res-jb"}
        assert await client.get_source_set("gpt2-small", "no-such-set") is None
        hits = await client.search_explanations("gpt2-small", ["0-res-jb"], "monday", max_results=45)
        assert hits and len(hits) <= 45
        assert all(h.model_id == "gpt2-small" for h in hits)
        vidx = np_emulator.state.vector_indices("gpt2-small", "6-res-vectors")[0]
        vec = await client.get_vector("gpt2-small", "6-res-vectors", vidx)
        assert vec.vector and vec.index == vidx
        with pytest.raises(NPError):
            await client.get_vector("gpt2-small", "0-res-jb", 1)


async def test_in_process_transport_unit_path():
    app = create_app(EmulatorConfig())
    transport = httpx.ASGITransport(app=app)
    async with NeuronpediaClient("http://emulator", transport=transport, budget=None) as client:
        feature = await client.get_feature("gpt2-small/1-res-jb/5")
    assert feature.index == 5 and feature.layer == "1-res-jb"


def test_api_key_never_in_repr_or_errors(np_emulator, monkeypatch):
    from npclient import BlockingClient

    secret = "sk-np-very-secret-123"
    monkeypatch.setenv("NEURONPEDIA_API_KEY", secret)
    with BlockingClient(np_emulator.url, budget=None, retry=FAST_RETRY) as client:
        assert secret not in repr(client)
        try:
            client.get_feature("gpt2-small/99-nope/1")
        except NPError as exc:
            assert secret not in str(exc) and secret not in repr(exc)
        feature = client.get_feature("gpt2-small/0-res-jb/3")
        assert feature.index == 3
    assert np_emulator.state.requests[-1].client  # the emulator saw the request


def test_base_url_from_environment(monkeypatch):
    monkeypatch.setenv("NEURONPEDIA_BASE_URL", "http://127.0.0.1:9/api/")
    client = NeuronpediaClient(budget=None)
    assert client.base_url == "http://127.0.0.1:9"
    asyncio.run(client.aclose())


def test_feature_body_faults_are_classified():
    """A body that is not JSON is transient (retried); `null` is Neuronpedia's not-found; JSON that
    is not a feature is a payload error (not retried)."""
    from npclient.http.client import _decode_feature
    from npclient.errors import NotFound, NPTransportError, PayloadError

    url = "http://127.0.0.1/api/feature/m/s/1"
    with pytest.raises(NPTransportError, match="malformed JSON"):
        _decode_feature(b'{"modelId": "m", "layer": "s", "ind', url)
    with pytest.raises(NotFound):
        _decode_feature(b"null", url)
    with pytest.raises(NPTransportError, match="not a JSON object"):
        _decode_feature(b"[1, 2]", url)
    with pytest.raises(PayloadError, match="unparseable feature"):
        _decode_feature(b'{"modelId": "m", "layer": "s"}', url)
    assert _decode_feature(b'{"modelId": "m", "layer": "s", "index": "1"}', url).index == 1
