import pytest
from hypothesis import given, strategies as st

from npclient import FeatureId, InvalidIdError, SourceId, SourceSetId
from npclient.ids import parse_target

SAFE = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", min_size=1, max_size=40)
part = SAFE.filter(lambda s: s[0].isalnum() and ".." not in s)


@given(model=part, source=part, index=st.integers(min_value=0, max_value=10**12))
def test_feature_id_round_trips(model, source, index):
    fid = FeatureId(model, source, index)
    assert FeatureId.parse(str(fid)) == fid
    assert FeatureId.parse(f"{model}/{source}/{index}").index == index
    assert FeatureId(model, source, str(index)) == fid  # the API sends index as a string


@given(text=st.text(max_size=60))
def test_parse_never_crashes_unexpectedly(text):
    try:
        fid = FeatureId.parse(text)
    except InvalidIdError as exc:
        assert str(exc)  # a message naming the bad part
        assert "\n" not in str(exc)
    else:
        assert str(fid) == text.strip()
        assert fid.index >= 0


@pytest.mark.parametrize(
    "text, names",
    [
        ("gpt2-small/0-res-jb", "is not"),
        ("gpt2-small//12", "source is empty"),
        ("/0-res-jb/1", "model id is empty"),
        ("gpt2-small/0-res-jb/-1", "index"),
        ("gpt2-small/0-res-jb/1.5", "index"),
        ("gpt2-small/0-res-jb/abc", "index"),
        ("gpt2-small/../1", "'..'"),
        ("gpt2-small/0-res..jb/1", "'..'"),
        ("gpt2 small/0-res-jb/1", "model id"),
        ("gpt2-small/0-res-jb?x=1/1", "source"),
        ("gpt2-small/0-res-jb/1/2", "is not"),
        ("gpt2-small/.hidden/1", "source"),
    ],
)
def test_bad_ids_name_the_bad_part(text, names):
    with pytest.raises(InvalidIdError) as err:
        FeatureId.parse(text)
    assert names in str(err.value)


def test_index_rejects_bool_and_negative():
    with pytest.raises(InvalidIdError):
        FeatureId("gpt2-small", "0-res-jb", True)
    with pytest.raises(InvalidIdError):
        FeatureId("gpt2-small", "0-res-jb", -3)


def test_source_set_name_follows_neuronpedia_rule():
    assert SourceId.parse("gpt2-small/0-res-jb").set_name == "res-jb"
    assert SourceId.parse("gemma-2-2b/5-gemmascope-res-16k__l0-143").set_name == "gemmascope-res-16k"
    assert SourceId.parse("gpt2-small/8-res_fs768-jb").set_name == "res_fs768-jb"
    assert SourceId.parse("gpt2-small/8-res_fs768-jb").layer == "8"


def test_parse_target_tells_sources_from_sets():
    assert parse_target("gpt2-small/0-res-jb") == SourceId("gpt2-small", "0-res-jb")
    assert parse_target("gpt2-small/res-jb") == SourceSetId("gpt2-small", "res-jb")
    with pytest.raises(InvalidIdError):
        parse_target("gpt2-small")
