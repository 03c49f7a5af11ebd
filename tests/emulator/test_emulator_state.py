"""EmulatorState: the truth the routes serve (shape, determinism, planted data, catalog)."""

from __future__ import annotations

import json
import time
import unicodedata
from functools import lru_cache

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_

from npclient.testing import EmulatorConfig, EmulatorState, SourceSpec
from npclient.testing.emulator.ratelimit import RateLimiter
from npclient.testing.emulator.state import cosine_topk
from npclient.testing.emulator.config import RateLimitConfig

from helpers import brute_topk

M, S = "gpt2-small", "0-res-jb"

ROW_FIELDS = {
    "modelId", "layer", "index", "sourceSetName", "creatorId", "createdAt", "maxActApprox", "frac_nonzero",
    "hasVector", "vector", "vectorLabel", "vectorDefaultSteerStrength", "hookName", "umap_x", "umap_y",
    "umap_log_feature_sparsity", "umap_cluster", "topkCosSimIndices", "topkCosSimValues", "pos_str", "neg_str",
    "pos_values", "neg_values", "freq_hist_data_bar_heights", "freq_hist_data_bar_values",
    "logits_hist_data_bar_heights", "logits_hist_data_bar_values", "decoder_weights_dist",
    "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1", "correlated_neurons_indices",
    "correlated_neurons_pearson", "correlated_neurons_l1", "correlated_features_indices",
    "correlated_features_pearson", "correlated_features_l1",
}
RELATIONS = {"model", "source", "sourceSet", "creator", "lists", "comments", "activations", "explanations"}
ACT_FIELDS = {
    "id", "modelId", "layer", "index", "tokens", "values", "maxValue", "maxValueTokenIndex", "minValue",
    "dataIndex", "dataSource", "dfaValues", "dfaTargetIndex", "dfaMaxValue", "lossValues", "logitContributions",
    "binMin", "binMax", "binContains", "qualifyingTokenIndex", "creatorId", "createdAt",
}


@lru_cache(maxsize=1)
def state() -> EmulatorState:
    return EmulatorState()


def test_same_seed_same_bytes_other_seed_differs() -> None:
    a, b = EmulatorState(EmulatorConfig(seed=7)), EmulatorState(EmulatorConfig(seed=7))
    c = EmulatorState(EmulatorConfig(seed=8))
    for i in (0, 1, 17, 1023):
        assert a.feature_bytes(M, S, i) == b.feature_bytes(M, S, i)
        assert a.feature_bytes(M, S, i) != c.feature_bytes(M, S, i)
    assert a.models_list() == b.models_list()
    # cached bytes are the bytes: asking again gives the same object content
    assert a.feature_bytes(M, S, 0) == a.feature_bytes(M, S, 0)


def test_feature_shape() -> None:
    st = state()
    f = st.feature(M, S, 3)
    assert f is not None
    assert ROW_FIELDS | RELATIONS <= set(f)
    assert f["index"] == "3" and f["modelId"] == M and f["layer"] == S and f["sourceSetName"] == "res-jb"
    assert f["correlated_features_indices"] == [] and f["lists"] == [] and f["comments"] == []
    cfg = f["source"]["saelensConfig"]
    assert cfg["d_sae"] == 1024 and cfg["d_in"] == 64 and cfg["hook_name"] == "blocks.0.hook_resid_pre"
    assert cfg["metadata"]["neuronpedia_id"] == f"{M}/{S}"
    assert f["source"]["saelensRelease"] == "gpt2-small-res-jb"
    assert f["source"]["saelensSaeId"] == "blocks.0.hook_resid_pre"
    assert f["sourceSet"]["name"] == "res-jb" and f["model"]["id"] == M
    acts = f["activations"]
    assert 20 <= len(acts) <= 24
    assert [a["maxValue"] for a in acts] == sorted((a["maxValue"] for a in acts), reverse=True)
    for a in acts:
        assert ACT_FIELDS <= set(a)
        assert 64 <= len(a["tokens"]) <= 128 and len(a["tokens"]) == len(a["values"])
        assert all(isinstance(v, float) for v in a["values"])
        assert a["values"][a["maxValueTokenIndex"]] == a["maxValue"] == max(a["values"])
        assert a["minValue"] == min(a["values"])
        assert a["index"] == "3" and isinstance(a["dataIndex"], str)
    assert len(f["pos_str"]) == len(f["pos_values"]) == 10
    for e in f["explanations"]:
        assert set(e) == {"id", "description", "explanationModelName", "typeName", "scores", "triggeredByUser"}
        assert e["scores"] and "value" in e["scores"][0]
    values = [e["scores"][0]["value"] for e in f["explanations"]]
    assert values == sorted(values, reverse=True)


