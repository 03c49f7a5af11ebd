"""Issue 15, section 3: all-pairs on a Ray cluster equals `all_pairs_topk` on one machine.

One local Ray cluster for the whole session (2 CPUs, 2 logical GPUs, no dashboard): starting
one costs seconds, so every test shares it, and the actors it starts stay resident between
tests (all but one test use the default shape, one actor per logical GPU, so they share them). Equality is the issue's: the same indices except swaps between neighbours whose cosines
differ by < 1e-6, values within float32 rounding, NaN where the local engine has NaN.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from helpers import mirror_neighbors, run_cli, synced_mirror_with_sae  # noqa: E402
from npclient import SourceId  # noqa: E402
from npclient.distributed import allpairs as ray_run  # noqa: E402
from npclient.distributed import ray_allpairs  # noqa: E402
from npclient.distributed.pairs import block_pairs, tiles  # noqa: E402
from npclient.errors import InvalidOptionError  # noqa: E402
from npclient.geometry.symmetric import all_pairs_topk  # noqa: E402
from npclient.testing.saes import plant  # noqa: E402

SRC = SourceId("gpt2-small", "0-res-jb")


@pytest.fixture(scope="session")
def cluster(ray_cluster):
    return ray_cluster


def assert_same_topk(got, ref, tol: float = 1e-6) -> None:
    """The issue's equality of two all-pairs results."""
    gv, gi = got.values.numpy(), got.indices.numpy()
    rv, ri = ref.values.numpy(), ref.indices.numpy()
    assert gv.shape == rv.shape and gi.shape == ri.shape
    assert np.array_equal(np.isnan(gv), np.isnan(rv))
    np.testing.assert_allclose(np.nan_to_num(gv, nan=9.0), np.nan_to_num(rv, nan=9.0), rtol=0, atol=tol)
    for r, c in zip(*np.nonzero(gi != ri)):
        # a swap: the two neighbours' cosines differ by < tol (a near-tie, or a tie at the k-th place)
        assert abs(float(gv[r, c]) - float(rv[r, c])) < tol, (r, c)
        near = np.abs(rv[r] - rv[r, c]) < tol
        assert gi[r, c] in ri[r][near] or abs(float(rv[r, c]) - float(rv[r, -1])) < tol, (r, c)


def random_decoder(n: int, d: int, seed: int, *, zero=(), nan=(), dup=()) -> torch.Tensor:
    W = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    for r in zero:
        W[r] = 0
    for r in nan:
        W[r, r % d] = float("nan")
    for a, b in dup:  # an exact tie: two equal directions
        W[b] = 2 * W[a]
    return W


def test_tiles_hold_each_block_pair_once():
    for nb in (1, 2, 5, 12):
        for workers in (1, 2, 8):
            got = [p for t in tiles(nb, workers) for p in t]
            assert sorted(got) == block_pairs(nb)


