"""Exact cosine neighbours (`npclient.geometry.knn`): blocked == brute force, Neuronpedia's layout.

The brute force here is one dense matmul of the same unit rows and a full lexicographic sort
(value descending, index ascending; invalid rows after every value, in index order; self
first). Values agree to a few float32 ulps (MKL picks another kernel for very small blocks,
which changes the last bit), indices agree wherever neighbouring values are distinct.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npclient.geometry import (
    TopK,
    all_pairs_topk,
    feature_topk,
    match_sources,
    merge_topk,
    normalize_rows,
    pick_device,
    query_topk,
    resolve_dtype,
    topk_cosine,
)
from npclient.testing.emulator.config import EmulatorConfig, SourceSpec
from npclient.testing.emulator.state import EmulatorState, cosine_topk
from npclient.testing.saes import plant, split_families

ATOL = 4e-7  # a few float32 ulps near 1.0
SELECTIONS = ("heap", "threshold", "dense")


# --------------------------------------------------------------------------- references


def _key_matrix(S: np.ndarray, q_bad: np.ndarray, k_bad: np.ndarray) -> np.ndarray:
    key = S.astype(np.float64).copy()
    key[q_bad, :] = -np.inf
    key[:, k_bad] = -np.inf
    return key


def _rank(key: np.ndarray, k: int) -> np.ndarray:
    n_keys = key.shape[1]
    cols = np.arange(n_keys)
    return np.stack([np.lexsort((cols, -row))[:k] for row in key])


def brute_all_pairs(W: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    U, bad = normalize_rows(W)
    S = (U @ U.T).numpy()
    bad = bad.numpy()
    n = S.shape[0]
    key = _key_matrix(S, bad, bad)
    key[np.arange(n), np.arange(n)] = np.inf
    idx = _rank(key, min(k, n))
    vals = np.take_along_axis(S, idx, 1).astype(np.float32)
    vals[bad[:, None] | bad[idx]] = np.nan
    vals[:, 0] = np.where(bad, np.nan, 1.0)
    return vals, idx


def brute_topk(Q: np.ndarray, K: np.ndarray, k: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
    Qn, qb = normalize_rows(Q)
    Kn, kb = normalize_rows(K)
    S = (Qn @ Kn.T).numpy()
    key = _key_matrix(S, qb.numpy(), kb.numpy())
    width = min(k, K.shape[0] - (1 if exclude is not None else 0))
    cols = np.arange(K.shape[0])
    idx = []
    for r, row in enumerate(key):
        order = np.lexsort((cols, -row))
        if exclude is not None and exclude[r] >= 0:
            order = order[order != exclude[r]]
        idx.append(order[:width])
    idx = np.stack(idx)
    vals = np.take_along_axis(S, idx, 1).astype(np.float32)
    vals[qb.numpy()[:, None] | kb.numpy()[idx]] = np.nan
    return vals, idx


def assert_same_topk(got: TopK, ref_vals: np.ndarray, ref_idx: np.ndarray, atol: float = ATOL) -> None:
    """`ref_vals`/`ref_idx` may hold one column more than `got` (the next candidate), which only
    serves to spot a near-tie at the k-th place."""
    v, i = got.numpy()
    assert v.dtype == np.float32 and i.dtype == np.int64
    next_v = ref_vals[:, v.shape[1]:v.shape[1] + 1]
    ref_vals, ref_idx = ref_vals[:, : v.shape[1]], ref_idx[:, : v.shape[1]]
    assert v.shape == ref_vals.shape == i.shape
    np.testing.assert_array_equal(np.isnan(v), np.isnan(ref_vals))
    np.testing.assert_allclose(v, ref_vals, rtol=0, atol=atol, equal_nan=True)
    # indices: equal wherever the value is apart from its neighbours in the row (ties aside);
    # NaN slots are ordered by index, so they must agree exactly
    gap = np.full(v.shape, np.inf)
    fin = np.where(np.isnan(ref_vals), np.inf, ref_vals)
    if next_v.shape[1]:
        with np.errstate(invalid="ignore"):
            last = np.abs(fin[:, -1] - np.where(np.isnan(next_v[:, 0]), np.inf, next_v[:, 0]))
        gap[:, -1] = np.where(np.isnan(last), np.inf, last)
    with np.errstate(invalid="ignore"):
        d = np.abs(np.diff(fin, axis=1))
    d = np.where(np.isnan(d), np.inf, d)
    gap[:, 1:] = np.minimum(gap[:, 1:], d)
    gap[:, :-1] = np.minimum(gap[:, :-1], d)
    distinct = (gap > 4 * atol) | np.isnan(ref_vals)
    np.testing.assert_array_equal(i[distinct], ref_idx[distinct])


def random_matrix(n: int, d: int, seed: int, *, zero=(), nan=(), dup=()) -> np.ndarray:
    W = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    for r in zero:
        W[r] = 0
    for r in nan:
        W[r] = np.nan
    for a, b in dup:
        W[b] = 2.5 * W[a]  # an exact tie in cosine
    return W


# --------------------------------------------------------------------------- merge


def test_merge_topk_tiny():
    got = merge_topk([[0.9, 0.1]], [[3, 7]], [[0.5, 0.95]], [[2, 9]], 3)
    assert got.indices.tolist() == [[9, 3, 2]]
    assert got.values[0].tolist() == pytest.approx([0.95, 0.9, 0.5])
    assert got.values.dtype == torch.float32 and got.indices.dtype == torch.int64


def test_merge_topk_ties_nan_and_empty_slots():
    va = torch.tensor([[0.5, float("nan"), float("-inf")], [0.2, 0.2, 0.1]])
    ia = torch.tensor([[4, 1, -1], [8, 3, 0]])
    vb = torch.tensor([[0.5, 0.7], [0.2, float("nan")]])
    ib = torch.tensor([[2, 6], [5, 1]])
    got = merge_topk(va, ia, vb, ib, 5)
    # row 0: 0.7, then the tie 0.5 by index (2 before 4), then NaN, then the empty slot
    assert got.indices[0].tolist() == [6, 2, 4, 1, -1]
    # row 1: three-way tie at 0.2 by index, then 0.1, then NaN last
    assert got.indices[1].tolist() == [3, 5, 8, 0, 1]
    assert torch.isnan(got.values[1, 4])
    # the inputs are untouched (pure)
    assert ia.tolist() == [[4, 1, -1], [8, 3, 0]]
    small = merge_topk(va, ia, vb, ib, 2)
    assert small.indices.tolist() == [[6, 2], [3, 5]]
    unsorted = merge_topk(va[1:], ia[1:], vb[1:], ib[1:], 2, sorted=False)
    assert sorted(unsorted.values[0].tolist()) == pytest.approx([0.2, 0.2])


def test_merge_topk_k_larger_than_candidates_and_shape_errors():
    got = merge_topk([[1.0]], [[0]], [[2.0]], [[1]], 10)
    assert got.indices.tolist() == [[1, 0]]
    with pytest.raises(ValueError):
        merge_topk([[1.0, 2.0]], [[0]], [[2.0]], [[1]], 1)


# --------------------------------------------------------------------------- all pairs


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("block", [48, 100, 333, 2048])
def test_all_pairs_equals_brute_force_random(block, selection):
    W = random_matrix(700, 24, 1, zero=[5], nan=[17, 400], dup=[(3, 650)])
    ref_v, ref_i = brute_all_pairs(W, 26)
    got = all_pairs_topk(W, 25, block_rows=block, selection=selection)
    assert_same_topk(got, ref_v, ref_i)


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("block", [72, 128, 600])
def test_all_pairs_equals_brute_force_planted(block, selection):
    p = plant(600, 32, seed=3, n_nan=2)
    ref_v, ref_i = brute_all_pairs(p.W_dec, 26)
    got = all_pairs_topk(torch.from_numpy(p.W_dec), 25, block_rows=block, selection=selection)
    assert_same_topk(got, ref_v, ref_i)
    v, i = got.numpy()
    # self first, 1.0; the planted tree's root is among its children's nearest rows
    assert (i[:, 0] == np.arange(600)).all()
    valid = ~np.isin(np.arange(600), p.zero_rows + p.nan_rows)
    assert (v[valid, 0] == 1.0).all()
    for child in p.tree[p.tree_root]:
        assert p.tree_root in i[child, 1:6]


@pytest.mark.parametrize("block", [600, 1024])
def test_all_pairs_large_blocks_split_diagonal(block):
    # blocks over 512 rows: the diagonal block is computed as strips of its upper triangle
    W = random_matrix(1300, 16, 15, zero=[700], nan=[1299], dup=[(10, 1200)])
    ref_v, ref_i = brute_all_pairs(W, 26)
    for selection in ("heap", "threshold"):
        assert_same_topk(all_pairs_topk(W, 25, block_rows=block, selection=selection), ref_v, ref_i)


def test_all_pairs_default_block_larger_k_than_rows_and_k1():
    W = random_matrix(40, 8, 2, zero=[3])
    got = all_pairs_topk(W, 100)
    assert got.k == 40
    ref_v, ref_i = brute_all_pairs(W, 100)
    assert_same_topk(got, ref_v, ref_i)
    one = all_pairs_topk(W, 1)
    assert one.indices[:, 0].tolist() == list(range(40))
    assert all_pairs_topk(W, 0).k == 0


def test_all_pairs_invalid_rows_ranked_last_in_index_order():
    W = random_matrix(30, 6, 4, zero=[2, 9], nan=[20])
    v, i = all_pairs_topk(W, 30, block_rows=8).numpy()
    bad = [2, 9, 20]
    # a valid row: 27 valid neighbours (self included) then the invalid rows in index order, NaN
    assert i[0, -3:].tolist() == bad and np.isnan(v[0, -3:]).all()
    assert not np.isnan(v[0, :-3]).any()
    # an invalid row: itself, then every other row in index order, all NaN
    assert i[9].tolist() == [9] + [r for r in range(30) if r != 9]
    assert np.isnan(v[9]).all()


def test_all_pairs_matches_emulator_cosine_topk_with_nan_rows():
    p = plant(300, 32, seed=5, n_nan=3)
    ei, ev = cosine_topk(p.W_dec, 25)
    v, i = all_pairs_topk(p.W_dec, 25, block_rows=128).numpy()
    assert_same_topk(TopK(torch.from_numpy(v), torch.from_numpy(i)), ev, ei, atol=1e-6)


def test_all_pairs_matches_emulator_served_topk():
    spec = SourceSpec("gpt2-small", "0-res-jb", d_sae=400, d_in=32)
    state = EmulatorState(EmulatorConfig(sources=(spec,)))
    W = state.decoder("gpt2-small", "0-res-jb").weights
    got = all_pairs_topk(W, 25, block_rows=96)
    ei, ev = state.topk("gpt2-small", "0-res-jb")
    assert_same_topk(got, ev, ei, atol=1e-6)
    v, i = got.numpy()
    zero = state.decoder("gpt2-small", "0-res-jb").zero_rows[0]
    for f in (0, 1, zero, 399):
        served = state.feature("gpt2-small", "0-res-jb", f)
        assert served["topkCosSimIndices"] == i[f].tolist()
        sv = np.array([np.nan if x is None else x for x in served["topkCosSimValues"]], dtype=np.float64)
        np.testing.assert_allclose(v[f], sv, rtol=0, atol=1.5e-6, equal_nan=True)
    assert np.isnan(v[zero]).all() and i[zero, 0] == zero


def test_all_pairs_progress_and_inputs():
    W = random_matrix(300, 16, 6)
    calls = []
    got = all_pairs_topk(W, 5, block_rows=64, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (15, 15) and [c[0] for c in calls] == list(range(1, 16))
    ro = W.copy()
    ro.setflags(write=False)
    again = all_pairs_topk(ro, 5, block_rows=64)
    assert torch.equal(got.indices, again.indices)
    as64 = all_pairs_topk(W.astype(np.float64), 5, block_rows=64)
    assert torch.equal(got.indices, as64.indices)


def test_topk_cosine_progress_and_threads_restored():
    K = random_matrix(400, 12, 16)
    Q = random_matrix(200, 12, 17)
    threads = torch.get_num_threads()
    calls = []
    got = topk_cosine(Q, K, 5, block_rows=64, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (28, 28) and [c[0] for c in calls] == list(range(1, 29))
    assert torch.get_num_threads() == threads
    ref_v, ref_i = brute_topk(Q, K, 6)
    assert_same_topk(got, ref_v, ref_i)
    all_pairs_topk(K, 5, block_rows=64)
    assert torch.get_num_threads() == threads


def test_feature_topk_equals_all_pairs_rows():
    W = random_matrix(200, 16, 7, zero=[10], nan=[11])
    full = all_pairs_topk(W, 12, block_rows=64)
    feats = [0, 10, 11, 57, 199]
    got = feature_topk(W, feats, 12)
    ref = brute_all_pairs(W, 13)
    assert_same_topk(got, ref[0][feats], ref[1][feats])
    assert_same_topk(TopK(full.values[feats], full.indices[feats]), ref[0][feats], ref[1][feats])
    many = feature_topk(W, list(range(0, 200, 2)), 12)  # past the few-queries path
    assert_same_topk(many, ref[0][::2], ref[1][::2])


def test_bfloat16_recall_against_float32():
    W = random_matrix(512, 64, 8)
    ref_v, ref_i = brute_all_pairs(W, 10)
    got = all_pairs_topk(W, 10, dtype="bfloat16", block_rows=200)
    v, i = got.numpy()
    recall = np.mean([len(set(i[r, 1:]) & set(ref_i[r, 1:])) / 9 for r in range(512)])
    assert recall >= 0.9
    # the chosen neighbours are rescored in float32: their values are exact cosines
    U, _ = normalize_rows(W)
    exact = (U[torch.arange(512).unsqueeze(1)] * U[got.indices]).sum(-1)
    torch.testing.assert_close(got.values[:, 1:], exact[:, 1:], rtol=0, atol=1e-6)
    q = topk_cosine(W[:50], W, 10, dtype=torch.float16)
    recall_q = np.mean([len(set(q.indices[r].tolist()) & set(ref_i[r].tolist())) / 10 for r in range(50)])
    assert recall_q >= 0.9


# --------------------------------------------------------------------------- queries


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("block", [64, 128, 1000])
def test_topk_cosine_equals_brute_force(block, selection):
    K = random_matrix(500, 20, 9, zero=[0], nan=[250])
    Q = random_matrix(150, 20, 10, zero=[4], nan=[7])
    ref_v, ref_i = brute_topk(Q, K, 11)
    got = topk_cosine(Q, K, 10, block_rows=block, selection=selection)
    assert_same_topk(got, ref_v, ref_i)
    # an invalid query: NaN, keys in index order
    assert got.indices[4].tolist() == list(range(10)) and torch.isnan(got.values[4]).all()


def test_topk_cosine_exclude_and_invalid_keys_last():
    K = random_matrix(12, 5, 11, zero=[1, 6])
    Q = K[[0, 1, 6, 9]]
    ex = [0, 1, 6, -1]
    ref_v, ref_i = brute_topk(Q, K, 11, exclude=ex)
    got = topk_cosine(Q, K, 11, exclude=ex, block_rows=4)
    assert got.k == 11
    assert_same_topk(got, ref_v, ref_i)
    i = got.indices.tolist()
    assert i[0][-2:] == [1, 6] and 0 not in i[0]  # invalid keys last, self excluded
    assert i[1] == [0] + list(range(2, 12))  # invalid query, excluded itself
    assert i[3][-1] == 1  # no exclusion: 10 valid keys, then the first invalid key


def test_query_topk_planted_direction():
    p = plant(500, 64, seed=12)
    W = torch.from_numpy(p.W_dec)
    got = query_topk(5.0 * W[p.tree_root], W, 10)
    assert got.n == 1
    assert got.indices[0, 0].item() == p.tree_root
    assert set(got.indices[0].tolist()) == set(p.tree_nodes)
    # a direction that is no row: the days' plane; its best match is the day nearest to it
    direction = p.days_plane[0]
    best_day = max(p.days, key=lambda r: float(p.W_dec[r] @ direction))
    got = query_topk(direction, p.W_dec, 3)
    assert got.indices[0, 0].item() == best_day
    # numpy and torch inputs, a batch of queries, brute force agreement
    Q = np.stack([direction, p.null_basis[0], p.W_dec[p.tree_root]])
    ref_v, ref_i = brute_topk(Q, p.W_dec, 7)
    assert_same_topk(query_topk(Q, p.W_dec, 7), ref_v, ref_i)


def test_match_sources_recovers_planted_families():
    p = plant(256, 64, seed=13)
    W_wide, families = split_families(p, 700, seed=13)
    # every wide member's best narrow match is its parent
    fwd = match_sources(W_wide, p.W_dec, k=1, block_rows=100)
    for parent, members in families.items():
        for m in members:
            assert fwd.indices[m, 0].item() == parent
            assert fwd.values[m, 0].item() > 0.9
    # each parent's best wide matches are exactly its family
    back = match_sources(p.W_dec, W_wide, k=3, block_rows=128)
    for parent, members in families.items():
        assert set(back.indices[parent, : len(members)].tolist()) == set(members)


def test_topk_result_conveniences():
    W = random_matrix(20, 4, 14)
    got = all_pairs_topk(W, 3)
    values, indices = got
    assert values is got.values and len(got) == 20
    assert got.row(0)[0] == (0, 1.0)
    table = got.to_arrow(query_ids=np.arange(100, 120))
    assert table.num_rows == 60
    assert table.column("query").to_pylist()[:3] == [100, 100, 100]
    assert table.column("rank").to_pylist()[:3] == [0, 1, 2]


# --------------------------------------------------------------------------- device helpers


def test_device_and_dtype_helpers():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")).type == "cpu"
    assert pick_device().type in ("cpu", "cuda", "mps")
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    assert resolve_dtype(torch.float32, "cpu") == torch.float32
    with pytest.raises(ValueError):
        resolve_dtype("int8", "cpu")
    with pytest.raises(ValueError):
        topk_cosine(np.zeros((2, 3)), np.zeros((4, 5)), 1)


def test_normalize_rows_marks_zero_nan_inf_rows():
    W = np.ones((5, 3), dtype=np.float32)
    W[1] = 0
    W[2, 1] = np.nan
    W[3, 0] = np.inf
    U, bad = normalize_rows(W)
    assert bad.tolist() == [False, True, True, True, False]
    assert torch.isfinite(U).all()
    torch.testing.assert_close(U[0], torch.full((3,), 3 ** -0.5))
