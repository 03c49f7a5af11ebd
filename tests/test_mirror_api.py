"""`Mirror`'s research API (activations, explanations, search, neighbors, features(where=)) on a
mirror synced from the emulator: every answer is checked against the emulator's own state, serve's
search route, or `geometry.api.neighbors`, never against the method's own output."""

from __future__ import annotations

import math
import shutil

import pyarrow as pa
import pytest
from starlette.testclient import TestClient

from helpers import LIGHT
from npclient import SourceId
from npclient.errors import FeatureOutOfRange, InvalidOptionError, QueryError, WeightsError
from npclient.geometry import api as geometry
from npclient.mirror import Mirror
from npclient.models import TABLE_COLUMNS
from npclient.serve import create_app
from npclient.testing import EmulatorConfig, EmulatorServer, SourceSpec
from npclient.testing.saes import make_emulator_sae

M = "gpt2-small"
SRC = SourceId(M, "0-res-jb")  # synced by GET, weights attached
OTHER = SourceId(M, "1-res-jb")  # synced by POST, part of it, no weights: stored topkCosSim lists
WIDE = SourceId(M, "0-reswide-jb")  # weights only (the planted wider SAE)
D_SRC, D_OTHER, SYNCED_OTHER = 256, 128, 100
RATE = 10_000.0  # requests a second: the local emulator needs no politeness
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mirror_api")
    config = EmulatorConfig(sources=(SourceSpec(M, SRC.source, d_sae=D_SRC, d_in=64),
                                     SourceSpec(M, OTHER.source, d_sae=D_OTHER, d_in=64)), **LIGHT)
    server = EmulatorServer(config).start()
    mirror = Mirror(tmp / "m.duckdb", linger_s=0)
    assert mirror.sync(SRC, base_url=server.url, exports=False, full=True, rate=RATE).failed == 0
    assert mirror.sync(OTHER, base_url=server.url, exports=False, range=(0, SYNCED_OTHER), rate=RATE).failed == 0
    sae = make_emulator_sae(tmp / "sae", server.state, M, SRC.source)
    mirror.attach_weights(SRC, path=sae.path / "sae_weights.safetensors", tensor="W_dec", root=tmp / "weights")
    mirror.attach_weights(WIDE, path=sae.wide_path / "sae_weights.safetensors", tensor="W_dec", root=tmp / "weights")
    yield server, mirror, sae
    mirror.close()
    server.stop()


@pytest.fixture(scope="module")
def serve(world, tmp_path_factory):
    """`np-mirror serve` over a copy of the mirror: its read-only connection may then linger
    (fast) while the test's read-write `Mirror` opens the original (one mode per file a process)."""
    _, mirror, _ = world
    mirror.close()
    copy = tmp_path_factory.mktemp("served") / "m.duckdb"
    shutil.copyfile(mirror.path, copy)
    app = create_app(copy, linger_s=2.0)
    with TestClient(app, base_url="http://127.0.0.1:3000") as client:
        yield client
    app.state.reader.close()


def _truth(server, sid: SourceId, index: int) -> dict:
    return server.state.feature(sid.model_id, sid.source, index)


# --------------------------------------------------------------------------- activations
def test_activations_are_top_first_as_the_emulator_ranks_them(world):
    server, mirror, _ = world
    cases = [(SRC, i) for i in (0, 7, 100, D_SRC - 1)] + [(OTHER, i) for i in (0, 42, SYNCED_OTHER - 1)]
    for sid, i in cases:
        acts = mirror.activations(f"{sid}/{i}")
        assert acts.column_names == [c.name for c in TABLE_COLUMNS["activations"]]
        # GET /api/feature sends activations by maxValue, descending: the emulator's ranking
        want = [a["id"] for a in _truth(server, sid, i)["activations"]]
        assert acts.column("activation_id").to_pylist() == want, (sid, i)
        assert acts.column("rank").to_pylist() == list(range(len(want)))
        values = acts.column("max_value").to_pylist()
        assert values == sorted(values, reverse=True)
        top = mirror.activations(f"{sid}/{i}", top=2)
        assert top.column("activation_id").to_pylist() == want[:2]
    frame = mirror.activations(f"{SRC}/3", top=1).to_pandas()
    assert list(frame["activation_id"]) == [_truth(server, SRC, 3)["activations"][0]["id"]]


def test_activations_of_a_feature_the_mirror_lacks_or_cannot_have(world):
    _, mirror, _ = world
    assert mirror.activations(f"{OTHER}/{SYNCED_OTHER + 3}").num_rows == 0  # in the source, not synced
    with pytest.raises(FeatureOutOfRange):
        mirror.activations(f"{SRC}/{D_SRC}")
    for bad in (-1, 1.5, True):
        with pytest.raises(InvalidOptionError) as info:
            mirror.activations(f"{SRC}/1", top=bad)
        assert info.value.option == "top"


