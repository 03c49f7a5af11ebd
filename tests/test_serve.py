"""`np-mirror serve`: the API against the emulator it mirrors, its guards, the pages, real clients.

A small emulator source is synced into a mirror; the server over that mirror must answer
what the emulator answered for the data (same features, same order). Errors are checked against
`npclient.wire` (Neuronpedia's contract), not the emulator: serve answers 400/404 where
Neuronpedia (and the emulator) answer 500. Then: ids, Host header, SQL injection, untrusted text
in pages, the database let go, the official `neuronpedia` client, and a headless Chromium.
`tests/test_serve_contract.py` covers the contract on a hand-built mirror, `test_serve_fuzz.py`
fuzzes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from helpers import SRC, official_client_port, small_config
from npclient import NeuronpediaClient, SourceId, wire
from npclient.models import Feature
from npclient.serve import create_app
from npclient.serve.api import DECODER_PATH, SERVED_ROUTES
from npclient.store.database import Database
from npclient.store.writer import FeatureRow, write_batch
from npclient.sync import SyncOptions, run_sync
from npclient.testing import EmulatorServer

M, S = SRC
S2 = "1-res-jb"
N_GET = 60  # features of SRC synced by GET (raw = the GET body)
N_POST = 40  # features of S2 synced by POST (raw = the POST item)
EVIL = "<script>window.__pwned = 1</script>"


def _sync(server: EmulatorServer, db: Database, targets: list, **opts) -> None:
    async def go() -> None:
        async with NeuronpediaClient(server.url, budget=None, concurrency=4, timeout=10.0) as client:
            await run_sync(targets, db=db, client=client, options=SyncOptions(**opts))

    asyncio.run(go())


@pytest.fixture(scope="module")
def emulator():
    server = EmulatorServer(small_config(d_sae=N_GET, hole_rate=0.15)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mirror_path(emulator, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "mirror.duckdb"
    db = Database(path)
    _sync(emulator, db, [SourceId(M, S)], method="get")
    _sync(emulator, db, [SourceId(M, S2)], method="post", range=(0, N_POST))
    db.close()
    return path


@pytest.fixture(scope="module")
def app(mirror_path):
    application = create_app(mirror_path, linger_s=0.2)
    yield application
    application.state.reader.close()


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url="http://127.0.0.1:3000") as c:
        yield c


@pytest.fixture(scope="module")
def emu(emulator):
    with httpx.Client(base_url=emulator.url, timeout=10.0) as c:
        yield c


def _same(mirror_resp: httpx.Response, emu_resp: httpx.Response) -> None:
    assert mirror_resp.status_code == emu_resp.status_code, (mirror_resp.text, emu_resp.text)
    assert mirror_resp.headers["content-type"].startswith("application/json")
    assert mirror_resp.json() == emu_resp.json()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_process(db: Path, port: int):
    """`np-mirror serve` in its own process (the Typer command function, run as the CLI runs it)."""
    code = "import typer; from np_mirror.cmd_serve import serve; typer.run(serve)"
    proc = subprocess.Popen([sys.executable, "-c", code, "--port", str(port), "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited: {proc.stdout.read().decode()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/feature/x/y/0", timeout=1.0).status_code == 404:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("serve did not start in 30 s")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- API shapes


def test_routes_are_wires_paths():
    assert SERVED_ROUTES and set(SERVED_ROUTES) <= set(wire.READ_ROUTES)
    assert DECODER_PATH.startswith("/api/np-mirror/") and DECODER_PATH not in {p for p, _ in wire.READ_ROUTES}


def test_get_feature_is_the_stored_body_and_the_emulators(client, emu, emulator):
    holes = 0
    for i in range(N_GET):
        path = f"/api/feature/{M}/{S}/{i}"
        mine, theirs = client.get(path), emu.get(path)
        _same(mine, theirs)
        holes += mine.status_code == 404
    assert holes < N_GET // 2
    # POST-synced features are served as stored (the POST item), activations ranked top-first
    for i in range(0, N_POST, 7):
        got = client.get(f"/api/feature/{M}/{S2}/{i}")
        if emulator.state.exists(M, S2, i):
            item = emulator.state.features_post_item(M, S2, i)
            item["activations"] = wire.rank_activations(item["activations"])
            assert got.json() == item


@pytest.mark.parametrize(("path", "access_denied"), [
    (f"/api/feature/{M}/no-such-source/1", True),  # set `such-source` unknown
    (f"/api/feature/nomodel/{S}/1", True),
    (f"/api/feature/{M}/99-res-jb/1", False),  # a known set: only the feature is missing
    (f"/api/feature/{M}/{S}/abc", False),
    (f"/api/feature/{M}/{S}/-1", False),
    (f"/api/feature/{M}/{S}/007", False),
    (f"/api/feature/{M}/{S}/99999999999999999999", False),
    (f"/api/feature/{M}/{S}/{'9' * 5000}", False),
    (f"/api/feature/{M}/{S}/1.5", False),
    (f"/api/feature/{M}/{S}/1e400", False),
    (f"/api/feature/{M}/{S}/400", False),
])
def test_feature_errors_have_neuronpedias_shapes(client, path, access_denied):
    r = client.get(path)
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/json")
    assert r.json() == wire.not_found_body(access_denied=access_denied)


def test_ids_are_validated_before_any_query(client):
    for path in [f"/api/feature/{M}/..%2F..%2Fetc/1", f"/api/feature/{M}/a'b/1", f"/api/feature/{M}/%00/1",
                 f"/api/feature/{M}/{'x' * 300}/1", f"/api/feature/{'x' * 600}/{S}/1"]:
        r = client.get(path)
        assert r.status_code == 404 and "error" in r.json(), path
    r = client.get("/api/nothing-here")
    assert r.status_code == 404 and r.json()["error"] == "Not Found"


def test_post_features_matches_the_emulator(client, emu):
    items = [{"modelId": M, "layer": S, "index": i} for i in (5, 3, 3, 17, 59, 400)]
    items += [{"modelId": M, "layer": S2, "index": 2}, {"modelId": "nomodel", "layer": S, "index": 1}]
    for body in (items, [dict(items[0], maxActsToReturn=3), *items[1:]]):
        mine = client.post("/api/features", json=body)
        theirs = emu.post("/api/features", json=body)
        assert mine.status_code == theirs.status_code == 200
        emu_rows = {(r["layer"], r["index"]) for r in theirs.json()}
        # S2 is only synced by POST for 0..N_POST; everything requested is in the mirror or absent in both
        assert [(r["layer"], r["index"]) for r in mine.json()] == [(r["layer"], r["index"]) for r in theirs.json()]
        assert mine.json() == theirs.json(), emu_rows
    for bad, message in (
        ([], wire.UNKNOWN_ERROR),  # Neuronpedia: 500 (its own catch); bad input here
        ({}, "this must be a `array` type, but the final value was: `{}`."),
        ([{"modelId": M}], "[0].index is a required field"),
        ([{"modelId": M, "layer": S, "index": "x"}],
         "[0].index must be a `number` type, but the final value was: `NaN` (cast from the value `\"x\"`)."),
        ("nope", "this must be a `array` type, but the final value was: `\"nope\"`."),
        (None, wire.INVALID_JSON_BODY),
    ):
        r = client.post("/api/features", content=json.dumps(bad))
        assert (r.status_code, r.json()) == (400, {"message": message}), bad


def test_model_list_and_source_set_shapes(client, emu, emulator):
    mine, theirs = client.post("/api/model/list").json(), emu.post("/api/model/list").json()
    assert [m["id"] for m in mine] == [m["id"] for m in theirs]
    set_keys = {"modelId", "name", "sources", "description", "urls", "hasDashboards"}
    for m_mine, m_theirs in zip(mine, theirs):
        assert [s["name"] for s in m_mine["sourceSets"]] == [s["name"] for s in m_theirs["sourceSets"]]
        for s in m_mine["sourceSets"]:
            assert set_keys <= set(s)
            for src in s["sources"]:
                assert tuple(src) == wire.MODEL_LIST_SOURCE_FIELDS
    src_mine = client.get(f"/api/source-set/{M}/res-jb").json()
    src_theirs = emu.get(f"/api/source-set/{M}/res-jb").json()
    assert [s["id"] for s in src_mine["sources"]] == [s["id"] for s in src_theirs["sources"]]
    by_id = {s["id"]: s for s in src_theirs["sources"]}
    for s in src_mine["sources"]:  # the stored source rows carry the served fields, same values
        for key in ("id", "modelId", "setName", "saelensRelease", "saelensSaeId", "hfRepoId", "saelensConfig"):
            assert s[key] == by_id[s["id"]][key]
    # the set row and the model row are the relations a synced GET body carried
    stored = emulator.state.feature(M, S, _first_present(emulator))
    for key in ("description", "urls", "releaseName", "type", "creatorName"):
        assert src_mine[key] == stored["sourceSet"][key]
    assert src_mine["model"] == {**src_mine["model"], **stored["model"]}
    assert src_mine["releases"]["name"] == stored["sourceSet"]["releaseName"]
    r = client.get(f"/api/source-set/{M}/nosuchset")
    assert (r.status_code, r.content) == (200, b"null")


def test_search_shape_ranking_and_paging(client, emu, emulator):
    body = {"modelId": M, "layers": [S], "query": "monday"}
    mine, theirs = client.post("/api/explanation/search", json=body), emu.post("/api/explanation/search", json=body)
    assert mine.status_code == theirs.status_code == 200
    m, t = mine.json(), theirs.json()
    assert set(m) == set(t) and m["request"] == t["request"] == body
    assert m["results"], "the emulator's Monday feature is in the mirror"
    assert set(m["results"][0]) == set(t["results"][0])
    assert set(m["results"][0]) == {"modelId", "layer", "index", "description", "explanationModelName",
                                    "typeName", "cosine_similarity", "neuron"}
    assert all("monday" in r["description"].lower() for r in m["results"])
    scores = [r["cosine_similarity"] for r in m["results"]]
    assert scores == sorted(scores, reverse=True)
    assert m["results"][0]["description"].lower() == "monday"  # the exact phrase ranks first
    # paging: 20 a page, nextOffset continues
    wide = {"modelId": M, "layers": [S, S2], "query": "the of and tokens mentions"}
    page1 = client.post("/api/explanation/search", json=wide).json()
    assert page1["resultsCount"] == len(page1["results"]) <= wire.SEARCH_PAGE
    assert ("nextOffset" in page1) == page1["hasMore"] == (len(page1["results"]) == wire.SEARCH_PAGE)
    if page1["hasMore"]:
        page2 = client.post("/api/explanation/search", json={**wide, "offset": page1["nextOffset"]}).json()
        assert {(r["layer"], r["index"], r["description"]) for r in page2["results"]}.isdisjoint(
            {(r["layer"], r["index"], r["description"]) for r in page1["results"]})
    # validation errors: wire's messages, 400 (never 500); an unknown model 404
    for bad, status, message in (
        ({"modelId": M, "layers": [S]}, 400, "query is a required field"),
        ({"modelId": M, "query": "xyz"}, 400, "layers is a required field"),
        ({"layers": [S], "query": "xyz"}, 400, "modelId is a required field"),
        ({"modelId": M, "layers": [S], "query": "x"}, 400, "query must be at least 3 characters"),
        ({**body, "offset": -1}, 400, wire.UNKNOWN_ERROR),
    ):
        r = client.post("/api/explanation/search", json=bad)
        assert (r.status_code, r.json()) == (status, {"message": message}), bad
    r = client.post("/api/explanation/search", json={"modelId": "nomodel", "layers": [S], "query": "xyz"})
    assert r.status_code == 404 and "nomodel" in r.json()["message"]


def test_search_never_runs_request_text_as_sql(client, app):
    before = app.state.reader.rows("SELECT count(*) AS n FROM features", [])[0]["n"]
    for query in ["'; DROP TABLE features; --", "monday' OR '1'='1", "%%%", "___", "\\\\\\", "monday\") UNION SELECT 1 --"]:
        # a layer of a known set (`res-jb`, cut at `__`) passes the set check and reaches the query
        r = client.post("/api/explanation/search", json={"modelId": M, "layers": [S, "0-res-jb__x'); DROP TABLE features; --"],
                                                         "query": query})
        assert r.status_code == 200, (query, r.text)
        for hit in r.json()["results"]:
            assert hit["layer"] in (S, S2)
        r = client.post("/api/explanation/search", json={"modelId": M + "'; DROP TABLE features; --", "layers": [S],
                                                         "query": query})
        assert r.status_code == 404, (query, r.text)
    # '%' and '_' are literals, not wildcards: no description contains them
    assert client.post("/api/explanation/search", json={"modelId": M, "layers": [S], "query": "%%%"}).json()["results"] == []
    assert app.state.reader.rows("SELECT count(*) AS n FROM features", [])[0]["n"] == before


def test_search_by_regular_expression(client):
    r = client.post("/api/explanation/search", json={"modelId": M, "layers": [S], "query": "^mon.ay$", "regex": True})
    assert r.status_code == 200
    hits = r.json()["results"]
    assert any(h["description"] == "Monday" for h in hits)
    assert all(re.search("^mon.ay$", h["description"], re.I) for h in hits)
    bad = client.post("/api/explanation/search", json={"modelId": M, "layers": [S], "query": "(unclosed", "regex": True})
    assert bad.status_code == 400 and "message" in bad.json()


def test_host_header_is_checked(app):
    with TestClient(app, base_url="http://evil.example:3000") as c:
        for path in (f"/api/feature/{M}/{S}/1", "/"):
            r = c.get(path)
            assert r.status_code == 400 and "Invalid host header" in r.json()["message"]
    for host in ("localhost:3000", "127.0.0.1", "[::1]:3000"):
        with TestClient(app, base_url=f"http://{host}") as c:  # reached the route (no such feature)
            assert c.get(f"/api/feature/{M}/{S}/nope").json() == wire.not_found_body(access_denied=False)


def test_the_database_is_let_go_between_requests(client, app, mirror_path):
    assert client.get(f"/api/feature/{M}/{S}/1").status_code in (200, 404)
    time.sleep(0.6)
    assert not app.state.reader.mirror.db.is_open
    # another process can open the file read-write (as a sync does), then we read again
    code = ("import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
            "c.execute('CREATE TABLE IF NOT EXISTS _probe (x INT)'); c.execute('DROP TABLE _probe'); c.close()")
    subprocess.run([sys.executable, "-c", code, str(mirror_path)], check=True, timeout=60)
    assert client.get(f"/api/feature/{M}/{S}/1").status_code in (200, 404)


# --------------------------------------------------------------------------- decoder rows


def test_decoder_rows_of_attached_weights(emulator, mirror_path, tmp_path, monkeypatch):
    import numpy as np

    from npclient.testing.saes import make_emulator_sae
    from npclient.weights import attach, get_weights

    monkeypatch.setenv("NP_MIRROR_HOME", str(tmp_path / "home"))
    path = tmp_path / "copy.duckdb"
    shutil.copy(mirror_path, path)
    syn = make_emulator_sae(tmp_path / "sae", emulator.state, M, S)
    db = Database(path)
    attach(db, f"{M}/{S}", path=syn.path)
    record = get_weights(db, f"{M}/{S}")
    db.close()
    expected = np.load(record.decoder_path)
    application = create_app(path, linger_s=0)
    with TestClient(application, base_url="http://127.0.0.1") as c:
        r = c.get(f"/api/np-mirror/decoder/{M}/{S}/7")
        assert r.status_code == 200
        body = r.json()
        assert body["index"] == "7" and len(body["vector"]) == expected.shape[1]
        assert np.allclose(body["vector"], expected[7].astype(np.float64))
        assert c.get(f"/api/np-mirror/decoder/{M}/{S}/{expected.shape[0]}").status_code == 404
        none = c.get(f"/api/np-mirror/decoder/{M}/{S2}/0")
        assert none.status_code == 404 and "error" in none.json()
        assert c.get(f"/api/np-mirror/decoder/{M}/{S}/x").status_code == 400
    application.state.reader.close()


# --------------------------------------------------------------------------- pages


def _first_present(emulator) -> int:
    return next(i for i in range(N_GET) if emulator.state.exists(M, S, i) and emulator.state.feature(M, S, i)["activations"])


def test_feature_and_source_pages_render(client, emulator):
    i = _first_present(emulator)
    page = client.get(f"/{M}/{S}/{i}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert 'class="tok max"' in html and "rgba(255, 128, 0" in html
    assert 'class="neighbour"' in html and 'id="histogram"' in html and 'id="pos-logits"' in html
    assert "https://" not in html.replace("https://huggingface", "")  # nothing from a CDN
    assert "script-src 'self'" in page.headers["content-security-policy"]
    src = client.get(f"/{M}/{S}")
    assert src.status_code == 200 and f'href="/{M}/{S}/{i}"' in src.text
    found = client.get(f"/{M}/{S}", params={"q": "monday"})
    assert found.status_code == 200 and "Monday" in found.text
    assert client.get(f"/{M}/{S}/{N_GET + 5}").status_code == 404
    assert client.get(f"/{M}/nosuch").status_code == 404
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/").status_code == 200


def test_umap_scatter_when_computed(emulator, mirror_path, tmp_path):
    import numpy as np

    from npclient.store.results import save_coordinates

    path = tmp_path / "umap.duckdb"
    shutil.copy(mirror_path, path)
    db = Database(path)
    save_coordinates(db, SourceId(M, S), "umap", np.arange(10), np.random.default_rng(0).normal(size=(10, 2)))
    db.close()
    application = create_app(path, linger_s=0)
    with TestClient(application, base_url="http://127.0.0.1") as c:
        html = c.get(f"/{M}/{S}").text
    application.state.reader.close()
    assert 'class="umap"' in html and html.count("<circle") == 10


def test_control_characters_are_visible():
    from npclient.serve.pages import visible_token

    assert visible_token("a\nb\tc\x00\x1b\x7f") == "a\u21b5b\u2192c\u2400\u241b\u2421"
    assert visible_token(" x") == " x"


@pytest.fixture(scope="module")
def evil_mirror(emulator, mirror_path, tmp_path_factory):
    """A copy of the mirror where feature i stores `<script>` in a token and an explanation."""
    path = tmp_path_factory.mktemp("evil") / "mirror.duckdb"
    shutil.copy(mirror_path, path)
    i = _first_present(emulator)
    raw = emulator.state.feature(M, S, i)
    raw["activations"][0]["tokens"][0] = EVIL
    raw["activations"][0]["tokens"][1] = "line\nbreak\x07"
    raw["explanations"][0]["description"] = EVIL + " & <b>bold</b>"
    raw["pos_str"][0] = EVIL
    db = Database(path)
    write_batch(db, [FeatureRow(Feature.from_raw(raw), "get")])
    db.close()
    return path, i


def test_untrusted_text_is_shown_not_run(evil_mirror):
    path, i = evil_mirror
    application = create_app(path, linger_s=0)
    with TestClient(application, base_url="http://127.0.0.1") as c:
        html = c.get(f"/{M}/{S}/{i}").text
        source_html = c.get(f"/{M}/{S}").text
        api = c.get(f"/api/feature/{M}/{S}/{i}").json()
    application.state.reader.close()
    assert "<script>window" not in html and "<b>bold" not in html
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in html
    assert "line\u21b5break\u2407" in html
    assert "<script>window" not in source_html and "&lt;script&gt;" in source_html
    assert api["activations"][0]["tokens"][0] == EVIL  # the API serves what was stored, as JSON


# --------------------------------------------------------------------------- real clients


def test_official_neuronpedia_client_reads_a_feature_and_a_source_set(emulator, mirror_path):
    pytest.importorskip("neuronpedia", reason="pip install neuronpedia (dev extra)")
    i = _first_present(emulator)
    code = (
        "import json, sys\n"
        "from neuronpedia.np_sae_feature import SAEFeature\n"
        "from neuronpedia.np_source_set import SourceSet\n"
        "f = SAEFeature.get(sys.argv[1], sys.argv[2], sys.argv[3])\n"
        "print('NPMIRROR ' + json.dumps({'modelId': f.modelId, 'source': f.source, 'index': f.index, 'data': json.loads(f.jsonData)}))\n"
        "s = SourceSet.get(sys.argv[1], sys.argv[4])\n"
        "print('NPSET ' + json.dumps({'name': s.name, 'model_id': s.model_id, 'description': s.description, 'url': s.url,\n"
        "                             'sources': [(x.id, x.model_id, x.set_name) for x in s.sources]}))\n"
    )
    env = {**os.environ, "USE_LOCALHOST": "true", "NEURONPEDIA_API_KEY": "local-mirror"}
    with official_client_port() as port, serve_process(mirror_path, port):  # skips if port 3000 is taken
        out = subprocess.run([sys.executable, "-c", code, M, S, str(i), "res-jb"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = {x.split(" ", 1)[0]: json.loads(x.split(" ", 1)[1]) for x in out.stdout.splitlines()
             if x.startswith(("NPMIRROR ", "NPSET "))}  # the package prints too
    got = lines["NPMIRROR"]
    assert (got["modelId"], got["source"], got["index"]) == (M, S, str(i))
    from npclient.mirror import Mirror

    with Mirror(mirror_path, read_only=True) as mirror:
        assert got["data"] == mirror.feature(f"{M}/{S}/{i}").raw
    sset = lines["NPSET"]
    stored_set = emulator.state.feature(M, S, i)["sourceSet"]
    assert (sset["name"], sset["model_id"], sset["description"]) == ("res-jb", M, stored_set["description"])
    assert sset["url"] == (stored_set["urls"][0] if stored_set["urls"] else None)
    assert sset["sources"] == [[S, M, "res-jb"], [S2, M, "res-jb"]]


def test_headless_chromium_reads_a_feature_page(browser, emulator, evil_mirror, tmp_path):
    chromium, chromedriver = browser  # skipped, with the reason, without chromium, chromedriver or selenium
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    path, i = evil_mirror
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(chromium)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1200,1600"):
        opts.add_argument(flag)
    port = _free_port()
    with serve_process(path, port) as base:
        driver = webdriver.Chrome(service=Service(str(chromedriver)), options=opts)
        try:
            driver.set_page_load_timeout(30)
            driver.get(f"{base}/{M}/{S}/{i}")
            tokens = driver.find_elements(By.CSS_SELECTOR, "#activations span.tok")
            assert tokens
            coloured = [t for t in tokens if t.value_of_css_property("background-color") not in ("rgba(0, 0, 0, 0)", "transparent")]
            assert coloured
            assert driver.find_elements(By.CSS_SELECTOR, "span.tok.max")
            assert driver.execute_script("return window.__pwned === undefined")  # the stored <script> did not run
            assert EVIL in driver.find_element(By.ID, "activations").text
            shot = tmp_path / "feature.png"
            assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 1000
            link = driver.find_elements(By.CSS_SELECTOR, "a.neighbour")[0]
            target = link.get_attribute("href")
            link.click()
            deadline = time.monotonic() + 10
            while driver.current_url != target and time.monotonic() < deadline:
                time.sleep(0.05)
            assert driver.current_url == target
            assert driver.find_element(By.TAG_NAME, "h1").text.startswith(f"{M} · {S} · ")
            driver.save_screenshot(str(tmp_path / "neighbour.png"))
        finally:
            driver.quit()


def test_serve_refuses_a_non_loopback_host_without_allow_remote(mirror_path):
    import typer
    from typer.testing import CliRunner

    from np_mirror.cmd_serve import _is_loopback, serve

    cli = typer.Typer()
    cli.command()(serve)
    for host in ("0.0.0.0", "192.168.1.10", "example.com"):
        result = CliRunner().invoke(cli, ["--host", host, "--db", str(mirror_path)])
        assert result.exit_code == 2 and "--allow-remote" in result.output, result.output
    assert all(_is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    missing = CliRunner().invoke(cli, ["--db", str(mirror_path.parent / "nope.duckdb"), "--port", "0"])
    assert missing.exit_code == 2 and "no mirror" in missing.output
