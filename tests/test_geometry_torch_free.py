"""The torch-free CPU all-pairs (`cpu_allpairs`): MKL's bf16 GEMM from torch's own CPU library
(`mkl_bf16`), numpy unit rows (`unit_rows`) and the numba heap scan, with no `import torch`.

Its answer must be `all_pairs_topk`'s to the bit, including against torch's own bf16 candidate
pass (another GEMM, products rounded to bf16): both are exact float32 answers from unit rows
that one function normalises. The command `np-mirror geometry allpairs` takes this path on an
AMX CPU and must then never load torch; elsewhere it falls back to torch with the same table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from npclient.errors import InvalidOptionError
from npclient.geometry import all_pairs_topk, cpu_allpairs, mkl_bf16, normalize_rows
from npclient.geometry.dense import _lower_bounds
from npclient.geometry.exclusive import run_pairs_exclusive
from npclient.geometry.heap_kernel import lower_bounds
from npclient.geometry.merge import TopK
from npclient.geometry.unit_rows import unit_rows
from test_geometry_knn import assert_same_topk, brute_all_pairs, random_matrix

needs_mkl = pytest.mark.skipif(mkl_bf16.gemm() is None, reason="torch's CPU library carries no MKL bf16 GEMM here")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def with_clusters(n: int, d: int, seed: int) -> np.ndarray:
    """Random rows, a cluster of 40 near-duplicates and 10 exact duplicates (rows whose lists
    cannot be settled and must take the whole-row path)."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, d), dtype=np.float32)
    W[100:140] = W[100] + 1e-4 * rng.standard_normal((40, d), dtype=np.float32)
    W[200:210] = W[200]
    return W


def test_bf16_bits_round_as_torch_does():
    x = np.random.default_rng(0).standard_normal(200_001).astype(np.float32) * 1e3
    x[:7] = [np.nan, np.inf, -np.inf, 3.4028235e38, -3.4028235e38, 1e-40, -0.0]
    bits = mkl_bf16.to_bf16_bits(x)
    theirs = torch.from_numpy(x).bfloat16().view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(bits[1:], theirs[1:])
    assert np.isnan(mkl_bf16.widen_bf16(bits[:1])).all()
    assert np.array_equal(mkl_bf16.widen_bf16(bits), torch.from_numpy(x).bfloat16().float().numpy(), equal_nan=True)


@needs_mkl
def test_mkl_gemm_is_the_float64_product_of_its_bf16_inputs():
    rng = np.random.default_rng(1)
    A = mkl_bf16.to_bf16_bits(rng.standard_normal((37, 50), dtype=np.float32))
    B = mkl_bf16.to_bf16_bits(rng.standard_normal((23, 50), dtype=np.float32))
    exact = mkl_bf16.widen_bf16(A).astype(np.float64) @ mkl_bf16.widen_bf16(B).astype(np.float64).T
    scale = np.abs(mkl_bf16.widen_bf16(A)).astype(np.float64) @ np.abs(mkl_bf16.widen_bf16(B)).astype(np.float64).T
    wide = np.full((37, 30), -7.0, dtype=np.float32)  # C with a row stride wider than its rows
    g = mkl_bf16.gemm()
    g.nt(A, B, wide[:, :23])
    assert (np.abs(wide[:, :23] - exact) <= 50 * 2.0 ** -24 * scale * 1.01).all()  # float32 accumulation
    assert (wide[:, 23:] == -7.0).all()  # nothing written past the rows' ends
    with pytest.raises(ValueError, match="bf16 gemm"):
        g.nt(A, B[:, :49].copy(), np.empty((37, 23), dtype=np.float32))
    with pytest.raises(ValueError, match="bf16 gemm"):
        g.nt(A.astype(np.int16), B, np.empty((37, 23), dtype=np.float32))


