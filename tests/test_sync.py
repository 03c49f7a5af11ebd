"""Sync end to end against the emulator over loopback: truth, resume, kill -9, concurrent readers."""

import asyncio
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from helpers import LIGHT, SRC, small_config, table_contents
from npclient import NeuronpediaClient, RetryPolicy, SourceId, SourceSetId
from npclient.mirror import Mirror
from npclient.store.database import Database
from npclient.sync import SyncOptions, UnknownSourceError, run_sync
from npclient.testing import FaultConfig

FAST_RETRY = RetryPolicy(max_attempts=8, initial_wait_s=0.01, max_wait_s=0.1)


def sync_now(server, db, targets, timeout=5.0, **opts):
    async def go():
        async with NeuronpediaClient(server.url, budget=None, retry=FAST_RETRY, concurrency=8, timeout=timeout) as client:
            return await run_sync(targets, db=db, client=client, options=SyncOptions(**opts))

    return asyncio.run(go())


def test_full_sync_with_faults_equals_the_emulator_truth(np_emulator_factory, tmp_path):
    # a "slow" fault answers after slow_s, past the client's timeout: the client gives up and retries
    server = np_emulator_factory(small_config(d_sae=1000, hole_rate=0.02, faults=FaultConfig(rate=0.3, seed=3, slow_s=3.5), **LIGHT))
    state = server.state
    mirror = Mirror(tmp_path / "m.duckdb")
    summary = sync_now(server, mirror.db, [SourceId(*SRC)], timeout=2.5)
    holes = {i for i in range(1000) if state.is_hole(*SRC, i)}
    assert summary.sources[0].failed == {"not_found": len(holes)}
    assert summary.fetched == 1000 - len(holes)
    assert len({r.fault for r in state.requests if r.fault}) >= 4  # several kinds of fault were survived
    for i in range(1000):
        got = mirror.feature(f"{SRC[0]}/{SRC[1]}/{i}")
        if i in holes:
            assert got is None
            continue
        origin_get = got.raw.get("model") is not None
        truth = state.feature(*SRC, i) if origin_get else state.features_post_item(*SRC, i)
        assert got.raw == truth, i
    failures = mirror.sql("SELECT \"index\", reason, permanent FROM failures ORDER BY 1").to_pylist()
    assert {f["index"] for f in failures} == holes and all(f["permanent"] for f in failures)


def test_rerun_of_a_complete_source_sends_no_feature_request(np_emulator_factory, tmp_path):
    server = np_emulator_factory(small_config(d_sae=300, hole_rate=0.05, **LIGHT))
    db = Database(tmp_path / "m.duckdb")
    first = sync_now(server, db, [SourceId(*SRC)])
    assert first.fetched > 250 and first.exit_code == 1  # holes are failures
    before = len(server.state.requests)
    second = sync_now(server, db, [SourceId(*SRC)])
    assert len(server.state.requests) == before  # not even a listing: the mirror knows the size
    assert second.fetched == 0 and second.sources[0].already_present == first.fetched
    assert second.sources[0].skipped_failed == first.failed  # 404s are not asked again ...
    third = sync_now(server, db, [SourceId(*SRC)], retry_failed=True)
    feature_requests = [r for r in server.state.requests[before:] if "/feature" in r.path]
    assert len(feature_requests) >= first.failed and third.failed == first.failed  # ... unless asked


def test_range_set_and_parts(np_emulator_factory, tmp_path):
    server = np_emulator_factory(small_config(d_sae=300))
    mirror = Mirror(tmp_path / "m.duckdb")
    summary = sync_now(server, mirror.db, [SourceSetId("gpt2-small", "res-jb")], range=(10, 30), parts=("features", "explanations"))
    assert [s.source.source for s in summary.sources] == ["0-res-jb", "1-res-jb"]
    assert summary.fetched == 40
    assert mirror.sql("SELECT count(*) AS n FROM activations").to_pylist()[0]["n"] == 0
    assert mirror.sql("SELECT min(\"index\") AS a, max(\"index\") AS b FROM features").to_pylist()[0] == {"a": 10, "b": 29}
    raw = mirror.feature("gpt2-small/0-res-jb/12").raw
    assert "activations" not in raw and "explanations" in raw


def test_unknown_sources_fail_before_any_feature_request(np_emulator_factory, tmp_path):
    server = np_emulator_factory(small_config(d_sae=100))
    db = Database(tmp_path / "m.duckdb")
    for target in (SourceId("gpt2-small", "7-res-jb"), SourceSetId("gpt2-small", "nope"), SourceId("no-model", "0-res-jb")):
        with pytest.raises(UnknownSourceError):
            sync_now(server, db, [target])
    assert not [r for r in server.state.requests if "/feature" in r.path]


def _cli(*args, env):
    return [sys.executable, "-m", "np_mirror.app", *args]


