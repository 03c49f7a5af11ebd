import os
import time

import pytest

from npclient import Feature, NotAMirrorError, StoreError
from npclient.mirror import Mirror
from npclient.store import FeatureRow, write_batch
from npclient.store.database import Database
from npclient.testing import EmulatorState

from helpers import small_config


@pytest.fixture(scope="module")
def features():
    state = EmulatorState(small_config(d_sae=300))
    return state, [Feature.from_raw(state.feature("gpt2-small", "0-res-jb", i)) for i in range(300)]


def test_write_is_idempotent_and_lossless(tmp_path, features):
    state, feats = features
    mirror = Mirror(tmp_path / "m.duckdb")
    write_batch(mirror.db, [FeatureRow(f, "get") for f in feats[:200]])
    write_batch(mirror.db, [FeatureRow(f, "get") for f in feats[100:]])  # overlaps: replaces, never duplicates
    counts = mirror.sql("SELECT count(*) AS n, count(DISTINCT feature_key) AS k FROM features").to_pylist()[0]
    assert counts == {"n": 300, "k": 300}
    acts = mirror.sql("SELECT count(*) AS n FROM activations").to_pylist()[0]["n"]
    assert acts == sum(len(f.activations) for f in feats)
    for f in feats[::37]:
        back = mirror.feature(f.id)
        assert back is not None and back.raw == f.raw == state.feature(f.model_id, f.layer, f.index)
        assert back == f
    assert mirror.feature("gpt2-small/0-res-jb/999") is None


def test_features_arrow_and_typed_columns(tmp_path, features):
    _, feats = features
    mirror = Mirror(tmp_path / "m.duckdb")
    write_batch(mirror.db, [FeatureRow(f, "post") for f in feats[:50]])
    table = mirror.features("gpt2-small/0-res-jb")
    assert table.num_rows == 50
    assert table.column("index").to_pylist() == list(range(50))
    row = table.slice(7, 1).to_pylist()[0]
    assert row["topk_cos_sim_indices"] == list(feats[7].topk_cos_sim_indices)
    assert row["origin"] == "post"
    tokens = mirror.sql(
        'SELECT tokens FROM activations WHERE feature_key = ? ORDER BY rank LIMIT 1', ["gpt2-small/0-res-jb/7"]
    ).to_pylist()
    if feats[7].activations:
        assert tokens[0]["tokens"] == list(feats[7].activations[0].tokens)  # unicode and control characters intact


def test_not_a_mirror_is_left_untouched(tmp_path):
    text_file = tmp_path / "notes.duckdb"
    text_file.write_bytes(b"hello, this is not a database\n" * 10)
    before = text_file.read_bytes()
    with pytest.raises(NotAMirrorError):
        Mirror(text_file).sql("SELECT 1")
    assert text_file.read_bytes() == before

    import duckdb

    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE payroll (name VARCHAR, salary INTEGER)")
    con.execute("INSERT INTO payroll VALUES ('a', 1)")
    con.close()
    mtime, size = os.path.getmtime(other), os.path.getsize(other)
    with pytest.raises(NotAMirrorError):
        Mirror(other).sql("SELECT 1")
    assert (os.path.getmtime(other), os.path.getsize(other)) == (mtime, size)


def test_read_only_needs_an_existing_mirror(tmp_path):
    with pytest.raises(StoreError):
        Mirror(tmp_path / "absent.duckdb", read_only=True).status()
    assert not (tmp_path / "absent.duckdb").exists()


def test_read_only_mirror_refuses_writes(tmp_path, features):
    _, feats = features
    path = tmp_path / "m.duckdb"
    write_batch(Database(path), [FeatureRow(feats[0], "get")])
    ro = Mirror(path, read_only=True)
    with pytest.raises(Exception):
        ro.sql("DELETE FROM features")
    assert ro.sql("SELECT count(*) AS n FROM features").to_pylist()[0]["n"] == 1


def test_file_is_released_between_uses(tmp_path, features):
    _, feats = features
    path = tmp_path / "m.duckdb"
    db = Database(path, linger_s=0.2)
    write_batch(db, [FeatureRow(feats[0], "get")])
    assert db.is_open  # lingers for the next batch ...
    time.sleep(0.5)
    assert not db.is_open  # ... then lets other processes in
