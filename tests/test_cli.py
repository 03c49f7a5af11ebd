"""The command line, in-process: exit codes, one-line errors, JSON outputs."""

import csv
import io
import json

import pytest

from helpers import SRC, small_config
from np_mirror.app import main


@pytest.fixture
def env(np_emulator_factory, tmp_path, monkeypatch):
    from npclient.testing.emulator.s3 import S3Server

    server = np_emulator_factory(small_config(d_sae=120, hole_rate=0.05))
    monkeypatch.setenv("NEURONPEDIA_BASE_URL", server.url)
    monkeypatch.setenv("NP_MIRROR_HOME", str(tmp_path / "home"))
    (tmp_path / "empty-bucket").mkdir()
    with S3Server(tmp_path / "empty-bucket") as s3:  # a bucket with no export: the API does it all
        monkeypatch.setenv("NP_MIRROR_EXPORTS_URL", s3.bucket_url)
        yield server, tmp_path / "m.duckdb"


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_sync_then_read_everything_back(env, capsys):
    server, db = env
    code, _, err = run(capsys, "sync", "gpt2-small/0-res-jb", "--db", str(db), "--quiet", "--rate", "200")
    holes = [i for i in range(120) if server.state.is_hole(*SRC, i)]
    assert code == (1 if holes else 0), err
    assert "fetched" in err

    code, out, _ = run(capsys, "status", "--db", str(db), "--format", "json")
    assert code == 0
    [row] = json.loads(out)
    assert row["present"] == 120 - len(holes) and row["total"] == 120 and row["failed"] == len(holes)

    ok = next(i for i in range(120) if i not in holes)
    code, out, _ = run(capsys, "show", f"gpt2-small/0-res-jb/{ok}", "--db", str(db), "--json")
    assert code == 0 and json.loads(out) == server.state.features_post_item(*SRC, ok)

    code, out, _ = run(capsys, "show", f"gpt2-small/0-res-jb/{ok}", "--db", str(db))
    assert code == 0 and "Top activations" in out

    code, out, _ = run(capsys, "sql", 'SELECT "index", top_explanation FROM features ORDER BY 1 LIMIT 3', "--db", str(db), "--format", "csv")
    assert code == 0
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["index", "top_explanation"] and len(rows) == 4

    if holes:
        code, _, err = run(capsys, "show", f"gpt2-small/0-res-jb/{holes[0]}", "--db", str(db))
        assert code == 1 and "not in the mirror" in err

    # rerun: nothing to fetch, exit code still reports the known 404s as failures? No: they are skipped.
    code, _, err = run(capsys, "sync", "gpt2-small/0-res-jb", "--db", str(db), "--quiet")
    assert code == 0, err
    assert "0 fetched" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["sync", "gpt2-small/../x"], "invalid id"),
        (["sync", "gpt2-small"], "invalid id"),
        (["show", "gpt2-small/0-res-jb/-1"], "invalid id"),
        (["sync", "gpt2-small/0-res-jb", "--range", "9:3"], "--range"),
        (["sync", "gpt2-small/0-res-jb", "--parts", "logits"], "--parts"),
        (["sync", "gpt2-small/0-res-jb", "--rate", "0"], "--rate"),
        (["sync", "gpt2-small/99-res-jb"], "unknown source"),
        (["sync", "gpt2-small/nope-set"], "unknown source"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(env, capsys, args, message):
    server, db = env
    code, _, err = run(capsys, *args, "--db", str(db))
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not [r for r in server.state.requests if "/feature" in r.path]


def test_db_that_is_not_a_mirror(env, capsys, tmp_path):
    bogus = tmp_path / "bogus.duckdb"
    bogus.write_text("not a database")
    for args in (["status"], ["sql", "select 1"], ["sync", "gpt2-small/0-res-jb"]):
        code, _, err = run(capsys, *args, "--db", str(bogus))
        assert code == 2 and "not a mirror" in err
    assert bogus.read_text() == "not a database"


def test_reading_a_mirror_that_does_not_exist_is_bad_input(env, capsys, tmp_path):
    missing = tmp_path / "missing.duckdb"
    for args in (["status"], ["show", "gpt2-small/0-res-jb/1"], ["sql", "select 1"]):
        code, _, err = run(capsys, *args, "--db", str(missing))
        assert code == 2 and "no mirror at" in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not missing.exists()


def test_sql_is_read_only_and_errors_are_one_line(env, capsys):
    server, db = env
    run(capsys, "sync", "gpt2-small/0-res-jb", "--db", str(db), "--quiet", "--range", "0:5")
    code, _, err = run(capsys, "sql", "DELETE FROM features", "--db", str(db))
    assert code == 2 and "SQL error" in err
    code, _, err = run(capsys, "sql", "SELEC nonsense", "--db", str(db))
    assert code == 2 and len(err.strip().splitlines()) == 1
    code, out, _ = run(capsys, "sql", "SELECT count(*) AS n FROM features", "--db", str(db), "--format", "json")
    assert json.loads(out) == [{"n": 5}]


def test_sources_lists_the_catalog(env, capsys):
    code, out, _ = run(capsys, "sources", "gpt2-small", "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert {r["source"] for r in rows} >= {"0-res-jb", "1-res-jb"}
    assert next(r for r in rows if r["source"] == "0-res-jb")["d_sae"] == 120


def test_sync_exports_first_from_the_cli(np_emulator_factory, tmp_path, monkeypatch, capsys):
    from npclient.testing.emulator.exports import ExportQuirks, write_export
    from npclient.testing.emulator.s3 import S3Server

    server = np_emulator_factory(small_config(d_sae=300))
    write_export(server.state, tmp_path / "bucket", quirks=ExportQuirks(batch_size=100))
    monkeypatch.setenv("NEURONPEDIA_BASE_URL", server.url)
    monkeypatch.setenv("NP_MIRROR_HOME", str(tmp_path / "home"))
    db = tmp_path / "m.duckdb"
    with S3Server(tmp_path / "bucket") as s3:
        code, _, err = run(capsys, "sync", "gpt2-small/0-res-jb", "--db", str(db), "--quiet", "--exports-url", s3.bucket_url)
    assert code == 0, err
    assert "300 features imported" in err and "0 fetched" in err
    assert not [r for r in server.state.requests if r.path.startswith("/api/feature")]
    assert (tmp_path / "home" / "exports" / "v1" / "gpt2-small" / "0-res-jb" / "features" / "batch-0.jsonl.gz").exists()
    code, out, _ = run(capsys, "status", "--db", str(db), "--format", "json")
    assert json.loads(out)[0]["origins"] == "export"


def test_sources_of_an_unknown_model_is_bad_input(env, capsys):
    code, _, err = run(capsys, "sources", "no-such-model")
    assert code == 2 and "no sources listed for model 'no-such-model'" in err and len(err.strip().splitlines()) == 1


def test_scores_prints_its_cost_before_any_feature_request(env, capsys):
    server, db = env
    run(capsys, "sync", "gpt2-small/0-res-jb", "--db", str(db), "--quiet", "--range", "0:10")
    server.state.log.clear()
    code, _, err = run(capsys, "sync", "gpt2-small/0-res-jb", "--db", str(db), "--quiet", "--range", "0:10", "--scores",
                       "--api-only")
    assert code in (0, 1), err
    first = err.splitlines()[0]
    assert first.startswith("np-mirror: --scores: ") and "need one GET each" in first
    needed = int(first.split("--scores: ")[1].split()[0].replace(",", ""))
    holes = sum(server.state.is_hole("gpt2-small", "0-res-jb", i) for i in range(10))
    assert needed == 10 - holes  # the holes are known 404s: not asked for again
    assert len(server.state.log.matching("/api/feature/")) == needed
