"""Importing bulk exports: the emulator's own export against its API, quirks, corrupt batches, kill -9."""

import asyncio
import gzip
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers import table_contents
from npclient import NeuronpediaClient, SourceId
from npclient.exports.importer import import_tree
from npclient.mirror import Mirror
from npclient.store.database import Database
from npclient.sync import SyncOptions, run_sync
from npclient.testing import EmulatorConfig, EmulatorState, SourceSpec
from npclient.testing.emulator.exports import ExportQuirks, write_export

SRC = SourceId("gpt2-small", "3-res-jb")
QUIRKS = ExportQuirks(
    batch_size=100,
    index_as_int_fraction=0.3,
    embedding_style="mixed",
    explanations_folder="explanations-gpt-4o-mini",
    extra_fields=True,
    non_source_folders=True,
)


def config(d_sae=350):
    return EmulatorConfig(sources=(SourceSpec(SRC.model_id, SRC.source, d_sae=d_sae),), hole_rate=0.03, seed=5)


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    root = tmp_path_factory.mktemp("dump")
    state = EmulatorState(config())
    write_export(state, root, quirks=QUIRKS)
    return state, root


def test_import_keys_records_and_skips_non_sources(dump, tmp_path):
    state, root = dump
    mirror = Mirror(tmp_path / "m.duckdb")
    [report] = import_tree(mirror.db, root)
    assert report.ok and report.source == SRC
    live = [i for i in range(350) if not state.is_hole(SRC.model_id, SRC.source, i)]
    assert report.rows["features"] == len(live)
    assert report.imported["features"] == 4  # text-order batches of 100
    got = mirror.sql('SELECT "index" FROM features ORDER BY 1').column("index").to_pylist()
    assert got == live  # index as str or int, text-order batches: keyed right
    status = mirror.status()
    assert [r["source"] for r in status] == [str(SRC)]  # headvis/ and jlens/ were skipped
    assert status[0]["total"] == 350  # from source.jsonl's saelensConfig
    emb = mirror.sql("SELECT count(*) FILTER (WHERE embedding IS NOT NULL) AS n, count(*) AS total FROM explanations").to_pylist()[0]
    assert 0 < emb["n"] < emb["total"]  # list and string embeddings parsed; absent ones null
    assert mirror.sql("SELECT DISTINCT len(embedding) AS d FROM explanations WHERE embedding IS NOT NULL").to_pylist() == [{"d": 256}]


def test_export_agrees_with_the_api_on_every_typed_column(dump, tmp_path, np_emulator_factory):
    state, root = dump
    imported = Mirror(tmp_path / "export.duckdb")
    import_tree(imported.db, root)
    server = np_emulator_factory(config())
    fetched = Mirror(tmp_path / "api.duckdb")

    async def go():
        async with NeuronpediaClient(server.url, budget=None) as client:
            await run_sync([SRC], db=fetched.db, client=client, options=SyncOptions(method="get"))

    asyncio.run(go())
    feature_cols = ("feature_key", "max_act_approx", "frac_nonzero", "hook_name", "has_vector", "umap_x", "umap_y",
                    "umap_cluster", "umap_log_feature_sparsity", "topk_cos_sim_indices", "topk_cos_sim_values",
                    "pos_str", "pos_values", "neg_str", "neg_values", "n_activations", "n_explanations")
    act_cols = ("feature_key", "rank", "activation_id", "tokens", "values", "max_value", "max_value_token_index",
                "min_value", "data_source", "dfa_values", "dfa_max_value", "dfa_target_index", "bin_min", "bin_max", "bin_contains")
    for table, cols, order in (("features", feature_cols, "feature_key"), ("activations", act_cols, "feature_key, rank")):
        q = f"SELECT {', '.join(chr(34) + c + chr(34) for c in cols)} FROM {table} ORDER BY {order}"
        a, b = imported.sql(q).to_pylist(), fetched.sql(q).to_pylist()
        assert len(a) == len(b) > 0
        assert a == b, table
    q = "SELECT feature_key, description, explanation_model_name, type_name FROM explanations ORDER BY 1, 2"
    assert imported.sql(q).to_pylist() == fetched.sql(q).to_pylist()
    # An imported feature reads back like a fetched one, activations and all.
    key = "gpt2-small/3-res-jb/17"
    x, y = imported.feature(key), fetched.feature(key)
    assert x.activations == y.activations and x.topk_cos_sim_indices == y.topk_cos_sim_indices