def test_nulls_and_dead_features_occur() -> None:
    st = state()
    feats = [st.feature(M, S, i) for i in range(400)]
    assert any(f["umap_x"] is None for f in feats) and any(f["umap_x"] is not None for f in feats)
    assert any(f["maxActApprox"] is None for f in feats)
    assert any(None in f["freq_hist_data_bar_values"] for f in feats)
    dead = [f for f in feats if f["maxActApprox"] == 0]
    assert dead and all(f["activations"] == [] and f["explanations"] == [] for f in dead)
    n_expl = {len(f["explanations"]) for f in feats}
    assert n_expl == {0, 1, 2}


def test_unicode_and_control_characters_round_trip() -> None:
    st = state()
    seen: set[str] = set()
    for i in range(60):
        body = st.feature_bytes(M, S, i)
        assert body is not None
        parsed = orjson.loads(body)
        assert json.loads(body.decode("utf-8")) == parsed  # stdlib agrees with orjson
        assert orjson.dumps(parsed) == body
        for act in parsed["activations"]:
            for tok in act["tokens"]:
                for ch in tok:
                    if ch in "\x00\t\x1b\u2028":
                        seen.add(repr(ch))
                    elif unicodedata.combining(ch):
                        seen.add("combining")
                    elif "\u4e00" <= ch <= "\u9fff":
                        seen.add("cjk")
                    elif ord(ch) >= 0x1F300:
                        seen.add("emoji")
    assert {"'\\x00'", "'\\t'", "'\\x1b'", "'\\u2028'", "combining", "cjk", "emoji"} <= seen
    assert b"\\u0000" in b"".join(st.feature_bytes(M, S, i) or b"" for i in range(60))



def test_topk_cossim_matches_independent_brute_force() -> None:
    st = state()
    syn = st.decoder(M, S)
    ref_i, ref_v = brute_topk(syn.weights, 25)
    zero = syn.zero_rows[0]
    all_i, all_v = st.topk(M, S)  # lazily built blocks == one blocked pass
    one_i, one_v = cosine_topk(syn.weights, 25, block=300)
    assert np.array_equal(all_i, one_i) and np.allclose(all_v, one_v, equal_nan=True, atol=1e-6)
    for i in list(range(0, 1024, 7)) + syn.planted:
        f = st.feature(M, S, i)
        assert f is not None
        got_i, got_v = f["topkCosSimIndices"], f["topkCosSimValues"]
        assert len(got_i) == 25 and got_i[0] == i
        if i == zero:
            assert got_v[0] is None and all(v is None for v in got_v)
            assert got_i == [zero] + [j for j in range(1024) if j != zero][:24]
            continue
        assert got_v[0] == 1.0
        assert zero not in got_i  # undefined cosine ranks last
        np.testing.assert_allclose(got_v[1:], ref_v[i, 1:], atol=2e-6)
        mismatch = [p for p in range(25) if got_i[p] != ref_i[i, p]]
        # only near-ties may swap
        assert all(abs(ref_v[i, p] - ref_v[i, p - 1]) < 1e-5 or abs(ref_v[i, p] - ref_v[i, min(p + 1, 24)]) < 1e-5
                   for p in mismatch)