def _kill_test_setup(np_emulator_factory, tmp_path):
    # Light payloads: the kill points are counted in batches (200 features), not bytes.
    server = np_emulator_factory(small_config(d_sae=1000, hole_rate=0.02, latency_s=0.02, **LIGHT))
    env = {**os.environ, "NEURONPEDIA_BASE_URL": server.url, "NP_MIRROR_HOME": str(tmp_path / "home")}
    env.pop("NP_MIRROR_FAULT", None)
    reference = tmp_path / "reference.duckdb"
    args = ["sync", f"{SRC[0]}/{SRC[1]}", "--quiet", "--concurrency", "2", "--api-only"]
    done = subprocess.run(_cli(*args, "--db", str(reference), env=env), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr  # holes are failures
    return env, args, reference


def _present(path) -> int:
    return sum(r["present"] for r in Mirror(path, read_only=True).status()) if path.exists() else 0


def test_kill_9_at_chosen_points_loses_nothing(np_emulator_factory, tmp_path):
    """SIGKILL after a batch committed and in the middle of a batch's transaction, at chosen
    points (NP_MIRROR_FAULT), never after a sleep: the rerun completes exactly the reference."""
    env, args, reference = _kill_test_setup(np_emulator_factory, tmp_path)
    killed = tmp_path / "killed.duckdb"
    partial = []
    for point in ("write_batch.after_commit:2", "write_batch.before_commit:1", "write_batch.before_commit:2",
                  "write_batch.after_commit:1"):
        proc = subprocess.run(_cli(*args, "--db", str(killed), env=env), env={**env, "NP_MIRROR_FAULT": point},
                              capture_output=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL, (point, proc.stderr)
        partial.append(_present(killed))  # a reader can open what the killed writer left
    # each kill landed mid-sync: something new was kept (after a commit) or nothing was (mid-transaction)
    assert 0 < partial[0] < partial[2] < 990 and partial[1] == partial[0] and partial[3] > partial[2], partial
    final = subprocess.run(_cli(*args, "--db", str(killed), env=env), env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 1, final.stderr
    want, got = table_contents(str(reference)), table_contents(str(killed))
    for table in want:
        assert got[table] == want[table], table
    assert len(want["features"]) > 900


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing(np_emulator_factory, tmp_path):
    """The seeded sweep over random moments (kills that land after the sync ended count for nothing)."""
    env, args, reference = _kill_test_setup(np_emulator_factory, tmp_path)
    killed = tmp_path / "killed.duckdb"
    rng = random.Random(1234)
    for _ in range(5):
        proc = subprocess.Popen(_cli(*args, "--db", str(killed), env=env), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        _present(killed)
    final = subprocess.run(_cli(*args, "--db", str(killed), env=env), env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 1, final.stderr
    want, got = table_contents(str(reference)), table_contents(str(killed))
    for table in want:
        assert got[table] == want[table], table


def test_reader_process_polls_during_a_sync_without_error(np_emulator_factory, tmp_path):
    server = np_emulator_factory(small_config(d_sae=1000, latency_s=0.05, **LIGHT))
    path = tmp_path / "m.duckdb"
    db = Database(path, linger_s=0)
    sync_now(server, db, [SourceId(*SRC)], range=(0, 10))  # the file exists before the reader starts
    reader_code = f"""
import sys, time
from npclient.mirror import Mirror
counts, deadline = [], time.monotonic() + 6.0
while time.monotonic() < deadline and not (len(counts) >= 10 and counts[-1] == 1000):  # until the sync is done
    n = Mirror({str(path)!r}, read_only=True, linger_s=0).sql("SELECT count(*) AS n FROM features").to_pylist()[0]["n"]
    counts.append(n)
    time.sleep(0.05)
print(len(counts), counts[0], counts[-1], int(counts == sorted(counts)))
"""
    reader = subprocess.Popen([sys.executable, "-c", reader_code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)

    async def go():
        async with NeuronpediaClient(server.url, budget=None, retry=FAST_RETRY, concurrency=2) as client:
            return await run_sync([SourceId(*SRC)], db=db, client=client, options=SyncOptions(batch_features=50, flush_s=0.3))

    summary = asyncio.run(go())
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    polls, first, last, monotonic = map(int, out.split())
    assert polls >= 10 and monotonic == 1
    assert first < 1000 and last >= first
    assert summary.fetched == 990


def test_two_syncs_on_one_file_take_turns_and_duplicate_nothing(np_emulator_factory, tmp_path):
    server = np_emulator_factory(small_config(d_sae=400, hole_rate=0.02, latency_s=0.05, **LIGHT))
    env = {**os.environ, "NEURONPEDIA_BASE_URL": server.url, "NP_MIRROR_HOME": str(tmp_path / "home")}
    args = ["sync", f"{SRC[0]}/{SRC[1]}", "--quiet", "--concurrency", "2", "--api-only"]
    reference, shared = tmp_path / "reference.duckdb", tmp_path / "shared.duckdb"
    done = subprocess.run(_cli(*args, "--db", str(reference), env=env), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr  # holes
    procs = [subprocess.Popen(_cli(*args, "--db", str(shared), env=env), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [1, 1], errors  # both finished; only the holes failed
    assert not any("Traceback" in e or "busy" in e for e in errors), errors
    want, got = table_contents(str(reference)), table_contents(str(shared))
    for table in ("features", "activations", "explanations", "raw_chunks"):
        assert got[table] == want[table], table
