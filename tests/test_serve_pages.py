"""`np-mirror serve`'s HTML pages as a researcher reads them: the feature page (windowed examples,
values on hover, both histograms with labelled axes, scores, correlations, neighbours and their
origin) and the source page (server-side sorting and paging over a whitelist, the jump box, the
UMAP map from Neuronpedia's or the mirror's coordinates, sampled past 50,000 points, with search
hits ringed), untrusted text shown as text, and a headless Chromium that clicks through both
and saves the README's screenshots.

The feature checks compare with what the emulator served; the source checks with independent
queries on the mirror file. The 131,072-feature source is written through the store's writer.
"""

from __future__ import annotations

import asyncio
import html as htmllib
import re
import shutil
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
from starlette.testclient import TestClient

from helpers import SRC, small_config
from npclient import NeuronpediaClient, SourceId, wire
from npclient.models import Feature
from npclient.serve import create_app
from npclient.serve import charts
from npclient.serve.feature_page import window
from npclient.store.database import Database
from npclient.store.results import save_coordinates
from npclient.store.writer import FeatureRow, write_batch
from npclient.sync import SyncOptions, run_sync
from npclient.testing import EmulatorServer
from npclient.testing.bigsource import BIG_WORDS, write_big_source

M, S = SRC
BIG = "8-res-big"
N_MID = 5000
EVIL = "<script>window.__pwned = 1</script>"
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"