def test_planted_neighbours_show_up() -> None:
    st = state()
    syn = st.decoder(M, S)  # the planted SAE of npclient.testing.saes
    assert syn.circle == syn.days and len(syn.days) == 7 and len(syn.months) == 12

    def descendants(node: int) -> list[int]:
        out = []
        for c in syn.tree.get(node, []):
            out += [c] + descendants(c)
        return out

    for parent, children in syn.tree.items():  # a parent's children are among its nearest subtree
        f = st.feature(M, S, parent)
        assert set(children) <= set(f["topkCosSimIndices"][1 : 1 + len(descendants(parent))])
        for child in children:  # and the parent is among the child's nearest relatives
            near = st.feature(M, S, child)["topkCosSimIndices"][1 : 2 + len(syn.tree.get(child, []))]
            assert parent in near
    for ring in (syn.days, syn.months):  # both neighbours on each circle come right after self
        n = len(ring)
        for k, i in enumerate(ring):
            assert set(st.feature(M, S, i)["topkCosSimIndices"][1:3]) == {ring[(k - 1) % n], ring[(k + 1) % n]}
    # each labelled feature's first explanation is its label, in GET order and storage order
    from npclient.testing.saes import DAYS, MONTHS

    assert [syn.labels[i] for i in syn.days] == list(DAYS) and [syn.labels[i] for i in syn.months] == list(MONTHS)
    for i, label in syn.labels.items():
        assert st.feature(M, S, i)["explanations"][0]["description"] == label
        assert st.explanations(M, S, i)[0]["description"] == label
    assert [st.feature(M, S, i)["explanations"][0]["description"] for i in syn.days] == list(DAYS)


def test_holes_are_stable_and_spare_planted() -> None:
    cfg = EmulatorConfig(hole_rate=0.1)
    a, b = EmulatorState(cfg), EmulatorState(cfg)
    holes = [i for i in range(1024) if a.feature_bytes(M, S, i) is None]
    assert 50 < len(holes) < 160
    assert holes == [i for i in range(1024) if a.is_hole(M, S, i)]
    assert holes == [i for i in range(1024) if b.is_hole(M, S, i)]
    assert not set(holes) & set(a.decoder(M, S).planted)
    assert a.feature_count(M, S) == 1024 - len(holes)
    assert a.feature(M, S, 1024) is None and a.feature(M, S, -1) is None
    assert a.feature("nope", S, 0) is None


def test_post_item_trimming() -> None:
    st = state()
    full = st.feature(M, S, 5)
    item = st.features_post_item(M, S, 5)
    assert item is not None and full is not None
    assert not {"model", "source", "sourceSet", "creator", "lists", "comments"} & set(item)
    assert all(set(e) == {"description", "explanationModelName", "typeName"} for e in item["explanations"])
    assert sorted(e["description"] for e in item["explanations"]) == sorted(
        e["description"] for e in full["explanations"])
    # no maxActsToReturn: all activations, storage (id) order; with it: the top N by maxValue
    assert [a["id"] for a in item["activations"]] == sorted(a["id"] for a in full["activations"])
    top3 = st.features_post_item(M, S, 5, max_acts=3)
    assert top3 is not None and top3["activations"] == full["activations"][:3]
    for key in ROW_FIELDS:
        assert item[key] == full[key]


def test_features_post_order_and_missing() -> None:
    st = EmulatorState(EmulatorConfig(hole_rate=0.2))
    hole = next(i for i in range(1024) if st.is_hole(M, S, i))
    req = [(M, S, 9), (M, S, hole), ("nope", S, 3), (M, S, 2), (M, S, 9), (M, "1-res-jb", 2)]
    out = st.features_post(req)
    # the hole and the unknown model vanish, duplicates collapse, order follows the index
    assert [(r["layer"], r["index"]) for r in out if r["layer"] == S] == [(S, "9"), (S, "2")]
    assert {(r["layer"], r["index"]) for r in out} == {(S, "9"), (S, "2"), ("1-res-jb", "2")}


