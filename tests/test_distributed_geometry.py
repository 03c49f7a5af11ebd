"""Issue 15, section 3, the rest: all-pairs into the shared dataset as `neighbors` units, every
source with weights in one run, cross-source `match` over many pairs on Ray, and low-precision
dtypes on the Ray engine, each equal to the local engine.

One local Ray cluster for the session (`ray_cluster`, tests/conftest.py). The mirror here is
synced from the emulator (two sources of one model, adjacent layers, both with their planted
decoders attached), so every result is also checked against a local run of the same command.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

ray = pytest.importorskip("ray")

from helpers import mirror_neighbors, run_cli  # noqa: E402
from npclient import SourceId  # noqa: E402
from npclient.distributed import ray_allpairs  # noqa: E402
from npclient.geometry.symmetric import all_pairs_topk  # noqa: E402
from npclient.geometry.topk import topk_cosine  # noqa: E402

from test_distributed_allpairs import assert_same_topk, random_decoder  # noqa: E402

A = SourceId("gpt2-small", "0-res-jb")
B = SourceId("gpt2-small", "1-res-jb")
SIZES = {A: 256, B: 192}


@pytest.fixture(scope="session")
def cluster(ray_cluster):
    return ray_cluster


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(emulator, mirror) with A and B synced and their planted decoders attached."""
    from npclient import NeuronpediaClient
    from npclient.aio import run
    from npclient.mirror import Mirror
    from npclient.sync import run_sync
    from npclient.testing import EmulatorConfig, EmulatorServer, SourceSpec
    from npclient.testing.saes import make_emulator_sae

    tmp = tmp_path_factory.mktemp("ray-geometry")
    specs = tuple(SourceSpec(s.model_id, s.source, d_sae=n, d_in=64) for s, n in SIZES.items())
    server = EmulatorServer(EmulatorConfig(sources=specs)).start()
    try:
        mirror = Mirror(tmp / "m.duckdb", linger_s=0)

        async def sync():
            async with NeuronpediaClient(server.url, budget=None) as client:
                await run_sync(list(SIZES), db=mirror.db, client=client)

        run(sync())
        for sid in SIZES:
            sae = make_emulator_sae(tmp / f"sae-{sid.source}", server.state, sid.model_id, sid.source)
            mirror.attach_weights(sid, path=sae.path / "sae_weights.safetensors", tensor="W_dec", root=tmp / "weights")
        yield server, mirror
    finally:
        server.stop()


def _units(ds: Path, sid: SourceId) -> dict[str, bytes]:
    folder = ds / "neighbors" / f"model={sid.model_id}" / f"source={sid.source}"
    return {p.name: p.read_bytes() for p in sorted(folder.glob("part-*.parquet"))}


def _unit_rows(ds: Path, sid: SourceId) -> list[dict]:
    folder = ds / "neighbors" / f"model={sid.model_id}" / f"source={sid.source}"
    rows = []
    for p in sorted(folder.glob("part-*.parquet")):
        rows.extend(pq.read_table(p).to_pylist())
    return rows


def _same_rows(got: list[dict], ref: list[dict], tol: float = 1e-6) -> None:
    """Equal row for row; where the neighbour differs, a swap of near-equal cosines."""
    assert [(r["index"], r["rank"]) for r in got] == [(r["index"], r["rank"]) for r in ref]
    for a, b in zip(got, ref):
        if a["cosine"] is None or b["cosine"] is None:
            assert a["cosine"] is None and b["cosine"] is None and a["neighbor_index"] == b["neighbor_index"], (a, b)
        else:
            assert abs(a["cosine"] - b["cosine"]) < tol, (a, b)


# -- low precision on the Ray engine ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_ray_low_precision_equals_local_at_the_same_dtype(cluster, dtype):
    W = random_decoder(600, 32, 21, zero=(0, 300), nan=(7,), dup=((3, 4),))
    ref = all_pairs_topk(W, 12, block_rows=96, dtype=dtype)
    got = ray_allpairs(W, 12, block_rows=96, dtype=dtype)
    assert_same_topk(got, ref)
    # the values are exact float32 cosines of the chosen neighbours (rescored), not bf16 products
    U = torch.nn.functional.normalize(W, dim=1)
    r, c = 10, 3
    j = int(got.indices[r, c])
    assert abs(float(got.values[r, c]) - float(U[r] @ U[j])) < 1e-6


