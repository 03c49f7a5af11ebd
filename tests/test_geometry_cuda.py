"""The geometry engine on CUDA gives the CPU's float32 answers (skipped without a GPU).

Every test runs a public function of `npclient.geometry.knn` on CUDA (`device=`, and `dtype=`
for low precision) and compares it with the same call on CPU (`device="cpu"`, float32) and,
where it is cheap, with the dense brute-force oracles of `test_geometry_knn.py`. Matrices carry
the awkward rows: all-zero, NaN, Inf, and exact duplicates (ties in cosine).

Agreement, float32 (each float32 test starts with TF32 *allowed*; `resolve_dtype` must switch
it off, so the float32 matmuls are exact):
- the same NaN slots, values within `VAL_ATOL` (cuBLAS and the CPU BLAS sum in other orders:
  a few float32 ulps);
- the same indices, except where a reference value lies within `TIE` (1e-6) of its neighbour
  in the row (or of the next candidate after the k-th place): such near-ties may swap.

Low precision (bfloat16 / float16 select with a low-precision matmul whose *output* is rounded
too, e.g. bf16 has 8 significant bits: cosines near 0.2 are rounded to ~1e-3, then the chosen
neighbours are rescored in float32):
- values are the exact float32 cosines of the chosen pairs (within `VAL_ATOL`);
- zero/NaN rows are placed exactly as in float32;
- recall@k against CPU float32 >= `RECALL[dtype]` (bf16 0.97, fp16 0.99: the same searches
  on CPU measured 0.982-0.991 for bf16 and 0.996-0.999 for fp16 on these Gaussian matrices of
  64-768 dims; the near-tie rule below is the sharper check);
- every float32 neighbour that was missed is a near-tie: its cosine is at most `NEAR[dtype]`
  above the worst neighbour chosen (bf16 1e-2, fp16 2e-3: a few rounding steps of the output).

`NP_GEOMETRY_TEST_DEVICE=cpu` runs the same comparisons with the CUDA side replaced by CPU
`selection="dense"` (the selection CUDA uses), to check the tests themselves on a machine
without a GPU; the tests that need a real GPU skip then.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from npclient.geometry import (
    TopK,
    all_pairs_topk,
    feature_topk,
    match_sources,
    pick_device,
    query_topk,
    resolve_dtype,
    topk_cosine,
)
from npclient.testing.saes import plant, split_families
from test_geometry_knn import brute_all_pairs, brute_topk, random_matrix

_EMULATE = os.environ.get("NP_GEOMETRY_TEST_DEVICE", "").strip().lower() == "cpu"
HAVE_CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not (HAVE_CUDA or _EMULATE), reason="needs CUDA (torch.cuda.is_available() is False)")
needs_real_cuda = pytest.mark.skipif(not HAVE_CUDA, reason="needs a real CUDA device")

DEV = "cpu" if _EMULATE else "cuda"
GPU = {"device": DEV, "selection": "dense"} if _EMULATE else {"device": DEV}
CPU = {"device": "cpu"}

VAL_ATOL = 1e-6
TIE = 1e-6
RECALL = {"bfloat16": 0.97, "float16": 0.99}
NEAR = {"bfloat16": 1e-2, "float16": 2e-3}


@pytest.fixture
def tf32_allowed():
    """TF32 *allowed* when the test starts (as many training scripts leave it): the float32 paths
    must switch it off themselves (`resolve_dtype`). Restored afterwards."""
    if not HAVE_CUDA:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


# --------------------------------------------------------------------------- comparisons


def _np(top: TopK | tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(top, TopK):
        assert top.values.device.type == "cpu" and top.indices.device.type == "cpu"
        return top.numpy()
    return top


def assert_agrees(got: TopK, ref: TopK | tuple[np.ndarray, np.ndarray], *, atol: float = VAL_ATOL,
                  tie: float = TIE) -> None:
    """`got` equals the reference: NaN slots, values within atol, indices wherever the
    reference value is more than `tie` away from its neighbours in the row. The reference may
    hold one column more (the next candidate), which spots a near-tie at the k-th place."""
    v, i = _np(got)
    rv, ri = _np(ref)
    assert v.dtype == np.float32 and i.dtype == np.int64
    k = v.shape[1]
    nxt = rv[:, k:k + 1].astype(np.float64)
    rv, ri = rv[:, :k], ri[:, :k]
    assert v.shape == rv.shape == i.shape, (v.shape, rv.shape)
    nan = np.isnan(rv)
    np.testing.assert_array_equal(np.isnan(v), nan)
    np.testing.assert_allclose(v, rv, rtol=0, atol=atol, equal_nan=True)
    if not nxt.shape[1]:
        nxt = np.full((v.shape[0], 1), np.nan)
    cols = np.concatenate([rv.astype(np.float64), nxt], 1)
    with np.errstate(invalid="ignore"):
        d = np.abs(np.diff(cols, axis=1))  # d[:, j]: |ref[j] - ref[j + 1]|
    d = np.where(np.isnan(d), np.inf, d)  # next to a NaN slot: no tie
    gap = d.copy()
    gap[:, 1:] = np.minimum(gap[:, 1:], d[:, :-1])
    sure = (gap > tie) | nan  # NaN slots are in index order: they must agree exactly
    bad = np.argwhere(sure & (i != ri))
    assert bad.size == 0, (
        f"{len(bad)} index mismatches outside near-ties, first (row, col) {bad[:5].tolist()}: "
        f"got {i[tuple(bad[0])]} ({v[tuple(bad[0])]!r}), want {ri[tuple(bad[0])]} ({rv[tuple(bad[0])]!r})")


def _exact_cos(Q: np.ndarray, K: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """float64 cosines of (query r, key idx[r, j]); NaN for invalid rows."""
    def unit(a):
        a = a.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            u = a / np.linalg.norm(a, axis=1, keepdims=True)
        u[~np.isfinite(u).all(1)] = np.nan
        return u
    Qu, Ku = unit(Q), unit(K)
    return np.einsum("rd,rjd->rj", Qu, Ku[idx])


def assert_low_precision(got: TopK, ref: TopK, Q: np.ndarray, K: np.ndarray, dtype: str, *, skip: int = 0) -> float:
    """bf16/fp16 `got` against float32 `ref` (same width): exact values, invalid rows placed as
    in float32, recall and near-tie misses (see the module docstring). `skip` leading columns
    (all-pairs: self) are left out of the recall. Returns (recall, largest near-tie excess)."""
    v, i = _np(got)
    rv, ri = _np(ref)
    assert v.shape == rv.shape
    nan = np.isnan(rv)
    np.testing.assert_array_equal(np.isnan(v), nan)
    np.testing.assert_array_equal(i[nan], ri[nan])  # zero/NaN rows and keys: placed exactly as in fp32
    ok = ~nan
    exact = _exact_cos(Q, K, i)
    np.testing.assert_allclose(v[ok], exact[ok], rtol=0, atol=VAL_ATOL)
    hits, total, worst_excess = 0, 0, 0.0
    for r in range(v.shape[0]):
        want = [int(x) for x, m in zip(ri[r, skip:], ok[r, skip:]) if m]
        if not want:
            continue
        have = {int(x) for x, m in zip(i[r, skip:], ok[r, skip:]) if m}
        missed = [x for x in want if x not in have]
        hits += len(want) - len(missed)
        total += len(want)
        if missed:
            floor = float(np.min(v[r, skip:][ok[r, skip:]]))
            excess = float(np.max(_exact_cos(Q[r:r + 1], K, np.array([missed]))[0])) - floor
            worst_excess = max(worst_excess, excess)
    recall = hits / max(total, 1)
    assert recall >= RECALL[dtype], f"{dtype} recall@k {recall:.4f} < {RECALL[dtype]}"
    assert worst_excess <= NEAR[dtype], f"{dtype} missed a neighbour {worst_excess:.2e} above the worst one chosen"
    return recall, worst_excess


def awkward_matrix(n: int, d: int, seed: int) -> np.ndarray:
    """Gaussian rows with zero, NaN and Inf rows and an exact duplicate direction (a tie)."""
    W = random_matrix(n, d, seed, zero=[5, n - 1], nan=[17, n // 2], dup=[(3, n - 7)])
    W[n // 3, 1] = np.inf
    return W


# --------------------------------------------------------------------------- device choice


@needs_real_cuda
def test_pick_device_prefers_cuda_and_float32_turns_tf32_off(tf32_allowed):
    assert pick_device().type == "cuda"
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("cuda:0") == torch.device("cuda:0")
    assert torch.backends.cuda.matmul.allow_tf32 is True
    assert resolve_dtype(None, None) == torch.float32
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert resolve_dtype("bf16", "cuda") == torch.bfloat16


@needs_real_cuda
def test_default_device_is_cuda_and_equals_cpu(tf32_allowed):
    W = awkward_matrix(1200, 32, 21)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    got = all_pairs_topk(W, 25)  # no device=: CUDA
    assert torch.cuda.max_memory_allocated() > 0, "the default device did not run on CUDA"
    assert_agrees(got, all_pairs_topk(W, 26, **CPU))
    q = query_topk(W[40], W, 10)
    assert_agrees(q, topk_cosine(W[40], W, 11, **CPU))


# --------------------------------------------------------------------------- all pairs


@pytest.mark.parametrize("block", [None, 512, 1000])
def test_all_pairs_float32_equals_cpu_and_brute_force(block, tf32_allowed):
    W = awkward_matrix(3000, 48, 1)
    got = all_pairs_topk(W, 25, block_rows=block, **GPU)
    v, i = got.numpy()
    assert (i[:, 0] == np.arange(3000)).all()
    assert_agrees(got, all_pairs_topk(W, 26, **CPU))
    if block is None:
        assert_agrees(got, brute_all_pairs(W, 26))
    for r in (5, 17, 1000, 1500, 2999):  # invalid rows: self, then every other row in index order, NaN
        assert np.isnan(v[r]).all() and i[r].tolist() == [r] + [x for x in range(25) if x != r][:24]


def test_all_pairs_cuda_tensor_inputs(tf32_allowed):
    W = awkward_matrix(2000, 40, 2)
    ref = all_pairs_topk(W, 26, **CPU)
    Wt = torch.from_numpy(W).to(DEV)
    assert_agrees(all_pairs_topk(Wt, 25, block_rows=700, **GPU), ref)
    Wb = Wt.to(torch.bfloat16)  # bf16 storage, float32 compute: the CPU answer on the same rounded rows
    assert_agrees(all_pairs_topk(Wb, 25, **GPU), all_pairs_topk(Wb.float().cpu(), 26, **CPU))


def test_all_pairs_planted_decoder(tf32_allowed):
    p = plant(1500, 64, seed=3, n_nan=2)
    got = all_pairs_topk(torch.from_numpy(p.W_dec), 25, block_rows=256, **GPU)
    assert_agrees(got, all_pairs_topk(p.W_dec, 26, **CPU))
    _, i = got.numpy()
    for child in p.tree[p.tree_root]:
        assert p.tree_root in i[child, 1:6]


def test_all_pairs_two_default_blocks(tf32_allowed):
    # 20,000 rows: two row blocks of the GPU default (16,384), a partial off-diagonal block
    W = awkward_matrix(20_000, 96, 4)
    got = all_pairs_topk(W, 25, **GPU)
    assert_agrees(got, all_pairs_topk(W, 26, **CPU))


# --------------------------------------------------------------------------- queries


@pytest.mark.parametrize("block", [None, 1000])
def test_topk_cosine_float32_equals_cpu_and_brute_force(block, tf32_allowed):
    K = awkward_matrix(6000, 40, 9)
    Q = random_matrix(300, 40, 10, zero=[4], nan=[7])
    got = topk_cosine(Q, K, 10, block_rows=block, **GPU)
    assert_agrees(got, topk_cosine(Q, K, 11, **CPU))
    if block is None:
        assert_agrees(got, brute_topk(Q, K, 11))
    assert got.indices[4].tolist() == list(range(10)) and torch.isnan(got.values[4]).all()


def test_topk_cosine_exclude_few_queries_and_one_vector(tf32_allowed):
    K = awkward_matrix(5000, 32, 11)
    rows = [0, 5, 17, 40, 41, 999, 4999]
    Q = K[rows]
    for ex in (rows, [-1, 5, 17, 40, -1, 999, 4999]):  # its own row, or none
        got = topk_cosine(Q, K, 12, exclude=ex, **GPU)  # fewer than 64 queries: the few-queries path
        assert_agrees(got, topk_cosine(Q, K, 13, exclude=ex, **CPU))
        assert_agrees(got, brute_topk(Q, K, 13, exclude=ex))
    Qm = np.repeat(K[:100], 2, axis=0)  # >= 64 queries, with exclusion
    exm = np.repeat(np.arange(100), 2)
    assert_agrees(topk_cosine(Qm, K, 12, exclude=exm, block_rows=1024, **GPU),
                  topk_cosine(Qm, K, 13, exclude=exm, **CPU))
    one = query_topk(K[40] * 3.0, K, 10, **GPU)
    assert one.n == 1
    assert_agrees(one, topk_cosine(K[40], K, 11, **CPU))


def test_feature_topk_equals_cpu(tf32_allowed):
    W = awkward_matrix(4000, 32, 7)
    for feats in ([0, 5, 17, 57, 3999], list(range(0, 4000, 20))):  # few, then many queries
        got = feature_topk(W, feats, 12, **GPU)
        assert_agrees(got, feature_topk(W, feats, 13, **CPU))
        ref = all_pairs_topk(W, 13, **CPU)
        assert_agrees(got, TopK(ref.values[feats], ref.indices[feats]))


def test_match_sources_planted_families(tf32_allowed):
    p = plant(256, 64, seed=13)
    W_wide, families = split_families(p, 700, seed=13)
    fwd = match_sources(W_wide, p.W_dec, k=1, block_rows=100, **GPU)
    assert_agrees(fwd, match_sources(W_wide, p.W_dec, k=2, **CPU))
    back = match_sources(p.W_dec, W_wide, k=3, **GPU)
    assert_agrees(back, match_sources(p.W_dec, W_wide, k=4, **CPU))
    for parent, members in families.items():
        for m in members:
            assert fwd.indices[m, 0].item() == parent and fwd.values[m, 0].item() > 0.9
        assert set(back.indices[parent, : len(members)].tolist()) == set(members)


# --------------------------------------------------------------------------- low precision


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_all_pairs_low_precision_recall(dtype):
    W = awkward_matrix(4096, 256, 8)
    got = all_pairs_topk(W, 25, dtype=dtype, **GPU)
    ref = all_pairs_topk(W, 25, **CPU)
    assert (got.indices[:, 0] == torch.arange(4096)).all()
    assert_low_precision(got, ref, W, W, dtype, skip=1)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_topk_cosine_and_match_sources_low_precision(dtype):
    K = awkward_matrix(6000, 128, 12)
    Q = random_matrix(200, 128, 13, zero=[1], nan=[2])
    assert_low_precision(topk_cosine(Q, K, 10, dtype=dtype, **GPU), topk_cosine(Q, K, 10, **CPU), Q, K, dtype)
    few = Q[:8]
    assert_low_precision(topk_cosine(few, K, 10, dtype=dtype, **GPU), topk_cosine(few, K, 10, **CPU), few, K, dtype)
    p = plant(256, 64, seed=13)
    W_wide, families = split_families(p, 700, seed=13)
    fwd = match_sources(W_wide, p.W_dec, k=1, dtype=dtype, **GPU)
    for parent, members in families.items():
        assert all(fwd.indices[m, 0].item() == parent for m in members)


@needs_real_cuda
@pytest.mark.xfail(strict=False, reason="bf16/fp16 results are rescored by a float32 bmm under the caller's TF32 "
                   "setting: resolve_dtype switches TF32 off for float32 only (reported, not asserted)")
def test_low_precision_rescore_exact_with_tf32_allowed(tf32_allowed):
    W = awkward_matrix(2048, 256, 14)
    got = all_pairs_topk(W, 10, dtype="bfloat16", **GPU)
    v, i = got.numpy()
    ok = ~np.isnan(v)
    np.testing.assert_allclose(v[ok], _exact_cos(W, W, i)[ok], rtol=0, atol=VAL_ATOL)