def test_features_offset_pages_exactly_the_live_features() -> None:
    st = state()
    live = st.offset_indices(M, S)
    got: list[int] = []
    offset = 0
    while True:
        page = st.features_offset(M, S, offset)
        if not page:
            break
        assert len(page) <= 25
        idx = [r["index"] for r in page]
        assert idx == sorted(idx)  # text order inside a page
        assert all(r["maxActApprox"] and r["maxActApprox"] > 0 for r in page)
        assert all({"sourceSet", "model", "activations", "explanations"} <= set(r) for r in page)
        got.extend(sorted(int(i) for i in idx))
        offset += 25
    assert got == live and live == sorted(live)
    assert len(live) < 1024


def test_catalog() -> None:
    st = state()
    models = st.models_list()
    assert [m["id"] for m in models] == ["gpt2-small", "gemma-2-2b"]
    gpt2 = models[0]
    sets = {s["name"]: s for s in gpt2["sourceSets"]}
    assert [s["id"] for s in sets["res-jb"]["sources"]] == ["0-res-jb", "1-res-jb"]
    assert st.source_set("gemma-2-2b", "gemmascope-res-16k")["sources"][0]["id"] == "12-gemmascope-res-16k"
    assert st.source_set(M, "nope") is None
    assert st.feature_count("gemma-2-2b", "12-gemmascope-res-16k") == 512
    assert SourceSpec("m", "5-gemmascope-res-16k__l0-143", 64).set_name == "gemmascope-res-16k"


def test_search_finds_planted_descriptions_and_pages() -> None:
    st = state()
    circle = set(st.decoder(M, S).circle)
    r = st.search(M, [S], "Monday")
    assert r["results"] and int(r["results"][0]["index"]) in circle
    assert r["results"][0]["description"] == "Monday"
    days = st.search(M, [S, "1-res-jb"], "days of the week")
    top = {(x["layer"], int(x["index"])) for x in days["results"][:14]}
    assert {(S, i) for i in circle} <= top and {x[0] for x in top} == {S, "1-res-jb"}
    # paging through a broad query
    seen, offset = [], 0
    while True:
        page = st.search(M, [S], "references to text", offset)
        assert len(page["results"]) <= 20
        seen.extend((x["index"], x["description"]) for x in page["results"])
        if not page["hasMore"]:
            break
        assert page["nextOffset"] == offset + 20
        offset = page["nextOffset"]
    assert len(seen) == len(set(seen)) > 40
    assert st.search(M, ["99-nope"], "Monday")["results"] == []


def test_vectors() -> None:
    st = state()
    vs = "6-res-vectors"
    idx = st.vector_indices(M, vs)
    assert len(idx) == 4 and all(90_000_000 <= i < 180_000_000 for i in idx)
    v = st.vector(M, vs, idx[0])
    assert v is not None and v["index"] == str(idx[0]) and len(v["vector"]) == 64 and v["vectorLabel"]
    f = st.feature(M, vs, idx[0])
    assert f is not None and f["hasVector"] and f["vector"] == v["vector"]
    assert st.vector(M, S, 0) is None and st.vector(M, vs, 1) is None
    assert st.offset_indices(M, vs) == []


def test_generation_is_fast() -> None:
    st = EmulatorState(EmulatorConfig(seed=99))
    st.feature_bytes(M, S, 0)  # builds the source (decoder, top-k)
    t0 = time.perf_counter()
    for i in range(1, 1001):
        st.feature_bytes(M, S, i)
    per = (time.perf_counter() - t0) / 1000
    assert per < 5e-3, f"{per * 1e3:.2f} ms per feature"


def test_rate_limiter_upstash_semantics() -> None:
    now = [1000.0]
    rl = RateLimiter(RateLimitConfig(api_limit=5, window_s=10.0, endpoint_limits={"/api/explanation/search": 2}),
                     clock=lambda: now[0])
    got = [rl.hit("a", "/api/explanation/search") for _ in range(3)]
    assert [d.allowed for d in got] == [True, True, False]
    assert [d.remaining for d in got[:2]] == [1, 0]  # the last charged bucket speaks
    assert got[2].endpoint == "/api/explanation/search" and got[2].limit == 2
    # the refused search still cost an /api token (charged before the search bucket refused)
    left = [rl.hit("a", "/api/feature/x/y/1") for _ in range(3)]
    assert [d.allowed for d in left] == [True, True, False]
    assert left[2].endpoint == "/api" and left[1].remaining == 0
    assert rl.hit("b", "/api/feature/x/y/1").allowed  # per IP
    now[0] += 10.0 * 2  # two windows later everything is forgotten
    assert rl.hit("a", "/api/feature/x/y/1").remaining == 4


