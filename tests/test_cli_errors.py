"""Issue 14, section 1: each wrong request or failing environment gives one line on stderr that
names what is wrong and what to do, the exit code of the README's table, no traceback, and
leaves the mirror as it was. Run through the real CLI against one emulator source of 1,024
features (64 of them synced, its size known), with its decoder attached."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from helpers import LIGHT
from np_mirror.app import main
from npclient.testing import EmulatorConfig, EmulatorServer, SourceSpec

MODEL, SOURCE = "gpt2-small", "0-res-jb"
SRC = f"{MODEL}/{SOURCE}"
D_SAE = 1024


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(server, mirror path, env): the source synced once (0:64) and its decoder attached."""
    from npclient.testing.emulator.s3 import S3Server
    from npclient.testing.saes import make_emulator_sae

    tmp = tmp_path_factory.mktemp("cli-errors")
    server = EmulatorServer(EmulatorConfig(sources=(SourceSpec(MODEL, SOURCE, d_sae=D_SAE, d_in=64),), **LIGHT)).start()
    (tmp / "empty-bucket").mkdir()
    s3 = S3Server(tmp / "empty-bucket").__enter__()  # no export: the API does it all
    env = {"NEURONPEDIA_BASE_URL": server.url, "NP_MIRROR_HOME": str(tmp / "home"),
           "NP_MIRROR_EXPORTS_URL": s3.bucket_url}
    db = tmp / "m.duckdb"
    sae = make_emulator_sae(tmp / "sae", server.state, MODEL, SOURCE)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        assert main(["sync", SRC, "--range", "0:64", "--db", str(db), "--quiet", "--api-only"]) in (0, 1)
        assert main(["weights", "add", SRC, "--path", str(sae.path / "sae_weights.safetensors"), "--tensor", "W_dec",
                     "--db", str(db)]) == 0
    yield server, db, env
    s3.__exit__(None, None, None)
    server.stop()


@pytest.fixture
def cli(world, monkeypatch, capsys):
    server, db, env = world
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("NP_MIRROR_DEBUG", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def digest(path: Path) -> str:
    """The mirror file's bytes (and its log's, if any): what 'nothing stored' compares."""
    h = hashlib.sha256(path.read_bytes())
    wal = path.with_name(path.name + ".wal")
    if wal.exists():
        h.update(wal.read_bytes())
    return h.hexdigest()


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "np_mirror.app", *args]


# ---- the table: (argv, exit code, a piece of the one line) ---------------------------------------


CASES = [
    # an index beyond the source's 1,024 features
    (["geometry", "pca", SRC, "--features", "1,99999"], 2, "--features 99999 is beyond gpt2-small/0-res-jb, which has 1,024 features"),
    (["neighbors", f"{SRC}/5000"], 2, "bad input: feature 5000 is beyond gpt2-small/0-res-jb, which has 1,024 features (0..1023)"),
    (["sync", SRC, "--range", "2000:3000"], 2, "--range 2000:3000 starts beyond gpt2-small/0-res-jb, which has 1,024 features"),
    (["show", f"{SRC}/1", "--acts", "-1"], 2, "Invalid value for '--acts'"),
    (["sql", ""], 2, "empty"),
    (["show", f"{SRC}/99999"], 2, "1,024 features"),
    # unknown things, named as typed
    (["export", "--parquet", "{tmp}/out", "gpt2-small/no-such-source"], 2, "gpt2-small/no-such-source is not in the mirror"),
    (["sync", "nomodel/0-res-jb"], 2, "unknown source: nomodel/0-res-jb is not a source on"),
    (["sync", "gpt2-small/nope-set"], 2, "unknown source: gpt2-small/nope-set is not a source set on"),
    (["sources", "unknown-model"], 2, "no sources listed for model 'unknown-model'"),
    # outputs and devices, refused before any work
    (["geometry", "pca", SRC, "--features", "1,2", "--out", "{tmp}/x.jpg"], 2, "a plot is written as .png or .html"),
    (["export", "--parquet", "{db}/sub"], 2, "is a file, not a folder"),
    (["neighbors", f"{SRC}/5", "--device", "tpu"], 2, "Invalid value for '--device': takes cpu, cuda, cuda:N or mps, got 'tpu'"),
    (["geometry", "allpairs", SRC, "--device", "gpu"], 2, "Invalid value for '--device'"),
    (["geometry", "allpairs", SRC, "--dtype", "float64"], 2, "Invalid value for '--dtype'"),
    (["weights", "add", SRC, "--dtype", "int8"], 2, "Invalid value for '--dtype'"),
]