def test_ray_low_precision_on_cpu_actors_and_uneven_blocks(cluster):
    W = random_decoder(257, 16, 5, zero=(2,), nan=(250,))
    ref = all_pairs_topk(W, 9, block_rows=50, dtype="bfloat16")
    assert_same_topk(ray_allpairs(W, 9, block_rows=50, dtype="bfloat16", num_gpus_per_actor=0), ref)


def test_the_low_precision_tiles_merged_equal_local_without_ray():
    from npclient.distributed.pairs import merge_partials, run_tile, tiles
    from npclient.geometry.blocks import _rescore
    from npclient.geometry.device import normalize_rows
    from npclient.geometry.merge import _NEG, _sort_rows

    W = random_decoder(400, 12, 9)
    U, _ = normalize_rows(W)
    parts = [run_tile(U.to(torch.bfloat16), t, 64, 7, heap=False) for t in tiles(-(-400 // 64), 3)]
    vals, idx = merge_partials(parts, 400, 7)
    vals, idx = _sort_rows(torch.where(vals == _NEG, _NEG, _rescore(U, idx, lambda ii: U[ii])), idx)
    ref = all_pairs_topk(W, 8, block_rows=64, dtype="bfloat16")
    assert_same_topk(type(ref)(torch.cat((ref.values[:, :1], vals), 1), torch.cat((ref.indices[:, :1], idx), 1)), ref)


def test_the_bf16_candidate_tiles_merged_and_rescored_equal_local_to_the_bit():
    """The Ray engine's float32 path with a bf16 candidate pass, without Ray: heap tiles over U in
    bfloat16 (k = the candidate slots), merged, rescored by `exact_from_candidates`: bit-equal to
    the local `all_pairs_topk` with the same prefilter at another block size."""
    from npclient.distributed.pairs import merge_partials, run_tile, side_by_side, tiles
    from npclient.geometry.device import normalize_rows
    from npclient.geometry.prefilter import exact_from_candidates, slots

    duplicates = torch.randn(8, 12, generator=torch.Generator().manual_seed(3)).repeat_interleave(50, 0)
    for W in (random_decoder(400, 12, 9), duplicates * torch.linspace(0.5, 2, 400).unsqueeze(1)):
        U, _ = normalize_rows(W)
        kp = slots(7, 399)  # 30: clusters of 50 equal directions cannot be settled by the lists
        parts = [run_tile(U.to(torch.bfloat16), t, 64, kp, heap=True) for t in tiles(-(-400 // 64), 3)]
        ref = all_pairs_topk(W, 8, block_rows=96, prefilter="bfloat16")
        # the tiles' lists side by side (what the engine rescores) and merged to one list a row
        V, I = side_by_side(parts, 400, kp)
        assert V.shape[1] > kp
        merged = [t.numpy() for t in merge_partials(parts, 400, kp)]
        for vals, idx in (exact_from_candidates(U, U.bfloat16(), V, I, 7, list_width=kp),
                          exact_from_candidates(U, U.bfloat16(), *merged, 7)):
            assert torch.equal(ref.indices[:, 1:], idx) and torch.equal(ref.values[:, 1:], vals)


def test_an_unknown_dtype_is_bad_input(cluster):
    from npclient.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError) as e:
        ray_allpairs(random_decoder(20, 4, 0), 5, dtype="int8")
    assert e.value.option == "dtype"


# -- --dataset: neighbours as Parquet units with commit markers -------------------------------------


def test_dataset_units_equal_the_local_result_and_the_mirror_table(cluster, world, capsys, tmp_path):
    _, mirror = world
    db = str(mirror.path)
    code, _, err = run_cli(capsys, "geometry", "allpairs", str(A), "-k", "6", "--db", db, "--limit", "3")
    assert code == 0, err
    table = mirror_neighbors(mirror, A)
    assert len(table) == SIZES[A] * 6

    local_ds, ray_ds = tmp_path / "local", tmp_path / "ray"
    code, out, err = run_cli(capsys, "geometry", "allpairs", str(A), "-k", "6", "--db", db, "--dataset", str(local_ds),
                          "--unit-features", "100", "--format", "json")
    assert code == 0, err
    assert json.loads(out)[0]["units_written"] == 3 and "3 units written" in err
    code, _, err = run_cli(capsys, "geometry", "allpairs", str(A), "-k", "6", "--db", db, "--dataset", str(ray_ds),
                        "--unit-features", "100", "--engine", "ray")
    assert code == 0, err
    assert list(_units(local_ds, A)) == ["part-0000000000-0000000100.parquet", "part-0000000100-0000000200.parquet",
                                         "part-0000000200-0000000256.parquet"]
    assert list(_units(ray_ds, A)) == list(_units(local_ds, A))
    local_rows = _unit_rows(local_ds, A)
    assert local_rows == table  # the mirror's table, row for row (types included)
    _same_rows(_unit_rows(ray_ds, A), local_rows)
    # the reference itself: all_pairs_topk on the attached decoder
    ref = all_pairs_topk(mirror.decoder(A, device="cpu"), 6)
    assert [r["neighbor_index"] for r in local_rows] == ref.indices.reshape(-1).tolist()
    # the marker says what the rows were computed from
    marker = json.loads((local_ds / "_np/commits/neighbors/model=gpt2-small/source=0-res-jb/"
                         "part-0000000000-0000000100.json").read_text())
    record = mirror.store.weights(A)
    assert marker["k"] == 6 and marker["dtype"] == "float32" and marker["rows"] == 600
    assert marker["weights"]["sha256"] == record.sha256 and marker["weights"]["d_sae"] == SIZES[A]
    for ds in (local_ds, ray_ds):
        code, out, err = run_cli(capsys, "dataset", "verify", str(ds), "--format", "json")
        assert code == 0, err
        parts = json.loads(out)
        assert [(p["table"], p["source"], p["units"], p["rows"]) for p in parts] == [("neighbors", A.source, 3, 1536)]


def test_a_rerun_skips_committed_units_and_a_retried_unit_rewrites_the_same_bytes(world, tmp_path):
    """A process killed between a unit's file and its marker (the fault point) leaves a whole
    file without a marker; the rerun writes that unit again, byte for byte, and verify passes."""
    _, mirror = world
    ds = tmp_path / "ds"
    base = [sys.executable, "-m", "np_mirror.app", "geometry", "allpairs", str(A), "-k", "5", "--db", str(mirror.path),
            "--dataset", str(ds), "--unit-features", "64"]
    first = subprocess.run(base, capture_output=True, text=True, env={**os.environ, "NP_MIRROR_FAULT": ""})
    assert first.returncode == 0, first.stderr
    clean = _units(ds, A)
    assert len(clean) == 4
    victim = "part-0000000128-0000000192"
    (ds / f"_np/commits/neighbors/model=gpt2-small/source=0-res-jb/{victim}.json").unlink()
    (ds / f"neighbors/model=gpt2-small/source=0-res-jb/{victim}.parquet").unlink()
    # killed after writing the missing unit's file, before its marker
    killed = subprocess.run(base, capture_output=True, text=True,
                            env={**os.environ, "NP_MIRROR_FAULT": "dataset.before_marker:1"})
    assert killed.returncode != 0
    assert (ds / f"neighbors/model=gpt2-small/source=0-res-jb/{victim}.parquet").exists()
    assert not (ds / f"_np/commits/neighbors/model=gpt2-small/source=0-res-jb/{victim}.json").exists()
    status = subprocess.run([sys.executable, "-m", "np_mirror.app", "dataset", "status", str(ds)], capture_output=True,
                            text=True)
    assert status.returncode == 0 and "without a commit marker" in status.stderr, status.stderr
    again = subprocess.run(base, capture_output=True, text=True, env={**os.environ, "NP_MIRROR_FAULT": ""})
    assert again.returncode == 0, again.stderr
    assert "1 units written, 3 already committed" in again.stderr, again.stderr
    assert _units(ds, A) == clean  # the same bytes in the same places
    verify = subprocess.run([sys.executable, "-m", "np_mirror.app", "dataset", "verify", str(ds)], capture_output=True,
                            text=True)
    assert verify.returncode == 0 and "Traceback" not in verify.stderr, verify.stderr
    manifest = json.loads((ds / "_np/manifest.json").read_text())
    assert manifest["ok"] and {u["sha256"] for u in manifest["units"]} == \
        {hashlib.sha256(b).hexdigest() for b in clean.values()}


# -- --all-with-weights -----------------------------------------------------------------------------


def test_all_with_weights_runs_every_source_on_the_same_workers(cluster, world, capsys):
    from npclient.distributed import allpairs as ray_run

    _, mirror = world
    code, out, err = run_cli(capsys, "geometry", "allpairs", "--all-with-weights", "-k", "4", "--engine", "ray",
                          "--db", str(mirror.path), "--format", "json")
    assert code == 0, err
    assert [(r["source"], r["rows"]) for r in json.loads(out)] == [(str(A), SIZES[A] * 4), (str(B), SIZES[B] * 4)]
    assert f"{A}: {SIZES[A] * 4:,} rows (table neighbors)" in err and f"{B}: {SIZES[B] * 4:,} rows" in err
    assert "2 sources" in err
    pids = set(ray_run.last_run.pids)
    assert pids and pids <= _worker_pids()  # the tiles ran on the resident workers
    workers = _worker_ids()
    for sid in SIZES:
        _same_rows(mirror_neighbors(mirror, sid), _ref_rows(all_pairs_topk(mirror.decoder(sid, device="cpu"), 4)))
    # again, at another dtype: the same actors serve every source of both runs
    code, _, err = run_cli(capsys, "geometry", "allpairs", "--all-with-weights", "-k", "4", "--engine", "ray",
                        "--dtype", "bfloat16", "--db", str(mirror.path))
    assert code == 0, err
    assert _worker_ids() == workers and ray_run.last_run.pids <= _worker_pids()
    for sid in SIZES:
        W = mirror.decoder(sid, device="cpu")
        ref = all_pairs_topk(W, 4, dtype="bfloat16", block_rows=2048)
        _same_rows(mirror_neighbors(mirror, sid), _ref_rows(ref))


def test_all_with_weights_into_the_dataset(cluster, world, capsys, tmp_path):
    _, mirror = world
    ds = tmp_path / "ds"
    code, out, err = run_cli(capsys, "geometry", "allpairs", "--all-with-weights", "-k", "4", "--engine", "ray",
                          "--db", str(mirror.path), "--dataset", str(ds), "--unit-features", "100", "--format", "json")
    assert code == 0, err
    assert [(r["source"], r["units_written"]) for r in json.loads(out)] == [(str(A), 3), (str(B), 2)]
    for sid in SIZES:
        _same_rows(_unit_rows(ds, sid), _ref_rows(all_pairs_topk(mirror.decoder(sid, device="cpu"), 4)))
    code, out, err = run_cli(capsys, "dataset", "verify", str(ds), "--format", "json")
    assert code == 0, err
    assert [(p["source"], p["units"]) for p in json.loads(out)] == [(A.source, 3), (B.source, 2)]


def _worker_ids() -> set[str]:
    from npclient.distributed import pool

    return {a._actor_id.hex() for actors in pool._POOL.values() for a in actors}


def _worker_pids() -> set[int]:
    from npclient.distributed import pool

    return {ray.get(a.ready.remote())["pid"] for actors in pool._POOL.values() for a in actors}


def _ref_rows(ref) -> list[dict]:
    v, i = ref.values.numpy().astype(np.float64), ref.indices.numpy()
    return [{"index": r, "rank": c, "neighbor_index": int(i[r, c]), "cosine": None if np.isnan(v[r, c]) else float(v[r, c])}
            for r in range(i.shape[0]) for c in range(i.shape[1])]


# -- match over many pairs ----------------------------------------------------------------------


def _matches(mirror, a: SourceId, b: SourceId) -> list[dict]:
    return mirror.sql("""SELECT "index", rank, match_index, cosine FROM matches
                         WHERE model_id = ? AND source = ? AND against = ? ORDER BY "index", rank""",
                      [a.model_id, a.source, str(b)]).to_pylist()


def test_ray_match_over_pairs_equals_local_match(cluster, world, capsys):
    _, mirror = world
    db = str(mirror.path)
    local = {}
    for a, b in ((A, B), (B, A)):
        code, _, err = run_cli(capsys, "geometry", "match", str(a), str(b), "-k", "3", "--db", db, "--limit", "2")
        assert code == 0, err
        local[(a, b)] = _matches(mirror, a, b)
        assert len(local[(a, b)]) == SIZES[a] * 3
    code, out, err = run_cli(capsys, "geometry", "match", "--pairs", f"{A}:{B},{B}:{A}", "-k", "3", "--engine", "ray",
                          "--db", db, "--format", "json")
    assert code == 0, err
    summary = json.loads(out)
    assert [(r["source"], r["against"], r["rows"]) for r in summary] == [(str(A), str(B), 768), (str(B), str(A), 576)]
    assert "2 pairs" in err
    for pair, rows in local.items():
        rename = lambda rs: [{**r, "neighbor_index": r["match_index"]} for r in rs]  # noqa: E731
        _same_rows(rename(_matches(mirror, *pair)), rename(rows))
    # the reference: topk_cosine of the two decoders
    ref = topk_cosine(mirror.decoder(A, device="cpu"), mirror.decoder(B, device="cpu"), 3)
    assert [r["match_index"] for r in _matches(mirror, A, B)] == ref.indices.reshape(-1).tolist()


def test_a_worker_killed_during_a_match_is_restarted_and_the_result_is_still_local(cluster, world, monkeypatch):
    """Each worker SIGKILLs itself at its first pair (the fault point); Ray restarts it and the
    pair is retried: every pair still equals the local `topk_cosine`."""
    from npclient.distributed.match import MatchJob, last_match, ray_match

    _, mirror = world
    WA, WB = mirror.decoder(A, device="cpu"), mirror.decoder(B, device="cpu")
    monkeypatch.setenv("NP_MIRROR_FAULT", "ray.actor.pair:1")
    jobs = [MatchJob("a", WA, "b", WB), MatchJob("b", WB, "a", WA), MatchJob("a", WA, "a", WA)]
    got = ray_match(jobs, 4)
    assert last_match.pairs == 3 and last_match.restarted_pairs >= 1
    for job, found in zip(jobs, got):
        ref = topk_cosine(job.a, job.b, 4)
        assert_same_topk(found, ref)


def test_adjacent_layers_of_a_model_and_a_single_pair_on_ray(cluster, world, capsys):
    _, mirror = world
    db = str(mirror.path)
    code, out, err = run_cli(capsys, "geometry", "match", "--adjacent", "gpt2-small", "-k", "2", "--engine", "ray",
                          "--db", db, "--format", "json")
    assert code == 0, err
    assert [(r["source"], r["against"]) for r in json.loads(out)] == [(str(A), str(B))]
    ref = topk_cosine(mirror.decoder(A, device="cpu"), mirror.decoder(B, device="cpu"), 2)
    assert [r["match_index"] for r in _matches(mirror, A, B)] == ref.indices.reshape(-1).tolist()
    code, out, err = run_cli(capsys, "geometry", "match", str(B), str(A), "-k", "2", "--engine", "ray", "--db", db,
                          "--format", "json")
    assert code == 0, err
    ref = topk_cosine(mirror.decoder(B, device="cpu"), mirror.decoder(A, device="cpu"), 2)
    assert [r["match_index"] for r in _matches(mirror, B, A)] == ref.indices.reshape(-1).tolist()


# -- bad input: exit 2, one line -----------------------------------------------------------------


@pytest.mark.parametrize("args,needle", [
    (["geometry", "allpairs", str(A), "--all-with-weights"], "--all-with-weights"),
    (["geometry", "allpairs"], "--all-with-weights"),
    (["geometry", "allpairs", str(A), "--dtype", "int8"], "--dtype"),
    (["geometry", "allpairs", str(A), "--engine", "ray", "--device", "cpu"], "--device"),
    (["geometry", "allpairs", "--all-with-weights", "--engine", "local", "--address", "auto"], "--address"),
    (["geometry", "match", "--pairs", "gpt2-small/0-res-jb"], "--pairs"),
    (["geometry", "match", "--pairs", "nonsense:also", "--engine", "ray"], "--pairs"),
    (["geometry", "match", str(A), str(B), "--pairs", f"{A}:{B}"], "--pairs"),
    (["geometry", "match", str(A)], "--pairs"),
    (["geometry", "match", "--adjacent", "gemma-2-2b"], "--adjacent"),
    (["geometry", "match", "--pairs", f"{A}:gpt2-small/9-res-jb", "--engine", "ray"], "9-res-jb"),
])
def test_bad_input_is_exit_2_with_one_line(cluster, world, capsys, args, needle):
    _, mirror = world
    code, _, err = run_cli(capsys, *args, "--db", str(mirror.path))
    assert code == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1, err


def test_a_dataset_path_that_is_a_file_is_bad_input(world, capsys, tmp_path):
    _, mirror = world
    f = tmp_path / "a-file"
    f.write_text("x")
    code, _, err = run_cli(capsys, "geometry", "allpairs", str(A), "--dataset", str(f), "--db", str(mirror.path))
    assert code == 2 and "a-file" in err, err
