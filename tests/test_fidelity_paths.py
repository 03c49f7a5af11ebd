"""Client and sync paths made right against the emulator's Neuronpedia behaviour.

Each test names the behaviour it pins (paths under Neuronpedia's `apps/webapp/`) and fails on
the code before this change.
"""

from __future__ import annotations

import duckdb
import orjson
import pytest

from helpers import SRC, small_config
from npclient import NeuronpediaClient, RetryPolicy, SourceId
from npclient.errors import RouteError
from npclient.ids import SourceSetId, parse_target
from npclient.mirror import Mirror
from npclient.models import SourceInfo
from npclient.http.pacing import Budget
from npclient.store.database import Database
from npclient.sync import SyncOptions, UnknownSourceError, run_sync
from npclient.testing import EmulatorConfig, RateLimitConfig, SourceSpec

FAST_RETRY = RetryPolicy(max_attempts=5, initial_wait_s=0.001, max_wait_s=0.01)


async def _sync(server, db, targets, progress=None, client_kw=None, **options):
    kw = {"budget": None, "retry": FAST_RETRY, "concurrency": 4, **(client_kw or {})}
    async with NeuronpediaClient(server.url, **kw) as client:
        return await run_sync(targets, db=db, client=client, options=SyncOptions(**options), progress=progress)


async def test_one_search_does_not_shrink_the_feature_budget(np_emulator_factory):
    """middleware.ts: `x-limit-remaining` is the last bucket charged; a search reports the
    200/h search bucket, which must not become the 25,000/h feature budget."""
    server = np_emulator_factory(EmulatorConfig(rate_limit=RateLimitConfig()))
    async with NeuronpediaClient(server.url, retry=FAST_RETRY) as client:
        before = client.pacer.remaining
        await client.search_explanations("gpt2-small", ["0-res-jb"], "Monday", max_results=5)
        search_pacer = client.endpoint_pacers["/api/explanation/search"]
        assert client.pacer.remaining >= before - 2  # one request used, not 22,300
        assert search_pacer.remaining <= 199  # the search bucket learnt the server's count
        await client.get_feature("gpt2-small/0-res-jb/3")
        assert client.pacer.remaining >= before - 3


async def test_search_all_shares_the_search_bucket():
    """middleware.ts matches `/api/explanation/search` by prefix: search-all, -model and
    -release count against the same 200 an hour, and the client paces them together."""
    client = NeuronpediaClient("http://127.0.0.1:9")
    try:
        pacers = {path: [p.name for p in client._pacers_for(path)]
                  for path in ("/api/explanation/search", "/api/explanation/search-all", "/api/feature/m/0-a/1")}
    finally:
        await client.aclose()
    assert pacers["/api/explanation/search"] == ["api", "/api/explanation/search"]
    assert pacers["/api/explanation/search-all"] == ["api", "/api/explanation/search"]
    assert pacers["/api/feature/m/0-a/1"] == ["api"]


async def test_search_unknown_error_is_not_retried(np_emulator):
    """app/api/explanation/search/route.tsx answers 500 "Unknown Error" for an unknown model:
    five retries would spend five of the 200 searches an hour on a certain failure."""
    async with NeuronpediaClient(np_emulator.url, budget=None, retry=FAST_RETRY) as client:
        with pytest.raises(RouteError, match="unknown model or source set"):
            await client.search_explanations("no-such-model", ["0-res-jb"], "Monday")
        with pytest.raises(ValueError, match="at least 3 characters"):
            await client.search_explanations("gpt2-small", ["0-res-jb"], "ab")
    assert len(np_emulator.state.log.matching("/api/explanation/search")) == 1


async def test_vector_get_without_a_vector_is_not_found(np_emulator):
    """app/api/vector/get/route.tsx: no stored vector -> the inference fallback fails -> 500."""
    from npclient.errors import NotFound

    async with NeuronpediaClient(np_emulator.url, budget=None, retry=FAST_RETRY) as client:
        with pytest.raises(NotFound, match="no stored vector"):
            await client.get_vector("gpt2-small", "0-res-jb", 3)
        idx = np_emulator.state.vector_indices("gpt2-small", "6-res-vectors")[0]
        assert (await client.get_vector("gpt2-small", "6-res-vectors", idx)).index == idx


