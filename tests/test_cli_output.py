"""Output a person can read, through the real command line (stdout is not a terminal here):
tables that fit 100 columns without cutting ids, numbers right-aligned with separators, CSV
with `\\n`, `show` marking the max token and whitespace tokens in a pipe, `--format` on `show`
and `fetch`, `status` counting explained features, progress lines in a log, and the help."""

from __future__ import annotations

import csv
import io
import json

import pytest

from helpers import SRC, run_cli, small_config

from npclient.tokens import visible_token

SOURCE = "/".join(SRC)


@pytest.fixture
def env(np_emulator_factory, tmp_path, monkeypatch):
    """A 64-feature source behind the emulator, no exports, and 100 columns."""
    from npclient.testing.emulator.s3 import S3Server

    server = np_emulator_factory(small_config(d_sae=64, hole_rate=0.0))
    monkeypatch.setenv("NEURONPEDIA_BASE_URL", server.url)
    monkeypatch.setenv("NP_MIRROR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "100")
    (tmp_path / "empty-bucket").mkdir()
    with S3Server(tmp_path / "empty-bucket") as s3:
        monkeypatch.setenv("NP_MIRROR_EXPORTS_URL", s3.bucket_url)
        yield server, tmp_path / "m.duckdb"


def synced(capsys, db, *extra):
    code, _, err = run_cli(capsys, "sync", SOURCE, "--db", str(db), "--rate", "500", *extra)
    assert code == 0, err
    assert "\r" not in err  # not a terminal: no bar redrawn with carriage returns


def test_a_wide_table_fits_100_columns_and_never_cuts_an_id(env, capsys):
    _, db = env
    synced(capsys, db)
    query = ("SELECT feature_key, repeat(coalesce(top_explanation, 'none') || ' ', 12) AS long_text, "
             "'/home/someone/a/very/deep/folder/of/saes/' || feature_key || '/sae_weights.safetensors' AS decoder_path, "
             "n_activations * 1000 AS n FROM features ORDER BY \"index\"")
    code, out, _ = run_cli(capsys, "sql", query, "--db", str(db))
    assert code == 0
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100
    keys = [f"{SOURCE}/{i}" for i in range(64)]
    body = lines[2:]
    assert len(body) == len(keys)  # one line per row: nothing wrapped
    for key, line in zip(keys, body):
        assert line.startswith(key + " ")  # the id whole, on its own row
        assert line.count("\u2026") == 2  # the long text and the path gave way, with an ellipsis
        assert "tensors  " in line  # the path was cut in the middle: its file name's end stays


def test_numbers_are_right_aligned_with_thousands_separators(env, capsys):
    _, db = env
    synced(capsys, db, "--range", "0:2")
    code, out, _ = run_cli(capsys, "sql", "SELECT * FROM (VALUES (5, 'a', 3), (1234567, 'b', 24576)) t(n, s, \"index\")",
                       "--db", str(db))
    assert code == 0
    header, rule, small, big = out.splitlines()
    assert "1,234,567" in big and "24576" in big  # an index is an id: no separators
    end = big.index("1,234,567") + len("1,234,567")
    assert small[:end].endswith(" 5") and header[:end].endswith("n")  # right-aligned under its header


def test_csv_ends_lines_with_newline_only(env, capsys):
    _, db = env
    synced(capsys, db, "--range", "0:3")
    for args in (["sql", "SELECT feature_key, top_explanation FROM features"], ["status"],
                 ["show", f"{SOURCE}/1"]):
        code, out, _ = run_cli(capsys, *args, "--db", str(db), "--format", "csv")
        assert code == 0 and out and "\r" not in out, args
        rows = list(csv.reader(io.StringIO(out)))
        assert len(rows) >= 2


def test_show_in_a_pipe_marks_the_max_token_and_shows_whitespace(env, capsys):
    from npclient import Mirror

    _, db = env
    synced(capsys, db)
    mirror = Mirror(db, read_only=True)
    chosen = None
    for index in range(64):
        feature = mirror.feature(f"{SOURCE}/{index}")
        ranked = sorted(feature.activations, key=lambda a: -a.max_value)
        for act in ranked:  # a whitespace-only token right next to the max token
            peak = act.max_value_token_index
            near = act.tokens[max(0, peak - 2): peak + 3]
            if any(t and not t.strip() and " " in t for t in near):
                chosen = feature
                break
        if chosen:
            break
    mirror.close()
    assert chosen is not None, "the seeded emulator has whitespace tokens next to a max token"
    code, out, _ = run_cli(capsys, "show", str(chosen.id), "--db", str(db), "--acts", str(len(chosen.activations)))
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 100
    assert "\u2423" in out  # ␣
    top = max(chosen.activations, key=lambda a: a.max_value)
    assert f"[[{visible_token(top.tokens[top.max_value_token_index])}]]" in out
    examples = out.split("Top activations")[1].split("Logits")[0].splitlines()[1:]
    assert examples and all("[[" in line and "]]" in line for line in examples)
    logits = out.split("Logits")[1] if "Logits" in out else ""
    for token in (chosen.pos_str or [])[:8]:
        assert visible_token(token).strip() in logits


def test_the_logits_table_shows_whitespace_tokens(env, capsys):
    from npclient import Mirror

    _, db = env
    synced(capsys, db)
    mirror = Mirror(db, read_only=True)
    chosen = next((f for f in (mirror.feature(f"{SOURCE}/{i}") for i in range(64))
                   if any(t and not t.strip() for t in (f.pos_str or [])[:8] + (f.neg_str or [])[:8])), None)
    mirror.close()
    assert chosen is not None, "the seeded emulator has whitespace-only logits among some feature's top 8"
    code, out, _ = run_cli(capsys, "show", str(chosen.id), "--db", str(db))
    assert code == 0
    logits = out.split("Logits")[1]
    for token in (chosen.pos_str or [])[:8] + (chosen.neg_str or [])[:8]:
        if token and not token.strip():
            assert visible_token(token) in logits and set(visible_token(token)) <= {"\u2423", "\u21b5", "\u2192", "\u240d"}


def test_format_json_parses_for_show_fetch_and_status(env, capsys):
    server, db = env
    synced(capsys, db, "--range", "0:4")
    code, out, _ = run_cli(capsys, "show", f"{SOURCE}/2", "--db", str(db), "--format", "json")
    assert code == 0 and json.loads(out) == server.state.features_post_item(*SRC, 2)
    code, alias, _ = run_cli(capsys, "show", f"{SOURCE}/2", "--db", str(db), "--json")
    assert code == 0 and alias == out

    code, out, _ = run_cli(capsys, "fetch", f"{SOURCE}/1", f"{SOURCE}/3", "--format", "json")
    assert code == 0
    assert [(str(f["index"]), f["layer"]) for f in json.loads(out)] == [("1", "0-res-jb"), ("3", "0-res-jb")]
    code, out, _ = run_cli(capsys, "fetch", f"{SOURCE}/1", f"{SOURCE}/3", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["feature"] for r in rows] == [f"{SOURCE}/1", f"{SOURCE}/3"] and "\r" not in out
    code, out, _ = run_cli(capsys, "fetch", f"{SOURCE}/1")
    assert code == 0 and out.splitlines()[2].startswith(f"{SOURCE}/1 ")

    code, out, _ = run_cli(capsys, "status", "--db", str(db), "--format", "json")
    [row] = json.loads(out)
    assert row["present"] == 4


def test_status_counts_explained_features(env, capsys):
    _, db = env
    synced(capsys, db)
    code, out, _ = run_cli(capsys, "status", "--db", str(db), "--format", "json")
    assert code == 0
    [row] = json.loads(out)
    code, sql_out, _ = run_cli(capsys, "sql", "SELECT count(DISTINCT feature_key) AS explained, count(*) AS explanations "
                           "FROM explanations", "--db", str(db), "--format", "json")
    [counted] = json.loads(sql_out)
    assert row["explained"] == counted["explained"] and row["explanations"] == counted["explanations"]
    assert 0 < row["explained"] <= row["present"] == 64
    code, out, _ = run_cli(capsys, "status", "--db", str(db))
    header, _, line = out.splitlines()
    assert "explained" in header.split() and line.startswith(SOURCE + " ")
    assert max(len(x) for x in out.splitlines()) <= 100


def test_a_long_sync_in_a_log_prints_a_line_every_five_seconds():
    from npclient.ids import SourceId
    from npclient.sync.summary import SyncProgress

    from np_mirror.progress import SyncDisplay

    now = [100.0]
    log = io.StringIO()
    src = SourceId(*SRC)

    def event(done: int) -> SyncProgress:
        return SyncProgress(source=src, done=done, total=24576, fetched=done, failed=1,
                            budget_remaining=21000, budget_window_s=3600)

    with SyncDisplay(stream=log, tty=False, clock=lambda: now[0]) as display:
        display.update(event(0))
        now[0] += 4.5
        display.update(event(450))
        assert log.getvalue() == ""  # under 5 s of its clock: nothing yet
        now[0] += 0.5
        display.update(event(500))
        first = log.getvalue()
        assert first.count("\n") == 1
        assert f"{SOURCE}: 500/24,576 features (2%), 100 feat/s, ETA 4 min" in first
        assert "failed 1" in first and "21,000 requests left this hour" in first
        now[0] += 3
        display.update(event(800))
        assert log.getvalue() == first  # at most one line per 5 s
        now[0] += 2
        display.update(event(1000))
        assert log.getvalue().count("\n") == 2 and "1,000/24,576" in log.getvalue()
    assert "\r" not in log.getvalue()


def test_quiet_sync_display_prints_no_progress():
    from npclient.ids import SourceId
    from npclient.sync.summary import SyncProgress

    from np_mirror.progress import SyncDisplay

    now = [0.0]
    log = io.StringIO()
    with SyncDisplay(False, stream=log, tty=False, clock=lambda: now[0]) as display:
        for done in range(0, 100, 10):
            now[0] += 10
            display.update(SyncProgress(source=SourceId(*SRC), done=done, total=100, fetched=done, failed=0,
                                        budget_remaining=None))
    assert log.getvalue() == ""


def test_sql_help_lists_every_table_of_the_mirror(capsys):
    from npclient.store.schema import MIRROR_TABLES

    from np_mirror.cmd_read import TABLES

    assert set(TABLES) == set(MIRROR_TABLES)  # a new table needs its line in `sql --help`
    code, out, _ = run_cli(capsys, "sql", "--help")
    assert code == 0
    listed = {line.split()[0] for line in out.split("Tables:")[1].split("Arguments:")[0].splitlines() if line.strip()}
    assert listed == set(MIRROR_TABLES)


@pytest.mark.parametrize("command, metavar", [
    ("show", "MODEL/SOURCE/INDEX"), ("fetch", "MODEL/SOURCE/INDEX"), ("sources", "[MODEL]"),
    ("neighbors", "MODEL/SOURCE/INDEX"), ("sync", "MODEL/SOURCE|MODEL/SET"), ("export", "[MODEL/SOURCE]..."),
    ("import", "[PATH] [MODEL/SOURCE]..."), ("weights add", "MODEL/SOURCE"), ("geometry allpairs", "MODEL/SOURCE"),
    ("geometry match", "[MODEL/SOURCE] [MODEL/SOURCE]"), ("geometry pca", "MODEL/SOURCE"),
    ("geometry umap", "MODEL/SOURCE"), ("geometry cluster", "MODEL/SOURCE"), ("geometry nullspace", "MODEL/SOURCE"),
])
def test_id_arguments_name_their_shape(capsys, command, metavar):
    code, out, _ = run_cli(capsys, *command.split(), "--help")
    assert code == 0 and metavar in out.splitlines()[0]