def test_rate_limiter_log_is_exact() -> None:
    now = [0.0]
    rl = RateLimiter(RateLimitConfig(api_limit=3, window_s=1.0, algorithm="log"), clock=lambda: now[0])
    for t in (0.0, 0.2, 0.4):
        now[0] = t
        assert rl.hit("a", "/api/x").allowed
    now[0] = 0.9
    assert not rl.hit("a", "/api/x").allowed
    now[0] = 1.01
    assert rl.hit("a", "/api/x").allowed  # the 0.0 request slid out
    assert not rl.hit("a", "/api/x").allowed


def test_reset_clears_traffic_only() -> None:
    st = EmulatorState(EmulatorConfig(rate_limit=RateLimitConfig(api_limit=1)))
    assert st.runtime.limiter is not None
    assert st.runtime.limiter.hit("x", "/api/a").allowed
    assert not st.runtime.limiter.hit("x", "/api/a").allowed
    st.reset()
    assert st.runtime.limiter.hit("x", "/api/a").allowed


@pytest.mark.parametrize("bad", [{"rate": 2.0}, {"kinds": ("nope",)}])
def test_fault_config_validation(bad: dict) -> None:
    from npclient.testing import FaultConfig

    with pytest.raises(ValueError):
        FaultConfig(**bad)


@settings(max_examples=25, deadline=None)
@given(seed=st_.integers(0, 2**31), index=st_.integers(0, 511))
def test_payload_invariants_any_seed(seed: int, index: int) -> None:
    cfg = EmulatorConfig(seed=seed, sources=(SourceSpec("gemma-2-2b", "3-gemmascope-res-16k", 512),),
                         n_activations=(1, 3), tokens_per_activation=(1, 8))
    st = EmulatorState(cfg)
    f = st.feature("gemma-2-2b", "3-gemmascope-res-16k", index)
    assert f is not None and f["index"] == str(index)
    assert f["topkCosSimIndices"][0] == index and len(f["topkCosSimIndices"]) == 25
    for a in f["activations"]:
        assert 1 <= len(a["tokens"]) == len(a["values"]) <= 8
        assert a["values"][a["maxValueTokenIndex"]] == a["maxValue"] == max(a["values"])
    assert EmulatorState(cfg).feature_bytes("gemma-2-2b", "3-gemmascope-res-16k", index) == orjson.dumps(f)


def test_small_source_falls_back_to_the_foundation_decoder() -> None:
    """A source too small for `saes.plant` serves `make_synthetic`'s circle and families, as before."""
    from npclient.testing import SyntheticDecoder, make_synthetic
    from npclient.testing.saes import min_d_sae

    small = SourceSpec("gpt2-small", "3-res-jb", d_sae=min_d_sae() - 1)
    st = EmulatorState(EmulatorConfig(sources=(small,)))
    syn = st.decoder("gpt2-small", "3-res-jb")
    assert isinstance(syn, SyntheticDecoder)
    assert np.array_equal(syn.weights, make_synthetic(small.d_sae, 64, st.decoder_seed("gpt2-small", "3-res-jb")).weights)
    firsts = [st.explanations("gpt2-small", "3-res-jb", i) for i in syn.circle]
    assert {"Monday", "Sunday"} <= {e["description"] for ex in firsts for e in ex}
    for (parent, children), topic in zip(syn.families.items(), ("sports", "colors", "animals")):
        assert [e["description"] for e in st.explanations("gpt2-small", "3-res-jb", parent)] == [topic]
        assert all(st.feature("gpt2-small", "3-res-jb", c) is not None for c in children)
