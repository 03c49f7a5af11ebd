"""Writing the all-pairs table faster without changing it (issue 15, section 5).

`store.results` binds the key columns (model, source, run, ...) as parameters of the INSERT
instead of building n-row string arrays, and builds its numeric columns from buffers (no
pandas import): rows, types, NULL for NaN and replace-on-rerun are as before.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from npclient.ids import SourceId
from npclient.store import results
from npclient.store.database import Database


_FRESH = """
import sys, numpy as np
from npclient.ids import SourceId
from npclient.store import results
from npclient.store.database import Database
db = Database(sys.argv[1], linger_s=0)
vals = np.array([[1.0, np.nan]] * 3, dtype=np.float32)
print(results.save_neighbors(db, SourceId("gpt2-small", "5-res-jb"), vals, np.array([[0, 1], [1, 0], [2, 0]])))
print("pandas" in sys.modules)
"""


def test_saving_neighbors_in_a_fresh_process_does_not_import_pandas(tmp_path):
    """pyarrow's first `pa.array` imports pandas (~0.3 s of a command's start-up); the tables
    are built from buffers instead."""
    p = subprocess.run([sys.executable, "-c", _FRESH, str(tmp_path / "m.duckdb")], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert p.stdout.split() == ["6", "False"]


def test_save_neighbors_rows_nulls_and_rerun(tmp_path):
    db = Database(tmp_path / "m.duckdb", linger_s=0)
    sid, other = SourceId("gpt2-small", "5-res-jb"), SourceId("gpt2-small", "6-res-jb")
    vals = np.array([[1.0, 0.5, np.nan], [1.0, 0.25, 0.125]], dtype=np.float32)
    idx = np.array([[0, 1, 2], [1, 0, 2]], dtype=np.int64)
    assert results.save_neighbors(db, other, vals[:1], idx[:1]) == 3
    assert results.save_neighbors(db, sid, vals * 0, idx) == 6
    assert results.save_neighbors(db, sid, vals, idx) == 6  # replaces, never duplicates
    with db.connect() as cur:
        rows = cur.execute('SELECT model_id, source, "index", rank, neighbor_index, cosine FROM neighbors '
                           'ORDER BY source, "index", rank').fetchall()
        types = cur.execute("SELECT typeof(model_id), typeof(source), typeof(\"index\"), typeof(cosine) "
                            "FROM neighbors LIMIT 1").fetchall()
    assert rows == [
        ("gpt2-small", "5-res-jb", 0, 0, 0, 1.0), ("gpt2-small", "5-res-jb", 0, 1, 1, 0.5),
        ("gpt2-small", "5-res-jb", 0, 2, 2, None), ("gpt2-small", "5-res-jb", 1, 0, 1, 1.0),
        ("gpt2-small", "5-res-jb", 1, 1, 0, 0.25), ("gpt2-small", "5-res-jb", 1, 2, 2, 0.125),
        ("gpt2-small", "6-res-jb", 0, 0, 0, 1.0), ("gpt2-small", "6-res-jb", 0, 1, 1, 0.5),
        ("gpt2-small", "6-res-jb", 0, 2, 2, None),
    ]
    assert types == [("VARCHAR", "VARCHAR", "INTEGER", "DOUBLE")]


def test_other_results_keep_their_key_columns(tmp_path):
    db = Database(tmp_path / "m.duckdb", linger_s=0)
    sid, wide = SourceId("gpt2-small", "5-res-jb"), SourceId("gpt2-small", "5-res-wide")
    results.save_matches(db, sid, wide, np.array([[0.9]], dtype=np.float32), np.array([[4]]))
    results.save_coordinates(db, sid, "umap", np.array([2, 3]), np.array([[0.5, np.nan], [1.0, 2.0]]))
    results.save_clusters(db, sid, "days", np.array([5, 6, 7]), np.array([0, 1, 0]), [2, 0, 1])
    results.save_head_features(db, sid, "W_K", np.array([0.001, 0.5]), np.array([True, False]))
    with db.connect() as cur:
        assert cur.execute("SELECT against, match_index, cosine FROM matches").fetchall() == [
            ("gpt2-small/5-res-wide", 4, pytest.approx(0.9))]
        assert cur.execute('SELECT method, "index", x, y FROM coordinates ORDER BY 2').fetchall() == [
            ("umap", 2, 0.5, None), ("umap", 3, 1.0, 2.0)]
        assert cur.execute('SELECT run, "index", label, leaf_position FROM clusters ORDER BY 2').fetchall() == [
            ("days", 5, 0, 1), ("days", 6, 1, 2), ("days", 7, 0, 0)]
        assert cur.execute('SELECT matrix, "index", invisible, suppression FROM head_features ORDER BY 2').fetchall() == [
            ("W_K", 0, True, None), ("W_K", 1, False, None)]
        keys = cur.execute("SELECT DISTINCT model_id, source FROM (SELECT model_id, source FROM matches UNION ALL "
                           "SELECT model_id, source FROM coordinates UNION ALL SELECT model_id, source FROM clusters "
                           "UNION ALL SELECT model_id, source FROM head_features)").fetchall()
    assert keys == [("gpt2-small", "5-res-jb")]