def test_unit_rows_and_normalize_rows_agree_to_the_bit():
    W = np.random.default_rng(2).standard_normal((9, 16)).astype(np.float32)
    W[1] = 0
    W[2, 3] = np.nan
    W[3, 0] = np.inf
    W[4] = 3e38  # the norm overflows float32 on finite entries: a valid, all-zero row (as numpy)
    unit, invalid = unit_rows(W)
    assert invalid.tolist() == [False, True, True, True, False, False, False, False, False]
    assert (unit[1:4] == 0).all() and (unit[4] == 0).all()
    assert np.allclose(np.linalg.norm(unit[5:], axis=1), 1, atol=1e-6)
    t_unit, t_invalid = normalize_rows(W)
    assert np.array_equal(t_unit.numpy(), unit) and np.array_equal(t_invalid.numpy(), invalid)


def test_numpy_lower_bounds_equal_torch_ones():
    S = np.random.default_rng(3).standard_normal((300, 700)).astype(np.float32)
    for dim in (0, 1):
        for k in (1, 7, 40):
            ours, theirs = lower_bounds(S, k, dim), _lower_bounds(torch.from_numpy(S), k, dim)
            assert (ours is None) == (theirs is None)
            if ours is not None:
                assert np.array_equal(ours, theirs.numpy())
    assert lower_bounds(S[:5], 40, 0) is None  # too few rows for 2k groups


@needs_mkl
@pytest.mark.parametrize("block,threads", [(256, 1), (256, 2), (1000, 2), (4096, 2)])
def test_all_pairs_arrays_is_all_pairs_topk_to_the_bit(block, threads):
    W = with_clusters(2500, 48, 4)
    v, i = cpu_allpairs.all_pairs_arrays(W, 25, block_rows=block, threads=threads, prefilter="bfloat16")
    ref_v, ref_i = brute_all_pairs(W, 26)
    assert_same_topk(TopK(torch.from_numpy(v), torch.from_numpy(i)), ref_v, ref_i)
    # torch's own candidate pass (oneDNN, products rounded to bf16): other candidates, the same bits
    theirs = all_pairs_topk(W, 25, block_rows=block, prefilter="bfloat16")
    assert np.array_equal(theirs.indices.numpy(), i) and np.array_equal(theirs.values.numpy(), v)


@needs_mkl
def test_all_pairs_arrays_declines_what_it_does_not_answer():
    W = random_matrix(50, 8, 5)
    assert cpu_allpairs.all_pairs_arrays(random_matrix(50, 8, 5, zero=[3]), 5, prefilter="bfloat16") is None
    assert cpu_allpairs.all_pairs_arrays(random_matrix(50, 8, 5, nan=[7]), 5, prefilter="bfloat16") is None
    assert cpu_allpairs.all_pairs_arrays(W, 1, prefilter="bfloat16") is None  # self only: nothing to search
    assert cpu_allpairs.all_pairs_arrays(W.astype(np.float64), 5, prefilter="bfloat16") is None
    assert cpu_allpairs.all_pairs_arrays(W, 5, prefilter="none") is None
    with pytest.raises(InvalidOptionError):
        cpu_allpairs.all_pairs_arrays(W, 5, prefilter="int8")
    v, i = cpu_allpairs.all_pairs_arrays(W, 80, prefilter="bfloat16")  # k > n: every other row, self first
    assert v.shape == (50, 50) and (i[:, 0] == np.arange(50)).all()
    assert sorted(i[7].tolist()) == list(range(50))


def test_pairs_never_share_a_block_at_once_and_errors_reach_the_caller():
    pairs = [(a, b) for a in range(6) for b in range(a, 6)]
    held: set[int] = set()
    lock = threading.Lock()
    clashes: list[tuple[int, int]] = []
    done: list[tuple[int, int]] = []

    def fn(pair, scratch):
        with lock:
            if held & set(pair):
                clashes.append(pair)
            held.update(pair)
        scratch.append(pair)
        with lock:
            held.difference_update(pair)
            done.append(pair)

    run_pairs_exclusive(pairs, fn, 3, list, None)
    assert not clashes and sorted(done) == sorted(pairs)

    def fails(pair, scratch):
        if pair == (2, 3):
            raise ValueError("block 2, 3")

    with pytest.raises(ValueError, match="block 2, 3"):
        run_pairs_exclusive(pairs, fails, 2, list, None)

    def no_scratch():
        raise MemoryError("no scratch")

    with pytest.raises(MemoryError, match="no scratch"):
        run_pairs_exclusive(pairs, lambda p, s: None, 2, no_scratch, None)