def test_corrupt_batch_commits_nothing_and_is_retried(dump, tmp_path):
    state, root = dump
    copy = tmp_path / "dump"
    shutil.copytree(root, copy)
    victim = copy / "v1" / SRC.model_id / SRC.source / "activations" / "batch-1.jsonl.gz"
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])  # truncated gzip
    mirror = Mirror(tmp_path / "m.duckdb")
    [report] = import_tree(mirror.db, copy)
    assert list(report.failed) == [f"v1/{SRC.model_id}/{SRC.source}/activations/batch-1.jsonl.gz"]
    assert report.imported["activations"] == 3
    n = mirror.sql('SELECT count(*) AS n FROM activations WHERE "index" BETWEEN 100 AND 199').to_pylist()[0]["n"]
    assert n == 0  # nothing from the broken batch
    victim.write_bytes(good)
    [again] = import_tree(mirror.db, copy)
    assert again.ok and again.imported == {"features": 0, "activations": 1, "explanations": 0}
    n = mirror.sql('SELECT count(*) AS n FROM activations WHERE "index" BETWEEN 100 AND 199').to_pylist()[0]["n"]
    assert n > 0


def test_reimport_is_idempotent_and_api_rows_win(dump, tmp_path):
    state, root = dump
    db = Database(tmp_path / "m.duckdb")
    import_tree(db, root)
    before = table_contents(str(db.path))
    import_tree(db, root)
    assert table_contents(str(db.path)) == before


def test_kill_9_during_import(dump, tmp_path):
    state, root = dump
    env = {**os.environ, "NP_MIRROR_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "np_mirror.app", "import", str(root)]
    reference, killed = tmp_path / "ref.duckdb", tmp_path / "killed.duckdb"
    assert subprocess.run(cmd + ["--db", str(reference)], env=env, capture_output=True).returncode == 0
    total = len(list(root.rglob("batch-*.jsonl.gz"))) - 1  # jlens/ has a decoy batch
    rng = random.Random(7)
    partial = []
    for _ in range(4):
        proc = subprocess.Popen(cmd + ["--db", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # wait until this run has imported something new, then kill it at a random moment
        start = time.monotonic()
        while time.monotonic() - start < 20 and proc.poll() is None and _imported(killed) <= (partial[-1] if partial else 0):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        partial.append(_imported(killed))
    assert any(0 < n < total for n in partial), (partial, total)
    assert subprocess.run(cmd + ["--db", str(killed)], env=env, capture_output=True).returncode == 0
    assert table_contents(str(killed)) == table_contents(str(reference))


def _imported(path) -> int:
    import duckdb

    if not path.exists():
        return 0
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return 0
    try:
        return con.execute("SELECT count(*) FROM export_files WHERE status = 'imported'").fetchall()[0][0]
    except duckdb.Error:
        return 0
    finally:
        con.close()


def test_records_of_another_source_are_refused(dump, tmp_path):
    state, root = dump
    copy = tmp_path / "dump"
    shutil.copytree(root, copy)
    victim = copy / "v1" / SRC.model_id / SRC.source / "activations" / "batch-0.jsonl.gz"
    lines = gzip.decompress(victim.read_bytes()).replace(b'"layer":"3-res-jb"', b'"layer":"4-res-jb"')
    victim.write_bytes(gzip.compress(lines))
    mirror = Mirror(tmp_path / "m.duckdb")
    [report] = import_tree(mirror.db, copy)
    [(key, reason)] = report.failed.items()
    assert key.endswith("activations/batch-0.jsonl.gz") and "another source" in reason
    assert mirror.sql("SELECT count(*) AS n FROM activations WHERE source = '4-res-jb'").to_pylist() == [{"n": 0}]