@pytest.mark.parametrize("args, code, shown", CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_each_case_is_one_line_its_exit_code_and_stores_nothing(cli, world, tmp_path, args, code, shown):
    _, db, _ = world
    before = digest(db)
    args = [a.replace("{tmp}", str(tmp_path)).replace("{db}", str(db)) for a in args]
    got, _, err = cli("--db", str(db), *args)  # the global --db: `sources` has none of its own
    assert got == code, err
    assert shown in one_line(err)
    assert digest(db) == before
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.jpg").exists()


def test_a_device_that_is_not_here_is_bad_input(cli, world):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _, db, _ = world
    before = digest(db)
    code, _, err = cli("neighbors", f"{SRC}/5", "--device", "cuda", "--db", str(db))
    assert code == 2 and "bad input: --device 'cuda' asked for, but no CUDA GPU is available" in one_line(err)
    assert digest(db) == before


def test_the_global_db_option_goes_before_the_command(cli, world):
    _, db, _ = world
    code, out, err = cli("--db", str(db), "status", "--format", "json")
    assert code == 0, err
    assert json.loads(out)[0]["total"] == D_SAE
    code, out2, _ = cli("status", "--format", "json", "--db", str(db))
    assert code == 0 and json.loads(out2) == json.loads(out)


def test_allpairs_and_umap_print_rows_in_every_format(cli, world):
    _, db, _ = world
    code, out, err = cli("geometry", "allpairs", SRC, "-k", "4", "--format", "json", "--limit", "6", "--db", str(db))
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 6 and set(rows[0]) == {"index", "explanation", "rank", "neighbor_index", "neighbor_explanation", "cosine"}
    assert all(r["neighbor_index"] != r["index"] for r in rows)
    code, out, err = cli("geometry", "allpairs", SRC, "-k", "4", "--format", "csv", "--limit", "3", "--db", str(db))
    assert code == 0 and out.splitlines()[0] == "index,explanation,rank,neighbor_index,neighbor_explanation,cosine"
    assert len(out.splitlines()) == 4
    features = ",".join(str(i) for i in range(40))
    code, out, err = cli("geometry", "umap", SRC, "--features", features, "-k", "5", "--format", "json", "--limit", "0",
                         "--db", str(db))
    assert code == 0, err
    rows = json.loads(out)
    assert [r["index"] for r in rows] == list(range(40)) and set(rows[0]) == {"index", "x", "y", "explanation"}


def test_umap_plot_names_points_by_their_index_and_colours_them_by_max_activation(cli, world, tmp_path):
    _, db, _ = world
    con = duckdb.connect(str(db), read_only=True)
    try:  # features the mirror holds with a max activation (LIGHT faults may leave a few out)
        chosen = [r[0] for r in con.execute('SELECT "index" FROM features WHERE max_act_approx IS NOT NULL '
                                            'AND "index" >= 20 ORDER BY "index" LIMIT 40').fetchall()]
    finally:
        con.close()
    assert len(chosen) == 40
    out_html = tmp_path / "umap.html"
    code, _, err = cli("geometry", "umap", SRC, "--features", ",".join(map(str, chosen)), "-k", "5", "--limit", "1",
                       "--out", str(out_html), "--db", str(db))
    assert code == 0, err
    html = out_html.read_text()
    assert "UMAP of 40 features of " + SRC.replace("/", "\\u002f") + ", coloured by max activation" in html  # JSON-escaped /
    assert '"colorscale"' in html and '"showscale":true' in html
    assert f"#{chosen[0]} " in html and f"#{chosen[-1]} " in html and "#0 " not in html  # their ids, not row numbers


# ---- serve on a taken port -----------------------------------------------------------------------


def test_serve_on_a_taken_port_says_so_before_announcing(cli, world):
    _, db, _ = world
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        code, _, err = cli("serve", "--port", str(port), "--db", str(db))
    finally:
        taken.close()
    assert code == 1
    line = one_line(err)
    assert f"port {port} on 127.0.0.1 is already in use" in line and "--port" in line and "serving" not in err


# ---- a read-only mirror and a read-only output folder --------------------------------------------


def _as_reader(tmp_path: Path) -> list[str]:
    """A command prefix under which files owned by root are read-only: nothing as a normal user,
    `setpriv` to `nobody` as root (root writes anything)."""
    if os.geteuid() != 0:
        return []
    if not Path("/usr/bin/setpriv").exists():
        pytest.skip("running as root without setpriv: a read-only file cannot be made")
    return ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def open_dir():
    """A folder that another user can reach (pytest's own are 0700 all the way up)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="np-mirror-ro-"))
    os.chmod(path, 0o755)
    yield path
    for sub in path.rglob("*"):
        if sub.is_dir():
            os.chmod(sub, 0o755)
    shutil.rmtree(path, ignore_errors=True)


def test_a_writer_on_a_read_only_mirror_says_it_is_read_only(world, open_dir):
    server, db, env = world
    tmp_path = open_dir
    folder = tmp_path / "ro"
    folder.mkdir()
    copy = folder / "m.duckdb"
    copy.write_bytes(db.read_bytes())
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, 0o777)
    os.chmod(copy, 0o444)
    os.chmod(folder, 0o555)
    before = digest(copy)
    full = {**os.environ, **env, "NP_MIRROR_HOME": str(home), "HOME": str(home)}
    full.pop("NP_MIRROR_DEBUG", None)
    prefix = _as_reader(tmp_path)
    cases = [
        (["sync", SRC, "--range", "0:70", "--db", str(copy), "--quiet"], "read-only"),
        (["weights", "add", SRC, "--path", str(tmp_path), "--db", str(copy)], "read-only"),
        (["export", "--parquet", str(folder / "out"), "--db", str(copy)], "is not writable"),
    ]
    for args, shown in cases:
        proc = subprocess.run(prefix + cli_cmd(*args), env=full, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        line = one_line(proc.stderr)
        assert shown in line, line
        if shown == "read-only":
            assert f"the mirror {copy} is read-only" in line and "not a mirror" not in line
    # reading it is fine
    proc = subprocess.run(prefix + cli_cmd("status", "--db", str(copy), "--format", "json"), env=full,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert digest(copy) == before and not (folder / "out").exists()


# ---- weights add offline: one line at once, before sae_lens loads -------------------------------

_OFFLINE_PROBE = """
import sys
from np_mirror.app import main
code = main(sys.argv[1:])
print("sae_lens imported" if "sae_lens" in sys.modules else "sae_lens not imported")
sys.exit(code)
"""


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "HF_ENDPOINT closed"])
def test_weights_add_offline_without_a_cache_fails_at_once(world, tmp_path, how):
    _, db, env = world
    full = {**os.environ, **env, "HF_HOME": str(tmp_path / "hf")}
    for key in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_ENDPOINT", "NP_MIRROR_DEBUG"):
        full.pop(key, None)
    if how == "HF_HUB_OFFLINE":
        full["HF_HUB_OFFLINE"] = "1"
        shown = "HF_HUB_OFFLINE is set"
    else:
        full["HF_ENDPOINT"] = f"http://127.0.0.1:{_closed_port()}"
        shown = "did not answer within 1 s"
    before = digest(db)
    proc = subprocess.run([sys.executable, "-c", _OFFLINE_PROBE, "weights", "add", SRC, "--db", str(db)],
                          env=full, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    line = one_line(proc.stderr)
    assert line.startswith("np-mirror: network error: gpt2-small-res-jb/blocks.0.hook_resid_pre is not in the Hugging Face cache")
    assert shown in line and "attach it from a local path" in line
    assert proc.stdout.strip() == "sae_lens not imported"
    assert digest(db) == before


# ---- sync_runs: a killed run is marked interrupted, a live one is not -----------------------------

_LIVE_RUN = """
import sys
from npclient.store.database import Database
from npclient.store import runs
db = Database(sys.argv[1])
print(runs.start_run(db, "live", {"range": [0, 1]}), flush=True)
sys.stdin.readline()
"""


def _runs(db: Path) -> dict[int, tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {r[0]: r[1:] for r in con.execute(
            "SELECT run_id, status, pid, host, targets, json_extract(options, '$.range') FROM sync_runs").fetchall()}
    finally:
        con.close()


def test_a_killed_sync_is_marked_interrupted_and_a_live_one_is_not(world, tmp_path, capsys, monkeypatch):
    server, db, env = world
    mirror = tmp_path / "runs.duckdb"
    mirror.write_bytes(db.read_bytes())
    full = {**os.environ, **env}
    full.pop("NP_MIRROR_DEBUG", None)
    # a sync killed after its first batch committed (a chosen point, not a sleep)
    killed = subprocess.run(cli_cmd("sync", SRC, "--range", "64:700", "--api-only", "--quiet", "--db", str(mirror)),
                            env={**full, "NP_MIRROR_FAULT": "write_batch.after_commit:1"}, capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [(dead_id, dead)] = [(i, r) for i, r in _runs(mirror).items() if r[0] == "running"]
    assert dead[2] == socket.gethostname() and dead[4] == "[64,700]"  # options are JSON
    # a live second process with its own running row, and a row from another host
    live = subprocess.Popen([sys.executable, "-c", _LIVE_RUN, str(mirror)], env=full, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        live_id = int(live.stdout.readline())
        con = duckdb.connect(str(mirror))
        con.execute("INSERT INTO sync_runs (run_id, targets, status, pid, host) VALUES (999, 'far', 'running', 1, 'elsewhere')")
        con.close()
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        code = main(["sync", SRC, "--range", "0:10", "--api-only", "--quiet", "--db", str(mirror)])
        capsys.readouterr()
        assert code in (0, 1)
        rows = _runs(mirror)
        assert rows[dead_id][0] == "interrupted"
        assert rows[live_id][0] == "running" and rows[live_id][1] == live.pid
        assert rows[999][0] == "running"  # another host's pid means nothing here
        newest = max(i for i in rows if i != 999)
        assert rows[newest][0] in ("ok", "failures") and rows[newest][3] == SRC
    finally:
        live.stdin.close()
        live.wait(timeout=60)


# ---- a busy mirror names its holder; --wait sets how long to wait --------------------------------

_HOLDER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
print("holding", flush=True)
sys.stdin.readline()
"""


def test_a_locked_mirror_names_the_other_process_and_wait_bounds_the_wait(cli, world, tmp_path):
    _, db, _ = world
    mirror = tmp_path / "busy.duckdb"
    mirror.write_bytes(db.read_bytes())
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(mirror)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        code, _, err = cli("--wait", "0", "status", "--db", str(mirror))
        assert code == 1
        line = one_line(err)
        assert f"locked by PID {holder.pid} (python" in line and "`np-mirror --wait SECONDS ...` waits longer" in line
        started = time.monotonic()
        code, _, err = cli("--wait", "0.5", "sync", SRC, "--range", "0:5", "--db", str(mirror), "--quiet")
        assert code == 1 and time.monotonic() - started < 60
        waited, last = err.strip().splitlines()
        assert f"waiting up to 0.5 s for PID {holder.pid}" in waited and "mirror busy" in last and "Traceback" not in err
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


# ---- Ctrl-C during a sync ------------------------------------------------------------------------


def test_ctrl_c_during_a_sync_keeps_what_was_written_and_says_so(world, tmp_path):
    _, db, env = world
    slow = EmulatorServer(EmulatorConfig(sources=(SourceSpec(MODEL, SOURCE, d_sae=D_SAE, d_in=64),), latency_s=0.2,
                                         **LIGHT)).start()
    try:
        mirror = tmp_path / "ctrl-c.duckdb"
        full = {**os.environ, **env, "NEURONPEDIA_BASE_URL": slow.url}
        full.pop("NP_MIRROR_DEBUG", None)
        # SIGINT back to its default in the child: a test run started in the background (`cmd &`
        # in a script) ignores SIGINT, and an ignored signal stays ignored across exec.
        proc = subprocess.Popen(cli_cmd("sync", SRC, "--api-only", "--quiet", "--concurrency", "1", "--db", str(mirror)),
                                env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        while not slow.state.log.matching("/api/feature") and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)  # polling for a fact (a feature request arrived), not sleeping for luck
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        line = one_line(err)
        kept = int(line.split("kept ")[1].split(" features")[0].replace(",", ""))
        assert line.endswith(f"kept {kept:,} features; rerun to resume")
        con = duckdb.connect(str(mirror), read_only=True)
        try:
            assert con.execute("SELECT count(*) FROM features").fetchall()[0][0] == kept
            assert con.execute("SELECT status FROM sync_runs").fetchall() == [("interrupted",)]
        finally:
            con.close()
    finally:
        slow.stop()