def _run(code: str, env: dict) -> str:
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def test_importing_the_geometry_package_does_not_import_torch():
    out = _run("import sys, npclient.geometry, npclient.geometry.jobs, npclient.geometry.api, "
               "npclient.geometry.cpu_allpairs; print('torch' in sys.modules)", dict(os.environ))
    assert out.strip() == "False"


def test_the_allpairs_command_skips_torch_where_it_can_and_stores_the_same_table(tmp_path):
    from safetensors.numpy import save_file

    from npclient.store.database import Database
    from npclient.testing.bigsource import write_big_source
    from npclient.weights import attach

    W = with_clusters(1500, 40, 6)
    db_path = tmp_path / "mirror.duckdb"
    db = Database(db_path)
    try:
        sid = write_big_source(db_path, "m", "0-x", W.shape[0], acts_every=1 << 30, db=db)
        save_file({"W_dec": W}, str(tmp_path / "sae.safetensors"))
        attach(db, sid, path=tmp_path / "sae.safetensors", tensor="W_dec", root=tmp_path / "weights")
    finally:
        db.close()
    code = (
        "import sys, json\n"
        "from np_mirror.app import main\n"
        f"code = main(['geometry', 'allpairs', 'm/0-x', '-k', '25', '--db', {str(db_path)!r}, '--format', 'json'])\n"
        "print(json.dumps({'code': code, 'torch': 'torch' in sys.modules}))\n"
    )
    env = {**os.environ, "NP_MIRROR_HOME": str(tmp_path / "home")}
    status = json.loads(_run(code, env).strip().splitlines()[-1])
    assert status["code"] == 0
    assert status["torch"] is (not cpu_allpairs.available()), "torch loaded where the torch-free path applies"
    con = Database(db_path)
    try:
        with con.connect() as cur:
            rows = cur.execute('SELECT "index", rank, neighbor_index, cosine FROM neighbors ORDER BY "index", rank').fetchnumpy()
    finally:
        con.close()
    ref = all_pairs_topk(W, 25)
    assert np.array_equal(np.asarray(rows["neighbor_index"]).reshape(-1, 25), ref.indices.numpy())
    assert np.array_equal(np.asarray(rows["cosine"]).reshape(-1, 25), ref.values.numpy().astype(np.float64))


def test_a_gpu_torch_could_pick_keeps_the_call_on_torch(monkeypatch):
    import importlib.metadata

    from npclient.geometry import jobs

    monkeypatch.setattr(os.path, "exists", lambda p: p == "/dev/nvidiactl")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.13.0+cpu")
    assert cpu_allpairs.gpu_possible() is False  # a CPU build of torch never finds it
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.13.0")
    assert cpu_allpairs.gpu_possible() is True
    # what the torch-free path declines before it reads anything (mirror None: never touched)
    sid = jobs._sid("m/0-x")
    common = dict(progress=None, block_rows=None)
    assert jobs._torch_free(None, sid, 25, engine="local", device=None, dtype=None, **common) is None  # torch loaded here
    monkeypatch.delitem(sys.modules, "torch")
    try:
        assert jobs._torch_free(None, sid, 25, engine="local", device=None, dtype=None, **common) is None  # a GPU
        assert jobs._torch_free(None, sid, 25, engine="local", device="cuda", dtype=None, **common) is None
        assert jobs._torch_free(None, sid, 25, engine="ray", device=None, dtype=None, **common) is None
        assert jobs._torch_free(None, sid, 25, engine="local", device="cpu", dtype="bfloat16", **common) is None
    finally:
        monkeypatch.undo()
    assert "torch" in sys.modules
