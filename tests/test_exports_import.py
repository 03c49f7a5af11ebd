"""Importing bulk exports: the emulator's own export against its API, quirks, corrupt batches, kill -9."""

import asyncio
import gzip
import json
import math
import os
import shutil
import signal
import subprocess
import sys

import pytest

from helpers import table_contents
from npclient import NeuronpediaClient, SourceId, wire
from npclient.exports.files import find_source_dirs
from npclient.store.importer import import_tree
from npclient.mirror import Mirror
from npclient.store.database import Database
from npclient.sync import SyncOptions, run_sync
from npclient.testing import EmulatorConfig, EmulatorState, SourceSpec
from npclient.testing.emulator.exports import ExportQuirks, activation_ranges, exported_explanation_ids, write_export

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
    # export-data.py gives activations only to indices below the feature count: with holes, the
    # highest indices have none in the export (the sync fetches those through the API).
    top = max(r[1] for r in activation_ranges(state, str(SRC), QUIRKS))
    feature_cols = ("feature_key", "max_act_approx", "frac_nonzero", "hook_name", "has_vector",
                    "topk_cos_sim_indices", "topk_cos_sim_values",
                    "pos_str", "pos_values", "neg_str", "neg_values", "n_activations", "n_explanations")
    act_cols = ("feature_key", "rank", "activation_id", "tokens", "values", "max_value", "max_value_token_index",
                "min_value", "data_source", "dfa_values", "dfa_max_value", "dfa_target_index", "bin_min", "bin_max", "bin_contains")
    for table, cols, order in (("features", feature_cols, "feature_key"), ("activations", act_cols, "feature_key, rank")):
        q = f'SELECT {", ".join(chr(34) + c + chr(34) for c in cols)} FROM {table} WHERE "index" <= {top} ORDER BY {order}'
        a, b = imported.sql(q).to_pylist(), fetched.sql(q).to_pylist()
        assert len(a) == len(b) > 0
        assert _api_view(a) == b, table  # the export keeps NaN/Infinity where the API says null
    # UMAP rides on explanation rows in the export: features with explanations get it from there.
    q = ("SELECT feature_key, umap_x, umap_y, umap_cluster, umap_log_feature_sparsity FROM features "
         "WHERE n_explanations > 0 ORDER BY 1")
    assert imported.sql(q).to_pylist() == fetched.sql(q).to_pylist()
    q = "SELECT feature_key, description, explanation_model_name, type_name FROM explanations ORDER BY 1, 2"
    assert imported.sql(q).to_pylist() == fetched.sql(q).to_pylist()
    # An imported feature reads back like a fetched one, activations and all.
    key = "gpt2-small/3-res-jb/17"
    x, y = imported.feature(key), fetched.feature(key)
    shared = [k for k in wire.EXPORT_ACTIVATION_FIELDS if k != "creatorId"]  # the export's creator is its default one
    assert [{k: a.get(k) for k in shared} for a in x.raw["activations"]] == \
        [{k: a.get(k) for k in shared} for a in y.raw["activations"]]
    assert x.topk_cos_sim_indices == y.topk_cos_sim_indices


def contents(path, mirror=None):
    """`table_contents` as text: NaN, which exports carry, never equals itself."""
    if mirror is not None:
        mirror.close()
    return repr(table_contents(str(path)))


