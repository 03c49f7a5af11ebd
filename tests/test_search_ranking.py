"""Issue 14 §5 at scale: keyword search ranks, counts and pages in DuckDB (`store/search.py`),
and must give exactly what the one rule gives when every hit is scored in Python: the cosine of
the word sets (`wire.words`), +1 for the verbatim phrase, ties by source order, index, rank.
The oracle below scores every stored explanation by that rule, independently of the SQL."""

from __future__ import annotations

import math
import random

import orjson
import pytest

from npclient import wire
from npclient.mirror import Mirror
from npclient.models import Feature
from npclient.store.writer import FeatureRow, write_batch

WORDS = ["cat", "cats", "dog", "days", "week", "monday", "code", "python", "French", "time", "the", "a", "of",
         "x1", "2024", "caté", "naïve", "Kelvin", "\u212a", "İstanbul", "straße", "日本", "🐈", "cat_dog", "cat-dog",
         "50%", "back\\slash", "CATS!"]
SOURCES = [("gpt2-small", "0-res-jb"), ("gpt2-small", "1-res-jb"), ("gemma-2-2b", "0-gemmascope-res-16k")]


def _description(rng: random.Random) -> str:
    n = rng.randint(1, 7)
    text = " ".join(rng.choice(WORDS) for _ in range(n))
    return text.upper() if rng.random() < 0.1 else text


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    rng = random.Random(7)
    m = Mirror(tmp_path_factory.mktemp("search") / "m.duckdb", linger_s=0)
    rows = []
    for model, source in SOURCES:
        for index in range(60):
            expl = [{"id": f"{model}-{source}-{index}-{r}", "description": _description(rng),
                     "explanationModelName": "gpt-4o-mini", "typeName": "oai_token-act-pair"}
                    for r in range(rng.randint(0, 3))]
            if index == 5:  # verbatim duplicates: ties broken by index and rank only
                expl.append({"id": f"{model}-{source}-dup", "description": "cats and dogs", "typeName": "t"})
            body = {"modelId": model, "layer": source, "index": str(index), "explanations": expl, "activations": []}
            rows.append(FeatureRow(Feature.from_json(orjson.dumps(body)), "get"))
    write_batch(m.store.db, rows)
    with m.store.db.transaction() as cur:  # rows another writer left without n_words: scored in Python
        cur.execute("UPDATE explanations SET n_words = NULL WHERE \"index\" % 11 = 3")
    return m


def _oracle(mirror, query, model_id=None, sources=None, regex=False):
    """Every explanation scored in Python by the rule, best first."""
    rows = mirror.store.rows('SELECT model_id, source, "index", rank, description FROM explanations')
    q = wire.words(query)
    terms = sorted(q)[:16]
    phrase = query.strip().lower()
    order = {s: n for n, s in reversed(list(enumerate(sources)))} if sources is not None else None
    if order is not None and not order:
        return []
    import re
    hits = []
    for r in rows:
        text = r["description"] or ""
        if model_id is not None and r["model_id"] != model_id:
            continue
        if order is not None and r["source"] not in order:
            continue
        if regex:
            if r["description"] is None or not re.search(query, text, re.IGNORECASE):
                continue
        elif not terms or not any(t in text.lower() for t in terms):
            continue
        ws = wire.words(text)
        common = len(q & ws)
        score = common / math.sqrt(len(q) * len(ws)) if common else 0.0
        if phrase and phrase in text.lower():
            score += 1.0
        if score <= 0 and not regex:
            continue
        place = order[r["source"]] if order is not None else (r["model_id"], r["source"])
        hits.append(((-score, place, r["index"], r["rank"]), (score, r["model_id"], r["source"], r["index"], r["rank"])))
    hits.sort(key=lambda h: h[0])
    return [h[1] for h in hits]


def _got(hits):
    return [(h.score, h.model_id, h.source, h.index, h.rank) for h in hits]


QUERIES = ["cats", "cat", "Cats and dogs", "days of the week", "monday week the a of", "x1 2024", "kelvin",
           "naïve caté", "the the", "cat dog days week monday code python time of a x1",  # > 8 words: list path
           " ".join(WORDS), "日本", "!!!", "zzz", "cats\ud800", "cat_dog", "cat%", "50%", "back\\slash",
           "CATS! cats", "ı"]