def test_saelens_config_as_a_json_string_or_null():
    """prisma/schema.prisma `saelensConfig Json?`; app/api/admin/upload-eval/route.ts stores a string."""
    assert SourceInfo.model_validate({"id": "0-a", "saelensConfig": '{"d_sae": 512}'}).d_sae == 512
    assert SourceInfo.model_validate({"id": "0-a", "saelensConfig": None}).d_sae is None
    assert SourceInfo.model_validate({"id": "0-a", "saelensConfig": "not json"}).d_sae is None


async def test_feature_counts_when_the_config_is_a_string_or_null(np_emulator_factory, tmp_path):
    server = np_emulator_factory(EmulatorConfig(sources=(
        SourceSpec("gpt2-small", "0-res-jb", d_sae=40, saelens_config="string"),
        SourceSpec("gpt2-small", "1-res-jb", d_sae=40, saelens_config="null"),
    )))
    db = Database(tmp_path / "m.duckdb")
    summary = await _sync(server, db, [SourceId("gpt2-small", "0-res-jb")])
    assert summary.sources[0].wanted == 40 and summary.fetched == 40
    with pytest.raises(UnknownSourceError, match="pass a range"):
        await _sync(server, db, [SourceId("gpt2-small", "1-res-jb")])
    summary = await _sync(server, db, [SourceId("gpt2-small", "1-res-jb")], range=(0, 10))
    assert summary.fetched == 10
    # the mirror now knows what it holds; a rerun needs no --range and asks for nothing
    again = await _sync(server, db, [SourceId("gpt2-small", "1-res-jb")], range=(0, 10))
    assert again.fetched == 0 and again.sources[0].already_present == 10


async def test_activations_are_ranked_top_first_on_every_path(np_emulator_factory, tmp_path):
    """lib/db/neuron.ts: POST /api/features sends activations unordered (no maxActsToReturn);
    rank 0 must still be the largest maxValue everywhere, while `.raw` stays as sent."""
    server = np_emulator_factory(small_config(d_sae=60))
    db = Database(tmp_path / "m.duckdb")
    await _sync(server, db, [SourceId(*SRC)], method="post")
    con = duckdb.connect(str(tmp_path / "m.duckdb"), read_only=True)
    try:
        bad = con.execute("""
            SELECT count(*) FROM (
                SELECT feature_key, rank, max_value, activation_id,
                       lag(max_value) OVER w AS prev_value, lag(activation_id) OVER w AS prev_id
                FROM activations WINDOW w AS (PARTITION BY feature_key ORDER BY rank))
            WHERE prev_value < max_value OR (prev_value = max_value AND prev_id > activation_id)""").fetchall()[0][0]
        origins = {r[0] for r in con.execute("SELECT DISTINCT origin FROM features").fetchall()}
    finally:
        con.close()
    db.close()
    assert bad == 0 and origins == {"post"}
    mirror = Mirror(tmp_path / "m.duckdb", read_only=True)
    unordered = 0
    for i in range(60):
        f = mirror.feature(f"gpt2-small/0-res-jb/{i}")
        if f is None or not f.activations:
            continue
        values = [a.max_value for a in f.activations]
        assert values == sorted(values, reverse=True)
        sent = [a["maxValue"] for a in f.raw["activations"]]
        assert sorted(sent, reverse=True) == values
        unordered += sent != values
        truth = server.state.features_post([(*SRC, i)])[0]
        assert f.raw == truth  # exactly what the server sent
    assert unordered > 0  # the server really sent some unordered


async def test_waiting_for_the_budget_is_reported(np_emulator_factory, tmp_path, monkeypatch):
    """When the budget is spent the progress says until when requests wait (a real wait of a
    few seconds, sampled every 0.2 s: no timing luck involved)."""
    import time

    import npclient.sync as sync_module

    monkeypatch.setattr(sync_module, "PROGRESS_TICK_S", 0.2)
    server = np_emulator_factory(small_config(d_sae=24))  # 8 GETs at once, the rest paced (the emulator needs d_sae >= 23)
    events = []
    started = time.time()
    await _sync(server, Database(tmp_path / "m.duckdb"), [SourceId(*SRC)], progress=events.append, method="get",
                client_kw={"budget": Budget(limit=8, window_s=2.0, burst=8), "concurrency": 8})
    waits = [e for e in events if e.waiting_until is not None]
    assert waits, "no progress event said it was waiting"
    assert all(e.waiting_reason == "rate limit" for e in waits)
    assert all(started < e.waiting_until < time.time() + 3 for e in waits)
    assert all(e.budget_window_s == 2.0 for e in events)
    from np_mirror.progress import waiting_text

    assert waiting_text(waits[0]).startswith("rate limit: waiting until ")