def _api_view(value):
    """NaN/Infinity as the API renders them: null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_api_view(v) for v in value]
    if isinstance(value, dict):
        return {k: _api_view(v) for k, v in value.items()}
    return value


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
    before = contents(db.path)
    import_tree(db, root)
    assert contents(db.path) == before


@pytest.mark.slow
@pytest.mark.parametrize("point, hit", [("import.before_commit", 4), ("import.after_commit", 2)])
def test_kill_9_during_import(dump, tmp_path, point, hit):
    """Kills at chosen points of an import (`NP_MIRROR_FAULT`): inside a file's transaction with
    its rows and record written, and right after its commit; three runs in a row, each resuming
    the last. Committed files stay, the killed transaction leaves nothing, and the finished
    mirror equals an import that was never killed (slow: five CLI runs)."""
    state, root = dump
    env = {**os.environ, "NP_MIRROR_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "np_mirror.app", "import", str(root)]
    reference, killed = tmp_path / "ref.duckdb", tmp_path / "killed.duckdb"
    assert subprocess.run(cmd + ["--db", str(reference)], env=env, capture_output=True).returncode == 0
    total = len(list(root.rglob("batch-*.jsonl.gz"))) - 1  # jlens/ has a decoy batch
    partial = []
    for _ in range(3):
        run = subprocess.run(cmd + ["--db", str(killed)], env={**env, "NP_MIRROR_FAULT": f"{point}:{hit}"},
                             capture_output=True)
        assert run.returncode == -signal.SIGKILL, run.stderr.decode()[-2000:]
        partial.append(_imported(killed))
    # The importer runs at most 3 files at once (2 workers and the explanations thread), so when a
    # run dies at hit `hit` the other two may be anywhere between the point and their commit:
    # before_commit:4 leaves 1 to 3 new files committed, after_commit:2 leaves 2 to 4. Three runs
    # add at least one each and stay below all 13 files.
    assert 0 < partial[0] < partial[1] < partial[2] < total, (partial, total)
    assert subprocess.run(cmd + ["--db", str(killed)], env=env, capture_output=True).returncode == 0
    assert contents(killed) == contents(reference)


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
    lines = gzip.decompress(victim.read_bytes()).replace(b'"layer": "3-res-jb"', b'"layer": "4-res-jb"')
    victim.write_bytes(gzip.compress(lines))
    mirror = Mirror(tmp_path / "m.duckdb")
    [report] = import_tree(mirror.db, copy)
    [(key, reason)] = report.failed.items()
    assert key.endswith("activations/batch-0.jsonl.gz") and "another source" in reason
    assert mirror.sql("SELECT count(*) AS n FROM activations WHERE source = '4-res-jb'").to_pylist() == [{"n": 0}]


# --------------------------------------------------------------------------- explanations keyed by id

SMALL_BS = ExportQuirks(batch_size=32, non_source_folders=False)


def _truth_ids(state, quirks):
    return exported_explanation_ids(state, str(SRC), quirks)


def _straddles(pages, state):
    """(k, index) of a feature whose explanation rows are split between batch k and k+1."""
    index_of = {e["id"]: e["index"] for i in state.feature_indices(*SRC.model_id.split(), SRC.source)
                for e in state.explanations(SRC.model_id, SRC.source, i)}
    for k, (a, b) in enumerate(zip(pages, pages[1:])):
        if a and b and index_of[a[-1]] == index_of[b[0]]:
            return k, int(index_of[a[-1]])
    raise AssertionError("no feature straddles two explanation batches")


def _check_explanations(mirror, state, want_ids):
    rows = mirror.sql(
        'SELECT feature_key, "index", rank, explanation_id, description FROM explanations ORDER BY feature_key, rank'
    ).to_pylist()
    ids = [r["explanation_id"] for r in rows]
    assert len(ids) == len(set(ids)), "an explanation is stored twice"
    assert set(ids) == set(want_ids), "an explanation the export holds is missing"
    by_feature = {}
    for r in rows:
        by_feature.setdefault(r["feature_key"], []).append(r)
    for key, group in by_feature.items():
        # our rule for unscored explanations: rank by explanation id, 0..n-1
        assert [r["rank"] for r in group] == list(range(len(group))), key
        assert [r["explanation_id"] for r in group] == sorted(r["explanation_id"] for r in group), key
    feats = {r["feature_key"]: r for r in mirror.sql(
        "SELECT feature_key, n_explanations, top_explanation FROM features").to_pylist()}
    for key, f in feats.items():
        group = by_feature.get(key, [])
        assert f["n_explanations"] == len(group), key
        assert f["top_explanation"] == (group[0]["description"] if group else None), key


def test_a_straddling_feature_keeps_its_explanations_when_a_failed_batch_heals(tmp_path):
    state = EmulatorState(config(300))
    root = tmp_path / "dump"
    write_export(state, root, quirks=SMALL_BS, compresslevel=1)
    pages = _truth_ids(state, SMALL_BS)
    k, index = _straddles(pages, state)
    folder = root / "v1" / SRC.model_id / SRC.source / "explanations"
    victim = folder / f"batch-{k + 1}.jsonl.gz"
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])
    mirror = Mirror(tmp_path / "m.duckdb")
    [first] = import_tree(mirror.db, root)
    assert list(first.failed) == [f"v1/{SRC.model_id}/{SRC.source}/explanations/batch-{k + 1}.jsonl.gz"]
    half = mirror.sql(f'SELECT count(*) AS n FROM explanations WHERE "index" = {index}').to_pylist()[0]["n"]
    assert 0 < half < len(state.explanations(SRC.model_id, SRC.source, index))
    victim.write_bytes(good)
    [healed] = import_tree(mirror.db, root)
    assert healed.ok and healed.imported["explanations"] == 1
    _check_explanations(mirror, state, [i for page in pages for i in page])
    n = mirror.sql(f'SELECT count(*) AS n FROM explanations WHERE "index" = {index}').to_pylist()[0]["n"]
    assert n == len(state.explanations(SRC.model_id, SRC.source, index))  # the neighbour's rows survived


def test_a_row_in_two_batches_is_stored_once(tmp_path):
    state = EmulatorState(config(300))
    quirks = ExportQuirks(batch_size=32, non_source_folders=False, explanation_ties="per_page")
    root = tmp_path / "dump"
    write_export(state, root, quirks=quirks, compresslevel=1)
    pages = _truth_ids(state, quirks)
    flat = [i for page in pages for i in page]
    assert len(flat) > len(set(flat))  # the export itself repeats a row (and lacks another)
    mirror = Mirror(tmp_path / "m.duckdb")
    [report] = import_tree(mirror.db, root)
    assert report.ok
    _check_explanations(mirror, state, flat)
    # a rerun of every file (as after a changed etag) changes nothing
    before = contents(mirror.db.path, mirror)
    with mirror.db.transaction() as cur:
        cur.execute("UPDATE export_files SET size = size + 1")
    import_tree(mirror.db, root)
    assert contents(mirror.db.path, mirror) == before


def test_the_declared_key_refuses_a_second_row_for_one_explanation(tmp_path):
    """Schema v2 declares explanation ids unique: what an older importer could double is now
    refused by the store itself (the v1 -> v2 migration folds the old doubles: test_migration)."""
    import duckdb

    state = EmulatorState(config(300))
    root = tmp_path / "dump"
    write_export(state, root, quirks=SMALL_BS, compresslevel=1)
    mirror = Mirror(tmp_path / "m.duckdb")
    import_tree(mirror.db, root)
    clean = contents(mirror.db.path, mirror)
    with pytest.raises(duckdb.ConstraintException):
        with mirror.db.transaction() as cur:
            cur.execute("INSERT INTO explanations SELECT * FROM explanations WHERE \"index\" < 40")
    assert contents(mirror.db.path, mirror) == clean


def test_activation_ranks_follow_the_wire_rule(dump, tmp_path):
    state, root = dump
    mirror = Mirror(tmp_path / "m.duckdb")
    import_tree(mirror.db, root)
    rows = mirror.sql("SELECT feature_key, rank, activation_id, max_value FROM activations ORDER BY feature_key, rank").to_pylist()
    by_feature = {}
    for r in rows:
        by_feature.setdefault(r["feature_key"], []).append(r)
    for key, group in by_feature.items():
        assert [r["rank"] for r in group] == list(range(len(group)))
        want = sorted(group, key=lambda r: wire.activation_rank_key(r["max_value"], r["activation_id"]))
        assert [r["activation_id"] for r in group] == [r["activation_id"] for r in want], key


# --------------------------------------------------------------------------- NaN / Infinity


def test_nan_and_infinity_from_an_export_are_stored_and_read_back(dump, tmp_path, capsys):
    from np_mirror.app import main

    state, root = dump
    db = tmp_path / "m.duckdb"
    mirror = Mirror(db)
    import_tree(mirror.db, root)
    keys = {}
    for token in ("NaN", "Infinity"):
        found = mirror.sql(
            f"SELECT feature_key FROM features WHERE CAST(export_raw AS VARCHAR) LIKE '%{token}%' ORDER BY 1 LIMIT 1"
        ).to_pylist()
        assert found, f"the export should carry a bare {token}"
        keys[token] = found[0]["feature_key"]
    for token, key in keys.items():
        f = mirror.feature(key)  # orjson refuses NaN: this raised before
        assert f is not None and f.raw["index"] == key.rsplit("/", 1)[1]
        api = state.feature(*key.split("/")[:2], int(key.rsplit("/", 1)[1]))
        for field in ("freq_hist_data_bar_values", "logits_hist_data_bar_values", "topkCosSimValues"):
            nulls = [i for i, v in enumerate(api[field]) if v is None]
            assert [i for i, v in enumerate(f.raw[field]) if v is None] == nulls, (key, field)
        mirror.close()
        code = main(["show", key, "--json", "--db", str(db)])
        out, err = capsys.readouterr()
        assert code == 0, err
        shown = json.loads(out)  # strict JSON: no NaN token
        assert "NaN" not in out and "Infinity" not in out
        assert any(v is None for field in ("freq_hist_data_bar_values", "logits_hist_data_bar_values",
                                           "topkCosSimValues") for v in shown[field])
    # the typed columns keep the floats themselves
    vals = mirror.sql("SELECT topk_cos_sim_values AS v FROM features WHERE list_contains(topk_cos_sim_values, 'NaN'::DOUBLE) LIMIT 1").to_pylist()
    if vals:
        assert any(isinstance(x, float) and math.isnan(x) for x in vals[0]["v"])


# --------------------------------------------------------------------------- which source a folder holds


def test_import_of_one_folder_takes_the_id_from_its_files(dump, tmp_path, capsys):
    from np_mirror.app import main

    state, root = dump
    src = root / "v1" / SRC.model_id / SRC.source
    downloads = tmp_path / "Downloads" / "0-res-jb"  # named like another source, under no model
    whatever = tmp_path / "whatever"
    shutil.copytree(src, downloads)
    shutil.copytree(src, whatever)
    for meta in whatever.glob("*.jsonl"):
        meta.unlink()  # no source.jsonl: the first batch record says modelId and layer
    live = [i for i in range(350) if not state.is_hole(SRC.model_id, SRC.source, i)]
    for folder in (downloads, whatever):
        db = tmp_path / f"{folder.name}.duckdb"
        code = main(["import", str(folder), "--db", str(db)])
        _, err = capsys.readouterr()
        assert code == 0, err
        assert err.startswith(f"{SRC}: "), err
        rows = Mirror(db).sql("SELECT DISTINCT model_id, source FROM features").to_pylist()
        assert rows == [{"model_id": SRC.model_id, "source": SRC.source}]
        assert Mirror(db).sql("SELECT count(*) AS n FROM features").to_pylist()[0]["n"] == len(live)
        keys = Mirror(db).sql("SELECT DISTINCT key FROM export_files").column("key").to_pylist()
        assert all(k.startswith(f"v1/{SRC}/") for k in keys)
    # a tree keeps working, and is named by its files too
    [(sid, path)] = find_source_dirs(root)
    assert sid == SRC and path == src


def test_activation_rank_ties_nan_and_null_follow_the_wire_rule(tmp_path):
    folder = tmp_path / "whatever"
    (folder / "activations").mkdir(parents=True)
    (folder / "features").mkdir()
    arrays = ("hist", "indices", "values", "_l1", "pearson", "_str", "dist", "vector")
    feature = {k: [] if any(a in k for a in arrays) and not k.startswith("vector") else None
               for k in wire.EXPORT_FEATURE_FIELDS}
    feature["vector"] = []
    feature.update(modelId=SRC.model_id, layer=SRC.source, index="7")
    acts = []
    for aid, mx in (("c", 2.0), ("a", 2.0), ("e", float("nan")), ("b", None), ("d", 5.0), ("f", float("inf"))):
        a = {k: None for k in wire.EXPORT_ACTIVATION_FIELDS}
        a.update(id=aid, modelId=SRC.model_id, layer=SRC.source, index="7", maxValue=mx, tokens=["x"], values=[1.0])
        acts.append(a)
    (folder / "features" / "batch-0.jsonl.gz").write_bytes(gzip.compress((json.dumps(feature) + "\n").encode()))
    (folder / "activations" / "batch-0.jsonl.gz").write_bytes(
        gzip.compress("".join(json.dumps(a) + "\n" for a in acts).encode()))
    mirror = Mirror(tmp_path / "m.duckdb")
    [report] = import_tree(mirror.db, folder)
    assert report.ok and report.source == SRC
    got = mirror.sql("SELECT activation_id FROM activations ORDER BY rank").column(0).to_pylist()
    # largest first (Infinity too), ties by id, null and NaN last
    assert got == [a["id"] for a in wire.rank_activations(acts)]
    assert [r["id"] for r in mirror.feature(f"{SRC}/7").raw["activations"]] == got
