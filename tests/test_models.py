import copy
import json
import math

from hypothesis import example, given, strategies as st

from npclient import Feature
from npclient.models import SearchPage, SourceInfo

BASE = {
    "modelId": "gpt2-small",
    "layer": "0-res-jb",
    "index": "12",
    "maxActApprox": None,
    "frac_nonzero": 0.01,
    "topkCosSimIndices": [12, 3, 7],
    "topkCosSimValues": [1.0, 0.5, None],
    "activations": [{"tokens": ["a", "\x00b", "🙂"], "values": [0.0, 1.5, None], "maxValue": 1.5}],
    "explanations": [{"description": "the letter b", "scores": [{"value": None, "brandNewField": 1}]}],
}


def test_index_normalised_and_raw_kept():
    f = Feature.from_raw(BASE)
    assert f.index == 12 and str(f.id) == "gpt2-small/0-res-jb/12"
    assert f.raw == BASE and f.raw["index"] == "12"
    assert f.max_act_approx is None
    assert f.activations[0].values[2] is None
    assert f.explanations[0].scores[0].model_extra == {"brandNewField": 1}


def test_unknown_fields_kept_everywhere():
    raw = copy.deepcopy(BASE)
    raw["someFutureField"] = {"x": [1, 2]}
    raw["activations"][0]["zIndices"] = [1]
    f = Feature.from_raw(raw)
    assert f.model_extra["someFutureField"] == {"x": [1, 2]}
    assert f.activations[0].model_extra["zIndices"] == [1]
    dumped = f.model_dump(by_alias=True, exclude_unset=True)
    assert dumped["someFutureField"] == {"x": [1, 2]}


def test_nulls_for_lists_become_empty():
    raw = dict(BASE, activations=None, explanations=None, pos_str=None)
    f = Feature.from_raw(raw)
    assert f.activations == [] and f.explanations == [] and f.pos_str == ()


def test_source_d_sae_from_saelens_config():
    assert SourceInfo.model_validate({"id": "0-res-jb", "saelensConfig": {"d_sae": 24576}}).d_sae == 24576
    assert SourceInfo.model_validate({"id": "0-res-jb", "saelensConfig": None}).d_sae is None


floats = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), floats, st.text(max_size=10))
json_values = st.recursive(json_scalars, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=5), c, max_size=3)), max_leaves=10)


@given(
    index=st.one_of(st.integers(0, 10**9), st.integers(0, 10**9).map(str)),
    extra=st.dictionaries(st.text(min_size=1, max_size=12).filter(lambda k: k not in BASE and not k.startswith("_")), json_values, max_size=4),
    floats_=st.lists(floats, max_size=5),
    tokens=st.lists(st.text(max_size=5), max_size=5),
)
@example(index=0, extra={"creator_id": []}, floats_=[], tokens=[])  # a python field name is not an alias
def test_odd_payloads_parse_and_round_trip(index, extra, floats_, tokens):
    raw = dict(BASE, index=index, pos_values=floats_, **extra)
    raw["activations"] = [{"tokens": tokens, "values": floats_[: len(tokens)]}]
    # What arrives over the wire is JSON: make sure the raw object survives a JSON round trip.
    raw = json.loads(json.dumps(raw))
    f = Feature.from_raw(raw)
    assert f.index == int(index)
    assert f.raw == raw
    assert f.pos_values == tuple(floats_)
    assert f.activations[0].tokens == tuple(tokens)
    for key, value in extra.items():
        alias_hit = any((fi.alias or name) == key for name, fi in Feature.model_fields.items())
        if not alias_hit:
            assert f.model_extra[key] == value


def test_search_page():
    page = SearchPage.model_validate(
        {"results": [{"modelId": "m", "layer": "0-x", "index": "3", "description": "d", "cosine_similarity": 0.5}],
         "resultsCount": 1, "hasMore": False, "nextOffset": 20}
    )
    assert page.results[0].feature_id.index == 3 and not page.has_more
    assert not math.isnan(page.results[0].cosine_similarity)


def test_from_json_keeps_the_bytes_and_raw_is_a_fresh_copy():
    body = json.dumps(BASE, ensure_ascii=False).encode()
    f = Feature.from_json(body)
    assert f.raw_json == body and f.raw == BASE
    f.raw["index"] = "999"  # a caller editing its copy changes nothing stored
    assert f.raw["index"] == "12" and f.model_dump() == Feature.from_raw(BASE).model_dump()


def test_scalar_arrays_are_tuples_the_garbage_collector_stops_walking():
    # Thousands of features held in memory cost the cyclic GC nothing per token or value:
    # CPython untracks a tuple of strings/floats at its first collection (lists stay tracked).
    import gc

    f = Feature.from_json(json.dumps(BASE).encode())
    act = f.activations[0]
    assert isinstance(act.tokens, tuple) and isinstance(act.values, tuple) and isinstance(f.topk_cos_sim_indices, tuple)
    gc.collect()
    assert not gc.is_tracked(act.tokens) and not gc.is_tracked(act.values)