async def test_scores_refetch_unscored_features_by_get(np_emulator_factory, tmp_path):
    """Exports and POST answers carry no explanation scores; `--scores` fetches exactly the
    features that lack them again by GET, and status says which columns are thin."""
    server = np_emulator_factory(small_config(d_sae=40))
    path = tmp_path / "m.duckdb"
    db = Database(path)
    await _sync(server, db, [SourceId(*SRC)], range=(0, 30), method="post")
    status = {r["source"]: r for r in Mirror(path).status()}["gpt2-small/0-res-jb"]
    assert status["scored"] == 0 and status["thin"] == "scores" and status["explained"] > 0
    # the source-set listing carries the model row (lib/db/source.ts): the mirror keeps it
    assert Mirror(path).sql("SELECT model_id, display_name FROM models").to_pylist() == [
        {"model_id": "gpt2-small", "display_name": "GPT2-Small"}]
    server.state.log.clear()
    plans = []
    async with NeuronpediaClient(server.url, budget=None, retry=FAST_RETRY) as client:
        summary = await run_sync([SourceId(*SRC)], db=db, client=client,
                                 options=SyncOptions(range=(0, 40), scores=True), on_plan=plans.append)
    assert plans[0][0].scores_needed == 40  # printed before any feature request
    gets = server.state.log.matching("/api/feature/")
    assert len(gets) == 40 and not server.state.log.matching("/api/features")
    assert summary.fetched == 40
    status = {r["source"]: r for r in Mirror(path).status()}["gpt2-small/0-res-jb"]
    assert status["scored"] == 40 and status["thin"] == ""
    top = Mirror(path).sql(
        'SELECT "index", top_explanation FROM features WHERE n_explanations > 0 ORDER BY "index"').to_pylist()
    for row in top:  # GET's first explanation: scoreV2 desc, NULL first (lib/db/neuron.ts)
        assert row["top_explanation"] == server.state.feature(*SRC, row["index"])["explanations"][0]["description"]


@pytest.mark.parametrize("text,kind,set_name", [
    ("gpt2-small/5", "SourceId", "neurons"),  # lib/utils/source.ts: a bare layer is the neurons set
    ("gpt2-small/e-res-sm", "SourceId", "res-sm"),  # the embedding layer
    ("gpt2-small/0-res-jb", "SourceId", "res-jb"),
    ("gpt2-small/res-jb", "SourceSetId", "res-jb"),
])
def test_targets_follow_source_ts(text, kind, set_name):
    target = parse_target(text)
    assert type(target).__name__ == kind
    assert (target.set_name if isinstance(target, SourceId) else target.set_name) == set_name


async def test_sync_of_a_neuron_layer_and_an_embedding_source(np_emulator_factory, tmp_path):
    server = np_emulator_factory(EmulatorConfig(sources=(
        SourceSpec("gpt2-small", "5", d_sae=30), SourceSpec("gpt2-small", "e-res-sm", d_sae=30),
    )))
    db = Database(tmp_path / "m.duckdb")
    summary = await _sync(server, db, [parse_target("gpt2-small/5"), parse_target("gpt2-small/e-res-sm")])
    assert [s.fetched for s in summary.sources] == [30, 30]
    body = orjson.loads(server.state.feature_bytes("gpt2-small", "5", 3))
    assert body["sourceSetName"] == "neurons" and body["sourceSet"]["name"] == "neurons"


def test_null_arrays_read_as_empty():
    """Postgres arrays can be NULL in an export record (export-data.py dumps the row as is)."""
    from npclient.models import Feature

    f = Feature.model_validate({"modelId": "m", "layer": "0-a", "index": "1", "freq_hist_data_bar_values": None,
                                "neuron_alignment_indices": None, "decoder_weights_dist": None})
    assert f.freq_hist_data_bar_values == () and f.neuron_alignment_indices == () and f.decoder_weights_dist == ()