# --------------------------------------------------------------------------- explanations
def test_explanations_in_the_stores_rank_order(world):
    server, mirror, _ = world
    counts = mirror.features(SRC, ["index", "n_explanations", "top_explanation"]).to_pylist()
    tops = {r["index"]: r["top_explanation"] for r in counts}
    several = [r["index"] for r in counts if r["n_explanations"] >= 2][:4]
    none = [r["index"] for r in counts if not r["n_explanations"]][:1]
    assert len(several) == 4
    for i in several + none:
        table = mirror.explanations(f"{SRC}/{i}")
        assert table.column_names == [c.name for c in TABLE_COLUMNS["explanations"]]
        # a GET-synced feature keeps Neuronpedia's order: the order GET sent (scoreV2, NULL first, ...)
        want = [e["description"] for e in _truth(server, SRC, i)["explanations"]]
        assert table.column("description").to_pylist() == want
        assert table.column("rank").to_pylist() == list(range(len(want)))
        assert (want[0] if want else None) == tops[i]
    for i in (0, 1, 50):
        # a POST-synced feature keeps the order POST /api/features sent (no scores, no ids)
        item = server.state.features_post_item(M, OTHER.source, i, None)
        table = mirror.explanations(f"{OTHER}/{i}")
        assert table.column("description").to_pylist() == [e["description"] for e in item["explanations"]]
    assert mirror.explanations(f"{OTHER}/{SYNCED_OTHER}").num_rows == 0


# --------------------------------------------------------------------------- search
def _serve_search(serve, layers: list[str], query: str, pages: int = 100) -> tuple[list[dict], bool]:
    """serve's /api/explanation/search results, page after page (at most `pages`: each result
    carries its feature, which takes a while), and whether that was all of them."""
    out, offset = [], 0
    for _ in range(pages):
        r = serve.post("/api/explanation/search", json={"modelId": M, "layers": layers, "query": query, "offset": offset})
        assert r.status_code == 200, r.text
        body = r.json()
        out.extend(body["results"])
        if body.get("nextOffset") is None:
            return out, True
        offset = body["nextOffset"]
    return out, False


def _same_as_serve(serve, table: pa.Table, layers: list[str], query: str) -> bool:
    theirs, complete = _serve_search(serve, layers, query)
    mine = _as_serve(table)
    return (mine if complete else mine[: len(theirs)]) == _from_serve(theirs)


def _as_serve(table: pa.Table) -> list[tuple]:
    return [(r["source"], str(r["index"]), r["description"], r["explanation_model_name"], r["type_name"],
             round(r["score"], 6)) for r in table.to_pylist()]


def _from_serve(results: list[dict]) -> list[tuple]:
    return [(r["layer"], r["index"], r["description"], r["explanationModelName"], r["typeName"],
             r["cosine_similarity"]) for r in results]


@pytest.mark.parametrize("query", ["Monday", "days of the week", "references to text", "day", "the"])
def test_search_ranks_exactly_as_serve(world, serve, query):
    _, mirror, _ = world
    one = mirror.search(query, source=SRC, limit=None)
    assert one.num_rows > 0
    assert _same_as_serve(serve, one, [SRC.source], query)
    both = mirror.search(query, source=[OTHER, SRC], limit=None)
    assert {r["source"] for r in both.to_pylist()} == {SRC.source, OTHER.source}
    assert _same_as_serve(serve, both, [OTHER.source, SRC.source], query)
    # no source: every source of every model, ties by model then source name
    assert _as_serve(mirror.search(query, limit=None)) == _as_serve(mirror.search(query, source=[SRC, OTHER], limit=None))
    assert _as_serve(mirror.search(query, model=M, limit=None)) == _as_serve(mirror.search(query, limit=None))
    assert _as_serve(mirror.search(query, source=SRC)) == _as_serve(one)[:20]
    assert mirror.search(query, source=SRC, limit=3).num_rows == min(3, one.num_rows)


def test_search_finds_what_the_emulator_finds(world):
    """The hits are the explanations sharing a word with the query (the emulator's rule), and
    the Monday feature's own explanation comes first for "Monday"."""
    server, mirror, sae = world
    query = "days of the week"
    found, offset = [], 0
    while True:
        page = server.state.search(M, [SRC.source], query, offset)
        found += [(r["index"], r["description"]) for r in page["results"]]
        if page.get("nextOffset") is None:
            break
        offset = page["nextOffset"]
    mine = mirror.search(query, source=SRC, limit=None)
    assert sorted(zip(map(str, mine.column("index").to_pylist()), mine.column("description").to_pylist())) == sorted(found)
    exact = [r for r in mirror.search("Monday", source=SRC, limit=None).to_pylist() if math.isclose(r["score"], 2.0)]
    assert exact and {r["description"] for r in exact} == {"Monday"}  # the whole word, verbatim: 1 + 1
    assert sae.days[0] in [r["index"] for r in exact]