@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize("scope", ["all", "model", "sources", "reversed"])
def test_sql_ranking_equals_the_rule_scored_in_python(mirror, query, scope):
    kwargs = {"all": {}, "model": {"model_id": "gpt2-small"},
              "sources": {"model_id": "gpt2-small", "sources": ["0-res-jb", "1-res-jb"]},
              "reversed": {"sources": ["1-res-jb", "0-gemmascope-res-16k", "0-res-jb"]}}[scope]
    want = _oracle(mirror, query, **kwargs)
    full = mirror.store.search_page(query, **kwargs)
    assert _got(full.hits) == want and full.total == len(want)
    for offset, limit in [(0, 20), (3, 5), (len(want) - 2, 20), (len(want) + 5, 20), (0, 0)]:
        offset = max(offset, 0)
        page = mirror.store.search_page(query, offset=offset, limit=limit, **kwargs)
        assert _got(page.hits) == want[offset: offset + limit], (offset, limit)
        assert page.total == len(want)


@pytest.mark.parametrize("query", ["cats", "cat dog", "days of the week", "naïve caté"])
def test_first_features_are_each_features_best_hit_in_order(mirror, query):
    want = _oracle(mirror, query, model_id="gpt2-small", sources=["0-res-jb"])
    firsts, seen = [], set()
    for hit in want:
        if hit[3] not in seen:
            seen.add(hit[3])
            firsts.append(hit)
    for n in (1, 4, 500):
        page = mirror.store.search_page(query, model_id="gpt2-small", sources=["0-res-jb"], limit=20, features=n)
        assert _got(page.features) == firsts[:n]
        assert _got(page.hits) == want[:20] and page.total == len(want)


@pytest.mark.parametrize("pattern", ["^cat", "dog$", "c.t", "naïve|日本", "(?i)MONDAY"])
def test_regex_search_keeps_zero_scores_in_the_same_order(mirror, pattern):
    want = _oracle(mirror, pattern, regex=True)
    assert want, pattern
    got = mirror.store.search_page(pattern, regex=True)
    assert _got(got.hits) == want and got.total == len(want)
    assert _got(mirror.store.search_page(pattern, regex=True, offset=2, limit=3).hits) == want[2:5]


def test_n_words_is_stored_for_ascii_descriptions_only(mirror):
    rows = mirror.store.rows('SELECT description, n_words FROM explanations WHERE "index" % 11 <> 3')
    assert rows
    for r in rows:
        text = r["description"]
        assert r["n_words"] == (len(wire.words(text)) if text.isascii() else None), text


def test_imported_explanations_carry_their_word_count_and_rank_as_fetched_ones(tmp_path):
    """The importer's typed reader fills n_words by the same rule as the writer (so an imported
    source is ranked in SQL too), and the search over it equals the rule scored in Python."""
    from npclient.testing import EmulatorConfig, EmulatorState, SourceSpec
    from npclient.testing.emulator.exports import ExportQuirks, write_export

    state = EmulatorState(EmulatorConfig(sources=(SourceSpec("gpt2-small", "0-res-jb", d_sae=64),),
                                         n_activations=(1, 2), tokens_per_activation=(4, 6)))
    write_export(state, tmp_path / "dump", quirks=ExportQuirks(non_source_folders=False), compresslevel=1)
    m = Mirror(tmp_path / "m.duckdb", linger_s=0)
    m.import_(tmp_path / "dump")
    rows = m.store.rows("SELECT description, n_words FROM explanations")
    assert rows and any(r["n_words"] is not None for r in rows)
    assert all(r["n_words"] == (len(wire.words(r["description"])) if r["description"].isascii() else None) for r in rows)
    for query in ("the", "days of the week", rows[0]["description"]):
        want = _oracle(m, query, model_id="gpt2-small", sources=["0-res-jb"])
        got = m.store.search_page(query, model_id="gpt2-small", sources=["0-res-jb"], limit=20)
        assert _got(got.hits) == want[:20] and got.total == len(want)