@pytest.fixture(scope="module")
def emulator():
    server = EmulatorServer(small_config(d_sae=64, hole_rate=0.1)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mirror_path(emulator, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pages") / "mirror.duckdb"
    db = Database(path)

    async def go() -> None:
        async with NeuronpediaClient(emulator.url, budget=None, concurrency=4, timeout=10.0) as client:
            await run_sync([SourceId(M, S)], db=db, client=client, options=SyncOptions(method="get"))

    asyncio.run(go())
    db.close()
    return path


@pytest.fixture(scope="module")
def mid_path(tmp_path_factory) -> Path:
    """5,000 features written through the store's writer (pages of 100, 313 'cats' features)."""
    path = tmp_path_factory.mktemp("mid") / "mirror.duckdb"
    write_big_source(path, M, BIG, N_MID, acts_every=50)
    return path


def _client(path: Path):
    application = create_app(path, linger_s=0)
    client = TestClient(application, base_url="http://127.0.0.1")
    client.__enter__()
    return client


@pytest.fixture(scope="module")
def client(mirror_path):
    c = _client(mirror_path)
    yield c
    c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def mid(mid_path):
    c = _client(mid_path)
    yield c
    c.__exit__(None, None, None)


def _present(emulator) -> int:
    """A feature with every part of the page: activations, histograms, correlations, scored explanations."""
    for i in range(64):
        if emulator.state.exists(M, S, i):
            f = emulator.state.feature(M, S, i)
            if (f["activations"] and f["freq_hist_data_bar_heights"] and f["correlated_neurons_indices"]
                    and any(e["scores"] for e in f["explanations"])):
                return i
    raise AssertionError("no complete feature in the emulator source")


def _section(page: str, start: str, end: str = "</table>") -> str:
    at = page.index(start)
    return page[at: page.index(end, at)]


def _indices(table_html: str) -> list[int]:
    return [int(x) for x in re.findall(r'<td class="num"><a href="/[^"]+/(\d+)">', table_html)]


# --------------------------------------------------------------------------- feature page


def test_examples_are_windowed_around_the_max_token_with_values_on_hover(client, emulator):
    i = _present(emulator)
    served = wire.rank_activations(emulator.state.feature(M, S, i)["activations"])
    for n, asked in ((10, None), (3, "3"), (10, "²"), (10, "-1"), (10, "99999")):
        page = client.get(f"/{M}/{S}/{i}", params={} if asked is None else {"window": asked}).text
        blocks = re.findall(r'<(details|div) class="act"( open)?>(.*?)</\1>', page, flags=re.S)
        assert len(blocks) == len(served)
        for k, ((tag, opened, block), act) in enumerate(zip(blocks, served)):
            tokens, values, peak = act["tokens"], act["values"], act["maxValueTokenIndex"]
            start, stop = window(len(tokens), peak, n)
            assert tag == ("details" if (start, stop) != (0, len(tokens)) else "div")
            shown = block.split("</summary>")[0] if tag == "details" else block
            spans = re.findall(r'<span class="tok( max)?" style="[^"]*" data-value="([^"]*)" title="([^"]*)">', shown)
            assert len(spans) == stop - start
            assert [t for t, _, _ in spans].index(" max") == peak - start  # the max token is marked
            assert [t for _, _, t in spans] == [f"{v:.3f}" for v in values[start:stop]]  # its value on hover
            if tag == "details":  # expanding shows every token (the first example starts expanded)
                assert bool(opened) == (k == 0)
                assert block.split("</summary>")[1].count('<span class="tok') == len(tokens)


def test_histograms_are_svg_with_labelled_axes(client, emulator):
    i = _present(emulator)
    served = emulator.state.feature(M, S, i)
    page = client.get(f"/{M}/{S}/{i}").text
    for hid, key, xlabel, ylabel in (("histogram", "freq_hist_data_bar", "activation value", "count"),
                                     ("logit-histogram", "logits_hist_data_bar", "logit weight", "vocabulary tokens")):
        svg = _section(page, f'id="{hid}"', "</svg>")
        finite = [(x, h) for x, h in zip(served[f"{key}_values"], served[f"{key}_heights"])
                  if x is not None and h is not None and np.isfinite(x) and np.isfinite(h)]
        assert svg.count("<rect") == len(finite) > 0
        assert 'class="axis-label x-label"' in svg and f">{xlabel}</text>" in svg and f">{ylabel}</text>" in svg
        assert svg.count('class="tick"') >= 5 + 3  # x and y tick labels
        tallest = max(finite, key=lambda p: p[1])
        assert f"{charts.fmt(tallest[0])}: {tallest[1]:,.0f}</title>" in svg  # a bar's value and count on hover


def test_explanation_scores_and_correlations_are_shown(client, emulator):
    i = _present(emulator)
    served = emulator.state.feature(M, S, i)
    page = client.get(f"/{M}/{S}/{i}").text
    table = _section(page, 'id="explanations"')
    for e in served["explanations"]:
        assert htmllib.escape(e["description"], quote=False) in table
        for s in e["scores"]:
            assert f'{s["explanationScoreTypeName"]} <b>{s["value"]:.3f}</b>' in table
    neurons = _section(page, 'id="correlated-neurons"')
    hrefs = re.findall(r'class="neuron-link" href="([^"]+)"', neurons)
    assert hrefs == [f"/{M}/0/{j}" for j in served["correlated_neurons_indices"]]  # layer 0's neurons source
    assert len(re.findall(r'class="neuron-link"', _section(page, 'id="neuron-alignment"'))) == len(
        served["neuron_alignment_indices"])
    assert "None stored." in _section(page, 'id="correlated-features"')  # the emulator sends empty lists


def test_neighbours_from_stored_topk_lists_say_so(client, emulator):
    i = _present(emulator)
    served = emulator.state.feature(M, S, i)
    page = client.get(f"/{M}/{S}/{i}").text
    assert "Neuronpedia&#39;s topkCosSim lists (stored)" in _section(page, 'id="neighbour-origin"', "</p>")
    links = [int(x) for x in re.findall(r'class="neighbour" href="/[^"]+/(\d+)"', page)]
    assert links == [j for j in served["topkCosSimIndices"] if j != i][:25]


def test_neighbours_from_attached_weights_say_so(emulator, mirror_path, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from npclient.mirror import Mirror
    from npclient.testing.saes import make_emulator_sae
    from npclient.weights import attach

    monkeypatch.setenv("NP_MIRROR_HOME", str(tmp_path / "home"))
    path = tmp_path / "weights.duckdb"
    shutil.copy(mirror_path, path)
    syn = make_emulator_sae(tmp_path / "sae", emulator.state, M, S)
    db = Database(path)
    attach(db, f"{M}/{S}", path=syn.path)
    db.close()
    i = _present(emulator)
    with Mirror(path, read_only=True) as mirror:
        expected = [j for j in mirror.neighbors(f"{M}/{S}/{i}", k=26).column("index").to_pylist() if j != i]
    c = _client(path)
    try:
        page = c.get(f"/{M}/{S}/{i}").text
    finally:
        c.__exit__(None, None, None)
    assert "the attached decoder weights." in _section(page, 'id="neighbour-origin"', "</p>")
    assert [int(x) for x in re.findall(r'class="neighbour" href="/[^"]+/(\d+)"', page)] == expected[:25]


# --------------------------------------------------------------------------- source page


def _expected_order(path: Path, column: str, direction: str, limit: int, offset: int) -> list[int]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return [r[0] for r in con.execute(
            f'SELECT "index" FROM features WHERE source = ? ORDER BY {column} {direction} NULLS LAST, "index" '
            "LIMIT ? OFFSET ?", [BIG, limit, offset]).fetchall()]
    finally:
        con.close()


def test_feature_table_sorts_and_pages_in_the_database(mid, mid_path):
    page = mid.get(f"/{M}/{BIG}").text
    assert _indices(_section(page, 'id="features"')) == list(range(100))
    assert "1–100 of 5,000 · page 1 of 50" in page
    second = mid.get(f"/{M}/{BIG}", params={"page": 2}).text
    assert _indices(_section(second, 'id="features"')) == list(range(100, 200))
    for sort, column in (("max_act", "max_act_approx"), ("density", "frac_nonzero")):
        for order in ("desc", "asc"):
            got = mid.get(f"/{M}/{BIG}", params={"sort": sort, "order": order, "page": 3}).text
            assert _indices(_section(got, 'id="features"')) == _expected_order(mid_path, column, order.upper(), 100, 200)
    last = mid.get(f"/{M}/{BIG}", params={"page": 99999}).text  # beyond the end: the last page
    assert _indices(_section(last, 'id="features"')) == list(range(4900, 5000)) and 'id="next-page"' not in last
    # the headers link to the other order of their column; the request never reaches SQL as text
    assert 'href="?page=1&amp;sort=max_act&amp;order=desc"' in page
    for bad in ({"sort": 'index"; DROP TABLE features; --'}, {"order": "sideways"}, {"page": "-3"}, {"page": "1e9"}, {"page": "²"},
                {"page": "9" * 30}):
        r = mid.get(f"/{M}/{BIG}", params=bad)
        assert r.status_code == 200 and _indices(_section(r.text, 'id="features"')) == list(range(100))
    assert "5,000 features in the mirror" in mid.get(f"/{M}/{BIG}").text


def test_jump_box_goes_to_a_feature_or_says_why_not(mid):
    page = mid.get(f"/{M}/{BIG}").text
    assert 'id="jump"' in page and 'name="index"' in page and 'max="4999"' in page
    r = mid.get(f"/{M}/{BIG}", params={"index": "1234"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/{M}/{BIG}/1234"
    for bad, why in (("5000", "beyond this source, which has 5,000 features"), ("abc", "is not a feature index")):
        r = mid.get(f"/{M}/{BIG}", params={"index": bad}, follow_redirects=False)
        assert r.status_code == 200 and why in _section(r.text, 'id="jump-error"', "</p>")


def _dots(page: str) -> int:
    """Points drawn on the map: dots in the colour paths (large maps) or linked circles (small)."""
    return (sum(d.count("h0") for d in re.findall(r'<path class="pts c[0-9n]" d="([^"]*)"', page))
            + len(re.findall(r'<circle class="c[0-9n]"', page)))


def test_umap_from_neuronpedias_coordinates_coloured_with_hits_ringed(mid, mid_path):
    page = mid.get(f"/{M}/{BIG}").text
    assert 'data-origin="neuronpedia"' in page and "From Neuronpedia&#39;s UMAP coordinates" in page
    assert _dots(page) == N_MID and "fixed random sample" not in page  # 5,000 points: all drawn, as paths
    assert len(set(re.findall(r'<path class="pts (c\d)"', page))) == charts.N_COLOURS  # coloured by max activation
    assert page.count('<span class="key">') == charts.N_COLOURS
    found = mid.get(f"/{M}/{BIG}", params={"q": "cats"}).text
    cats = [i for i in range(N_MID) if BIG_WORDS[i % len(BIG_WORDS)] == "cats"]
    rings = [int(x) for x in re.findall(r'<a class="hit" href="/[^"]+/(\d+)"><circle class="hit"', found)]
    assert sorted(rings) == cats and f"ringed ({len(cats)})" in found
    assert 'id="results"' in found and f"{len(cats)} matching explanations" in found


def test_umap_samples_past_the_limit_and_says_so(mid, monkeypatch):
    monkeypatch.setattr(charts, "MAX_POINTS", 1000)
    monkeypatch.setattr(charts, "SMALL_SCATTER", 500)  # so that the sample is drawn as paths
    page = mid.get(f"/{M}/{BIG}").text
    assert _dots(page) == 1000 and "a fixed random sample of 1,000 of 5,000 points" in page
    assert mid.get(f"/{M}/{BIG}").text == page  # the same sample each time


def test_local_umap_is_preferred_and_neuronpedias_one_click_away(mid_path, tmp_path):
    path = tmp_path / "local.duckdb"
    shutil.copy(mid_path, path)
    db = Database(path)
    save_coordinates(db, SourceId(M, BIG), "umap", np.arange(0, N_MID, 5), np.random.default_rng(1).normal(size=(N_MID // 5, 2)))
    db.close()
    c = _client(path)
    try:
        page = c.get(f"/{M}/{BIG}").text
        assert 'data-origin="local"' in page and _dots(page) == N_MID // 5 and "np-mirror geometry umap" in page
        assert "<title>5: negation and feature 5</title>" in page  # a small map: each point linked, with its tooltip
        other = re.search(r'<a href="([^"]+)">Show Neuronpedia&#39;s map</a>', page).group(1)
        theirs = c.get(f"/{M}/{BIG}{htmllib.unescape(other)}").text
        assert 'data-origin="neuronpedia"' in theirs and _dots(theirs) == N_MID
    finally:
        c.__exit__(None, None, None)


def test_a_laid_out_map_is_redrawn_when_the_mirror_changes(mid_path, tmp_path):
    path = tmp_path / "changing.duckdb"
    shutil.copy(mid_path, path)
    c = _client(path)
    try:
        before = c.get(f"/{M}/{BIG}").text
        assert c.get(f"/{M}/{BIG}").text == before  # laid out once, served again
        moved = {"modelId": M, "layer": BIG, "index": "7", "maxActApprox": 1.0, "umap_x": 1e6, "umap_y": -1e6,
                 "explanations": [], "activations": []}
        db = Database(path)
        write_batch(db, [FeatureRow(Feature.from_raw(moved), "get")])
        db.close()
        after = c.get(f"/{M}/{BIG}").text
        assert after != before and _dots(after) == N_MID
        assert "M630.0 410.0h0" in after  # feature 7 now alone in the far corner (x max, y min)
    finally:
        c.__exit__(None, None, None)


# --------------------------------------------------------------------------- untrusted text


def test_untrusted_text_is_text_on_both_pages(tmp_path):
    path = tmp_path / "evil.duckdb"
    raw = {"modelId": M, "layer": S, "index": "3", "maxActApprox": 2.0, "umap_x": 1.0, "umap_y": 2.0,
           "pos_str": [EVIL], "pos_values": [1.0], "neg_str": [], "neg_values": [],
           "freq_hist_data_bar_values": [0.5, 1.0], "freq_hist_data_bar_heights": [3, 4],
           "correlated_features_indices": [EVIL], "correlated_features_pearson": [0.5],
           "explanations": [{"id": "e", "description": EVIL + " & <b>bold</b>",
                             "scores": [{"value": 0.5, "explanationScoreTypeName": EVIL}]}],
           "activations": [{"id": "a", "tokens": [EVIL] * 30, "values": [0.0] * 29 + [2.0], "maxValue": 2.0}]}
    other = {**raw, "index": "4", "umap_x": 3.0, "umap_y": 1.0, "explanations": [], "activations": []}
    db = Database(path)
    write_batch(db, [FeatureRow(Feature.from_raw(raw), "get"), FeatureRow(Feature.from_raw(other), "get")])
    db.close()
    c = _client(path)
    try:
        pages = [c.get(f"/{M}/{S}/3").text, c.get(f"/{M}/{S}").text, c.get(f"/{M}/{S}", params={"q": "script"}).text,
                 c.get(f"/{M}/{S}", params={"q": EVIL, "index": EVIL}).text]
    finally:
        c.__exit__(None, None, None)
    for page in pages:
        assert "<script>window" not in page and "<b>bold" not in page
        assert page.count("<script") == 1  # only /static/app.js
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in pages[0]
    assert "&lt;script&gt;window.__pwned" in pages[1] and "<title>3: &lt;script&gt;" in pages[1]  # map tooltip
    assert 'class="hit"' in pages[2] and "<title>3: &lt;script&gt;" in pages[2]


# --------------------------------------------------------------------------- scale


@pytest.mark.slow
def test_a_131072_feature_source_stays_usable(tmp_path):
    """Written through the store's writer (about a minute); page times are benchmarks/bench_pages.py's job."""
    path = tmp_path / "big.duckdb"
    n = 131_072
    write_big_source(path, M, BIG, n)
    c = _client(path)
    try:
        page = c.get(f"/{M}/{BIG}").text
        assert "131,072 features in the mirror" in page and "page 1 of 1,311" in page
        assert _dots(page) == charts.MAX_POINTS and "a fixed random sample of 50,000 of 131,072 points" in page
        assert len(page) < 2_000_000
        last = c.get(f"/{M}/{BIG}", params={"page": 1311, "sort": "max_act", "order": "asc"}).text
        assert len(_indices(_section(last, 'id="features"'))) == 72
        found = c.get(f"/{M}/{BIG}", params={"q": "cats"}).text
        assert "ringed (the best 500)" in found and "8,192 matching explanations" in found  # at most 500 marked
        feature = c.get(f"/{M}/{BIG}/{n - 32}")
        assert feature.status_code == 200 and 'id="histogram"' in feature.text and '<details class="act">' in feature.text
        assert c.get(f"/{M}/{BIG}", params={"index": str(n)}).text.count("beyond this source") == 1
    finally:
        c.__exit__(None, None, None)


# --------------------------------------------------------------------------- a real browser


def _small_png(png: bytes, out: Path) -> None:
    """A screenshot as a palette PNG (about a quarter of the size), for the README."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


def test_headless_chromium_reads_both_pages_and_saves_screenshots(browser, emulator, mirror_path):
    chromium, chromedriver = browser  # skipped, with the reason, without chromium, chromedriver or selenium
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from test_serve import _free_port, serve_process

    i = _present(emulator)
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(chromium)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1150,1400"):
        opts.add_argument(flag)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with serve_process(mirror_path, _free_port()) as base:
        driver = webdriver.Chrome(service=Service(str(chromedriver)), options=opts)
        try:
            driver.set_page_load_timeout(30)
            driver.get(f"{base}/{M}/{S}/{i}")
            hist = driver.find_element(By.ID, "histogram")
            labels = [t.text for t in hist.find_elements(By.CSS_SELECTOR, "text.axis-label")]
            assert labels == ["activation value", "count"]
            assert driver.find_element(By.ID, "logit-histogram").find_elements(By.CSS_SELECTOR, "rect")
            top, first = driver.find_elements(By.CSS_SELECTOR, "#activations details.act")[:2]
            assert top.get_attribute("open") is not None  # the strongest example starts open
            shown = first.find_elements(By.CSS_SELECTOR, "summary span.tok")
            assert len(shown) <= 21 and all(t.get_attribute("title") for t in shown)
            assert first.find_elements(By.CSS_SELECTOR, "summary span.tok.max")
            full = first.find_element(By.CSS_SELECTOR, "div.full")
            assert not full.is_displayed()
            first.find_element(By.TAG_NAME, "summary").click()
            assert full.is_displayed() and len(full.find_elements(By.CSS_SELECTOR, "span.tok")) > len(shown)
            assert "topkCosSim" in driver.find_element(By.ID, "neighbour-origin").text
            assert driver.find_elements(By.CSS_SELECTOR, "#neighbours a.neighbour")
            assert driver.find_elements(By.CSS_SELECTOR, "#correlated-neurons a.neuron-link")
            _small_png(driver.get_screenshot_as_png(), SCREENSHOTS / "feature.png")

            driver.get(f"{base}/{M}/{S}?q=the")
            assert driver.find_element(By.ID, "umap").get_attribute("data-origin") == "neuronpedia"
            assert driver.find_elements(By.CSS_SELECTOR, "#umap circle.hit")
            heads = driver.find_elements(By.CSS_SELECTOR, "#features th a.sort")
            assert [h.text for h in heads][:3] == ["index ▲", "top explanation", "max act"]
            _small_png(driver.get_screenshot_as_png(), SCREENSHOTS / "source.png")
            heads[2].click()
            deadline = time.monotonic() + 10
            while "sort=max_act" not in driver.current_url and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "order=desc" in driver.current_url
            values = [float(td.text) for td in driver.find_elements(By.CSS_SELECTOR, "#features tr td:nth-child(3)")
                      if td.text not in ("–", "")]
            assert values == sorted(values, reverse=True) and values
            box = driver.find_element(By.CSS_SELECTOR, "#jump input[name=index]")
            box.send_keys(str(i))
            driver.find_element(By.CSS_SELECTOR, "#jump button").click()
            deadline = time.monotonic() + 10
            while not driver.current_url.endswith(f"/{M}/{S}/{i}") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert driver.current_url.endswith(f"/{M}/{S}/{i}")
        finally:
            driver.quit()
    for name in ("feature.png", "source.png"):
        assert 5_000 < (SCREENSHOTS / name).stat().st_size < 400_000