def test_search_by_regex_and_its_errors(world):
    _, mirror, _ = world
    hits = mirror.search("^(mon|tues)day$", source=SRC, regex=True, limit=None)
    assert sorted(hits.column("description").to_pylist()) == ["Monday", "Tuesday"]
    with pytest.raises(QueryError):
        mirror.search("(unclosed", source=SRC, regex=True)
    with pytest.raises(InvalidOptionError) as info:
        mirror.search("day", source=SRC, model="other-model")
    assert info.value.option == "model"
    with pytest.raises(InvalidOptionError):
        mirror.search("day", limit=-1)
    assert mirror.search("!!!", source=SRC).num_rows == 0  # no words: nothing to match
    assert mirror.search("day", source=[]).num_rows == 0


# --------------------------------------------------------------------------- neighbors
def test_neighbors_from_weights_equal_geometry_and_the_emulator(world):
    server, mirror, sae = world
    day = sae.days[0]
    near = mirror.neighbors(f"{SRC}/{day}", k=6)
    assert near.schema.metadata[b"origin"] == b"weights"
    assert set(near.column("origin").to_pylist()) == {"weights"}
    assert near.drop_columns(["origin"]).to_pylist() == geometry.neighbors(mirror, f"{SRC}/{day}", k=6).to_pylist()
    assert near.column("index").to_pylist() == _truth(server, SRC, day)["topkCosSimIndices"][:6]
    ex = near.column("explanation").to_pylist()
    assert ex[0] == "Monday" and set(ex[1:3]) == {"Tuesday", "Sunday"}


def test_neighbors_across_saes_need_weights_of_both(world):
    _, mirror, sae = world
    parent, children = next(iter(sae.families.items()))
    across = mirror.neighbors(f"{SRC}/{parent}", k=3, against=WIDE)
    assert across.drop_columns(["origin"]).to_pylist() == \
        geometry.neighbors(mirror, f"{SRC}/{parent}", k=3, against=WIDE).to_pylist()
    assert across.column("index").to_pylist()[0] in children
    for feature, against in ((f"{SRC}/{parent}", OTHER), (f"{OTHER}/3", SRC)):
        with pytest.raises(InvalidOptionError) as info:
            mirror.neighbors(feature, k=3, against=against)
        assert info.value.option == "against" and "attach_weights" in str(info.value)


def test_neighbors_from_the_stored_topkcossim_lists(world):
    server, mirror, _ = world
    tops = dict(zip(*mirror.features(OTHER, ["index", "top_explanation"]).to_pydict().values()))
    for i in (0, 17, 64):
        near = mirror.neighbors(f"{OTHER}/{i}", k=5)
        truth = _truth(server, OTHER, i)
        assert near.schema.metadata[b"origin"] == b"stored topkCosSim"
        assert set(near.column("origin").to_pylist()) == {"stored topkCosSim"}
        assert near.column("index").to_pylist() == truth["topkCosSimIndices"][:5]
        for got, want in zip(near.column("cosine").to_pylist(), truth["topkCosSimValues"][:5]):
            assert (got is None and want is None) or math.isclose(got, want, rel_tol=1e-9)
        assert near.column("rank").to_pylist() == list(range(5))
        assert near.column("explanation").to_pylist() == [tops.get(j) for j in truth["topkCosSimIndices"][:5]]
    everything = mirror.neighbors(f"{OTHER}/0", k=10_000)
    assert everything.num_rows == len(_truth(server, OTHER, 0)["topkCosSimIndices"])
    with pytest.raises(WeightsError):  # neither weights nor a stored list
        mirror.neighbors(f"{OTHER}/{SYNCED_OTHER + 1}")
    with pytest.raises(FeatureOutOfRange):
        mirror.neighbors(f"{OTHER}/{D_OTHER}")
    with pytest.raises(InvalidOptionError) as info:
        mirror.neighbors(f"{OTHER}/0", k=0)
    assert info.value.option == "k"


# --------------------------------------------------------------------------- features(where=)
def test_features_where_filters_read_only(world):
    _, mirror, sae = world
    days = mirror.features(SRC, ["index", "top_explanation"], where="top_explanation IN (SELECT unnest(?))",
                           params=[list(DAYS)])
    assert days.column("index").to_pylist() == sorted(sae.days)
    assert sorted(days.column("top_explanation").to_pylist()) == sorted(DAYS)
    assert mirror.features(SRC, where="top_explanation ILIKE '%day%' -- a comment").num_rows == 7
    assert mirror.features(SRC).num_rows == D_SRC
    for bad in ("1=1); DROP TABLE features; --", "no_such_column > 1", "   "):
        with pytest.raises(QueryError):
            mirror.features(SRC, where=bad)
    assert mirror.features(SRC, ["index"]).num_rows == D_SRC  # nothing was dropped