@pytest.mark.parametrize("heap", [True, False])
def test_the_tiles_merged_equal_local_without_ray(heap):
    """The worker's two tile paths (numba heap on CPU; torch dense, what GPU actors run), every
    tile in this process, merged: the local result. No cluster needed."""
    from npclient.distributed.pairs import merge_partials, run_tile
    from npclient.geometry.device import normalize_rows

    W = random_decoder(500, 12, 11, dup=((1, 2),))
    U, bad = normalize_rows(W)
    assert not bad.any()
    parts = [run_tile(U, t, 48, 9, heap=heap) for t in tiles(-(-500 // 48), 3)]
    vals, idx = merge_partials(parts, 500, 9)
    ref = all_pairs_topk(W, 10, block_rows=48)
    assert_same_topk(type(ref)(torch.cat((ref.values[:, :1], vals), 1), torch.cat((ref.indices[:, :1], idx), 1)), ref)


def test_ray_equals_local_on_a_planted_decoder(cluster):
    sae = plant(600, 64, seed=3, n_zero=2, n_nan=1)
    W = sae.W_dec
    ref = all_pairs_topk(W, 25, block_rows=128)
    got = ray_allpairs(W, 25, block_rows=128)
    assert ray_run.last_run.actors >= 1 and ray_run.last_run.tiles > 2
    assert_same_topk(got, ref)
    bad = ~np.isfinite(W).all(1) | (np.abs(W).sum(1) == 0)
    assert bad.sum() == 3 and np.isnan(got.values.numpy()[bad]).all()


@pytest.mark.parametrize("n,d,k,block,gpus", [
    (700, 16, 10, 64, 0),     # CPU actors (num_cpus=1), 11 blocks
    (700, 16, 10, 64, None),  # one actor per (logical) GPU, as every other test
    (257, 8, 40, 50, None),   # uneven last block, k wider than a block
    (30, 4, 50, 7, None),     # k > n: every row lists all rows
])
def test_ray_equals_local_on_random_decoders_with_zero_and_nan_rows(cluster, n, d, k, block, gpus):
    W = random_decoder(n, d, seed=n + k, zero=(0, n // 2), nan=(3, n - 1), dup=((5, 9), (10, n - 3)))
    ref = all_pairs_topk(W, k, block_rows=block)
    got = ray_allpairs(W, k, block_rows=block, num_gpus_per_actor=gpus)
    assert_same_topk(got, ref)
    assert (got.indices[:, 0] == torch.arange(n)).all()  # self first, as Neuronpedia lays it out


def test_degenerate_decoders_match_local(cluster):
    for W, k in [(random_decoder(40, 6, 1, zero=range(39)), 5),  # one valid row
                 (random_decoder(20, 6, 2, zero=range(20)), 5),  # no valid row
                 (random_decoder(12, 6, 3), 1),                  # self only
                 (random_decoder(12, 6, 4), 0)]:                 # nothing
        assert_same_topk(ray_allpairs(W, k, block_rows=4), all_pairs_topk(W, k, block_rows=4))


def test_bad_options_are_input_errors(cluster):
    W = random_decoder(20, 4, 0)
    with pytest.raises(InvalidOptionError) as e:
        ray_allpairs(W, -1)
    assert e.value.option == "k"
    with pytest.raises(InvalidOptionError) as e:
        ray_allpairs(W, 5, num_gpus_per_actor=4)  # the cluster has 2
    assert e.value.option == "num_gpus_per_actor"


def test_a_killed_actor_is_restarted_and_the_result_is_still_equal(cluster, monkeypatch):
    """Each actor SIGKILLs itself after its 3rd block pair (the fault point); Ray restarts it,
    the tile it was running is retried, and the merged result is the local one."""
    W = random_decoder(900, 16, 7, zero=(4,), nan=(8,))
    ref = all_pairs_topk(W, 12, block_rows=64)
    monkeypatch.setenv("NP_MIRROR_FAULT", "ray.actor.pair:3")
    got = ray_allpairs(W, 12, block_rows=64)
    assert ray_run.last_run.restarted_tiles >= 1  # tiles really ran on restarted actors
    assert_same_topk(got, ref)


def test_importing_npclient_and_the_package_does_not_load_ray():
    code = ("import sys, npclient, npclient.distributed, npclient.geometry.api\n"
            "from np_mirror.app import main\n"
            "try:\n    main(['geometry', 'allpairs', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('RAY=' + str('ray' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "RAY=False" in out.stdout and "--engine" in out.stdout


def test_without_ray_the_engine_is_bad_input_that_names_the_extra():
    code = ("import sys\nsys.modules['ray'] = None  # as if the extra were not installed\n"
            "from npclient.distributed import ray_allpairs\nfrom npclient.errors import InvalidOptionError\n"
            "try:\n    ray_allpairs([[1.0, 0.0], [0.0, 1.0]], 2)\n"
            "except InvalidOptionError as e:\n    print('OPTION=' + str(e.option), e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "OPTION=engine" in out.stdout and "np-mirror[ray]" in out.stdout, out.stdout + out.stderr


# -- the CLI: `--engine ray` stores what `--engine local` stores ------------------------------


@pytest.fixture(scope="module")
def mirror_world(tmp_path_factory):
    server, mirror, _ = synced_mirror_with_sae(tmp_path_factory.mktemp("ray-allpairs"), SRC)
    yield server, mirror
    server.stop()


def test_cli_engine_ray_stores_what_engine_local_stores(cluster, mirror_world, capsys):
    server, mirror = mirror_world
    db = str(mirror.path)
    code, _, err = run_cli(capsys, "geometry", "allpairs", str(SRC), "-k", "8", "--engine", "local", "--db", db,
                        "--format", "json", "--limit", "5")
    assert code == 0, err
    local = mirror_neighbors(mirror, SRC)
    assert len(local) == 512 * 8
    code, out, err = run_cli(capsys, "geometry", "allpairs", str(SRC), "-k", "8", "--engine", "ray", "--db", db,
                          "--format", "json", "--limit", "5")
    assert code == 0, err
    assert len(json.loads(out)) == 5
    distributed = mirror_neighbors(mirror, SRC)
    assert [(r["index"], r["rank"]) for r in distributed] == [(r["index"], r["rank"]) for r in local]
    for a, b in zip(distributed, local):
        ca, cb = a["cosine"], b["cosine"]
        if ca is None or cb is None or ca != ca or cb != cb:  # an invalid row's NaN (or NULL) entries
            assert (ca is None or ca != ca) and (cb is None or cb != cb), (a, b)
            assert a["neighbor_index"] == b["neighbor_index"], (a, b)
        else:  # a swap only between neighbours whose cosines differ by < 1e-6
            assert abs(ca - cb) < 1e-6, (a, b)
    # the emulator's own topkCosSim agrees with the stored table (the planted truth)
    truth = server.state.feature(SRC.model_id, SRC.source, 7)
    assert [r["neighbor_index"] for r in distributed if r["index"] == 7] == truth["topkCosSimIndices"][:8]


@pytest.mark.parametrize("extra,flag", [
    (["--engine", "ray", "--device", "cpu"], "--device"),
    (["--engine", "local", "--address", "auto"], "--address"),
])
def test_cli_engine_options_that_do_not_fit_are_bad_input(cluster, mirror_world, capsys, extra, flag):
    _, mirror = mirror_world
    code, _, err = run_cli(capsys, "geometry", "allpairs", str(SRC), "-k", "4", "--db", str(mirror.path), *extra)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and flag in err, err


def test_cli_unknown_engine_is_bad_input(mirror_world, capsys):
    _, mirror = mirror_world
    code, _, err = run_cli(capsys, "geometry", "allpairs", str(SRC), "--engine", "spark", "--db", str(mirror.path))
    assert code == 2 and "spark" in err, err


def test_the_fault_variable_reaches_the_workers_only_when_set(monkeypatch):
    from npclient.distributed.cluster import fault_spec

    monkeypatch.delenv("NP_MIRROR_FAULT", raising=False)
    assert fault_spec() is None
    monkeypatch.setenv("NP_MIRROR_FAULT", "ray.actor.pair:2")
    assert fault_spec() == "ray.actor.pair:2"
