"""The bfloat16 candidate pass of the float32 all-pairs (`npclient.geometry.prefilter`).

Both settings are forced here ("bfloat16", "none"), so both paths run on any CPU, AMX or not.
The truth is `brute_all_pairs` (one dense float32 matmul, a full lexicographic sort); the
bound itself is checked against float64 cosines on every pair; rows that the candidate lists
cannot settle (clusters of duplicates wider than the list) must take the whole-row path and
still come out exact; and the answer must not depend on the block size (the property that
makes the Ray engine equal the local one to the bit).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npclient.errors import InvalidOptionError
from npclient.geometry import all_pairs_topk, normalize_rows
from npclient.geometry import mkl_bf16
from npclient.geometry import prefilter as pf
from npclient.testing.saes import plant
from test_geometry_knn import assert_same_topk, brute_all_pairs, random_matrix


def clustered(n_clusters: int, size: int, d: int, seed: int, noise: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32)
    W = np.repeat(centres, size, axis=0)
    return (W + noise * rng.standard_normal(W.shape).astype(np.float32)).astype(np.float32)


CASES = {
    "random with zero, NaN and tied rows": lambda: random_matrix(700, 24, 1, zero=[5], nan=[17, 400], dup=[(3, 650)]),
    "planted circle, tree and families": lambda: plant(600, 32, seed=3, n_nan=2).W_dec,
    "tight clusters (near-duplicates)": lambda: clustered(40, 15, 48, 4, 1e-3),
}


@pytest.mark.parametrize("prefilter", ["bfloat16", "none"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("block", [64, 333, 2048])
def test_all_pairs_equals_brute_force_with_and_without_the_bf16_pass(case, block, prefilter):
    W = CASES[case]()
    ref_v, ref_i = brute_all_pairs(W, 26)
    assert_same_topk(all_pairs_topk(W, 25, block_rows=block, selection="heap", prefilter=prefilter), ref_v, ref_i)


def test_the_answer_does_not_depend_on_the_block_size_to_the_bit():
    W = random_matrix(900, 40, 7, zero=[8], nan=[100], dup=[(1, 2)])
    runs = [all_pairs_topk(W, 25, block_rows=b, prefilter="bfloat16") for b in (50, 256, 900)]
    for r in runs[1:]:
        assert torch.equal(r.indices, runs[0].indices)
        assert torch.equal(torch.nan_to_num(r.values, nan=-2.0), torch.nan_to_num(runs[0].values, nan=-2.0))


def test_rows_the_lists_cannot_settle_take_the_whole_row_path_and_stay_exact(monkeypatch):
    # clusters of 90 exact duplicates: every row ties with 89 others at cosine 1, more than the
    # 2k + 16 = 66 candidates a row keeps, so no list can be proven complete
    W = np.repeat(np.random.default_rng(5).standard_normal((6, 32)).astype(np.float32), 90, axis=0)
    W *= np.linspace(0.5, 2.0, W.shape[0], dtype=np.float32)[:, None]  # same directions, other norms
    seen: list[int] = []
    whole_rows = pf._whole_rows

    def spy(Uc, products, rows, *a):
        seen.append(int(rows.size))
        return whole_rows(Uc, products, rows, *a)

    monkeypatch.setattr(pf, "_whole_rows", spy)
    got = all_pairs_topk(W, 25, block_rows=128, prefilter="bfloat16")
    assert sum(seen) == W.shape[0]
    ref_v, ref_i = brute_all_pairs(W, 26)
    assert_same_topk(got, ref_v, ref_i)
    # ties at cosine 1 (to float32 rounding) keep the lower indices of the row's own cluster
    v, i = got.numpy()
    assert (np.abs(v[:, 1:] - 1) < 1e-6).all()
    assert ((i[:, 1:] // 90) == (np.arange(W.shape[0]) // 90)[:, None]).all()


def test_fewer_rows_than_candidate_slots_and_small_k():
    W = random_matrix(30, 8, 2, zero=[4])
    for k in (1, 2, 5, 29, 30, 40):
        ref_v, ref_i = brute_all_pairs(W, min(k, 30) + 1)
        assert_same_topk(all_pairs_topk(W, k, prefilter="bfloat16"), ref_v, ref_i)


def test_the_bound_holds_on_every_pair():
    """|bf16 product - float32 cosine| <= E_r + c·|bf16 product| for all pairs, rows of mixed
    scale (the bound uses the rows' own rounding residuals): for torch's products rounded to
    bf16 and for MKL's summed into float32 (the torch-free path's)."""
    W = random_matrix(500, 96, 11) * np.logspace(-3, 3, 500, dtype=np.float32)[:, None]
    U, _ = normalize_rows(W)
    low = U.bfloat16()
    bits = low.view(torch.int16).numpy().view(np.uint16)
    y = (U.double() @ U.double().T).numpy()
    products = {pf.C_BF16_OUT: (low @ low.T).float().double().numpy()}
    gemm = mkl_bf16.gemm()
    if gemm is not None:
        out = np.empty((500, 500), dtype=np.float32)
        gemm.nt(mkl_bf16.to_bf16_bits(U.numpy()), mkl_bf16.to_bf16_bits(U.numpy()), out)
        products[pf.C_F32_OUT] = out.astype(np.float64)
    for c_out, x in products.items():
        E, c = pf.row_bounds(U.numpy(), bits, c=c_out)
        assert (np.abs(x - y) <= E[:, None] + c * np.abs(x)).all()
        # and it is not vacuous: well under the cosines' own spread
        assert float(E.max()) < 0.01


def test_prefilter_choice():
    cpu = torch.device("cpu")
    assert pf.resolve_prefilter("none", cpu) is False
    assert pf.resolve_prefilter("bfloat16", cpu) is True
    assert pf.resolve_prefilter("auto", cpu) is (pf.amx_bf16() and torch.backends.mkldnn.is_available())
    assert pf.resolve_prefilter("bfloat16", torch.device("cuda")) is False  # the GPU paths select in place
    with pytest.raises(InvalidOptionError) as e:
        all_pairs_topk(random_matrix(10, 4, 0), 3, prefilter="int8")
    assert e.value.option == "prefilter"
    assert pf.slots(24, 10_000) == 64 and pf.slots(24, 20) == 20 and pf.slots(24, 10_000, lists=4) == 32
