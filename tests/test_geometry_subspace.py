"""Subspace tools against the truth planted by `npclient.testing.saes`."""

from __future__ import annotations

import importlib
import sys
import types
from collections import namedtuple

import numpy as np
import pytest

from npclient.geometry import plots
from npclient.geometry.subspace import (
    circular_order,
    cluster,
    null_space_fraction,
    pca,
    suppression,
    umap_embed,
)
from npclient.testing.saes import plant, split_families


@pytest.fixture(scope="module")
def sae():
    return plant(512, 64, seed=0, n_nan=1)


def _is_cyclic(order: list[int], n: int) -> bool:
    """order is a rotation of 0..n-1 or of its reverse."""
    start = order.index(0)
    rot = order[start:] + order[:start]
    return rot == list(range(n)) or rot == [0] + list(range(n - 1, 0, -1))


# ---- PCA ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["days", "months"])
def test_pca_recovers_circle_order(sae, name):
    feats = getattr(sae, name)
    res = pca(sae.W_dec, feats)
    assert res.coords.shape == (len(feats), 2)
    assert list(res.features) == list(feats)
    assert res.explained_variance_ratio.sum() > 0.99  # a circle in a plane: two components hold it all
    assert _is_cyclic(circular_order(res.coords), len(feats))


def test_pca_is_deterministic_and_accepts_torch(sae):
    torch = pytest.importorskip("torch")
    a = pca(sae.W_dec, sae.days)
    b = pca(torch.from_numpy(sae.W_dec), torch.tensor(sae.days))
    np.testing.assert_allclose(a.coords, b.coords, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(a.components, axis=1), 1.0)
    # sign convention: each component's largest-magnitude entry is positive
    assert (a.components[np.arange(2), np.abs(a.components).argmax(axis=1)] > 0).all()


def test_pca_drops_nan_rows(sae):
    res = pca(sae.W_dec, list(sae.days) + sae.nan_rows)
    assert list(res.features) == list(sae.days)


def test_circular_order_sees_a_shuffled_circle():
    theta = 2 * np.pi * np.arange(9) / 9
    pts = np.column_stack([np.cos(theta), np.sin(theta)]) + 3.0
    perm = np.random.default_rng(1).permutation(9)
    order = circular_order(pts[perm])
    assert _is_cyclic([int(perm[i]) for i in order], 9)


# ---- clustering -------------------------------------------------------------------------------------


def test_cluster_recovers_planted_tree(sae):
    noise = sae.noise[:80]
    feats = sae.tree_nodes + noise + sae.zero_rows + sae.nan_rows
    res = cluster(sae.W_dec, feats, threshold=0.5)
    assert sorted(res.dropped) == sorted(sae.zero_rows + sae.nan_rows)
    label = dict(zip(res.features.tolist(), res.labels.tolist()))
    tree_labels = {label[f] for f in sae.tree_nodes}
    assert len(tree_labels) == 1  # the root, its children and grandchildren: one flat cluster
    (tree_label,) = tree_labels
    assert not [f for f in noise if label[f] == tree_label]  # no noise in it
    assert sorted(res.leaf_order) == list(range(len(res.features)))
    assert sorted(res.leaf_features) == sorted(res.features)

    # deeper: each child with its grandchildren is a subtree, merged before any other branch joins
    from scipy.cluster.hierarchy import cophenet
    from scipy.spatial.distance import squareform

    coph = squareform(cophenet(res.linkage))
    pos = {f: i for i, f in enumerate(res.features.tolist())}
    children = sae.tree[sae.tree_root]
    for child in children:
        branch = [pos[f] for f in [child] + sae.tree[child]]
        others = [pos[f] for c in children if c != child for f in [c] + sae.tree[c]]
        assert coph[np.ix_(branch, branch)].max() < coph[np.ix_(branch, others)].min()


def test_cluster_n_clusters_and_ward(sae):
    children = sae.tree[sae.tree_root]
    feats = [f for c in children for f in [c] + sae.tree[c]]
    for method in ("average", "ward"):
        res = cluster(sae.W_dec, feats, n_clusters=3, method=method)
        label = dict(zip(res.features.tolist(), res.labels.tolist()))
        assert sorted(sorted(label[f] for f in [c] + sae.tree[c]) for c in children) == [[1] * 3, [2] * 3, [3] * 3]


def test_cluster_refuses_sets_over_the_cap(sae):
    with pytest.raises(ValueError) as err:
        cluster(sae.W_dec, list(range(300)), max_features=256)
    msg = str(err.value)
    assert "\n" not in msg and "256" in msg and "300" in msg
    with pytest.raises(ValueError, match="512.*over the cap of 100"):
        cluster(sae.W_dec, None, max_features=100)
    with pytest.raises(ValueError, match="not both"):
        cluster(sae.W_dec, sae.days, threshold=0.5, n_clusters=2)


# ---- null space and suppression -----------------------------------------------------------------


def test_null_space_finds_exactly_the_invisible_features(sae):
    res = null_space_fraction(sae.W_dec, sae.head.W_K)
    assert res.rank == sae.head.d_head
    assert sorted(res.invisible.tolist()) == sorted(sae.null_space)
    assert np.flatnonzero(res.invisible_mask).tolist() == sorted(sae.null_space)
    valid = np.isfinite(res.fraction_in_colspace)
    np.testing.assert_allclose(res.fraction_in_colspace[valid] + res.fraction_in_nullspace[valid], 1.0, atol=1e-9)
    assert res.fraction_in_colspace[sae.null_space].max() < 1e-10
    # zero and NaN rows have no direction: NaN, never "invisible"
    for i in sae.zero_rows + sae.nan_rows:
        assert np.isnan(res.fraction_in_colspace[i]) and np.isnan(res.fraction_in_nullspace[i])
    # a threshold near chance level (rank/d_in = 0.25) would flag ordinary features: the default does not
    assert res.chance == pytest.approx(16 / 64)
    assert len(null_space_fraction(sae.W_dec, sae.head.W_K, threshold=0.15).invisible) > len(sae.null_space)


def test_null_space_accepts_torch_and_a_subset(sae):
    torch = pytest.importorskip("torch")
    feats = sae.null_space[:2] + sae.days
    res = null_space_fraction(torch.from_numpy(sae.W_dec), torch.from_numpy(sae.head.W_K), features=feats)
    assert res.invisible.tolist() == sae.null_space[:2]
    assert res.fraction_in_colspace.shape == (len(feats),)
    with pytest.raises(ValueError, match="width"):
        null_space_fraction(sae.W_dec, sae.head.W_K[:32])


def test_suppression_finds_the_planted_set(sae):
    res = suppression(sae.W_dec, sae.head.W_OV)
    assert sorted(res.suppressed.tolist()) == sorted(sae.suppressed)
    assert np.flatnonzero(res.suppressed_mask).tolist() == sorted(sae.suppressed)
    np.testing.assert_allclose(res.score[sae.suppressed], sae.head.suppression_gain, rtol=1e-5)
    np.testing.assert_allclose(res.cosine[sae.suppressed], 1.0, atol=1e-6)
    for i in sae.zero_rows + sae.nan_rows:
        assert np.isnan(res.score[i])
    # a pure copying map scores negative everywhere: nothing suppressed
    assert len(suppression(sae.W_dec, np.eye(64)).suppressed) == 0
    with pytest.raises(ValueError, match="square"):
        suppression(sae.W_dec, sae.head.W_K)


# ---- UMAP ---------------------------------------------------------------------------------------


TopK = namedtuple("TopK", "values indices")


def _brute_all_pairs_topk(W, k, **_):
    W = np.asarray(W, dtype=np.float64)
    U = W / np.linalg.norm(W, axis=1, keepdims=True)
    S = U @ U.T
    np.fill_diagonal(S, np.inf)  # self first
    idx = np.argsort(-S, axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(S, idx, axis=1)
    vals[:, 0] = 1.0
    return TopK(vals.astype(np.float32), idx.astype(np.int64))


@pytest.fixture
def knn_module(monkeypatch):
    """The real `knn.all_pairs_topk` when it exists; until then a dense brute force in its place."""
    try:
        return importlib.import_module("npclient.geometry.knn")
    except ImportError:
        fake = types.ModuleType("npclient.geometry.knn")
        fake.all_pairs_topk = _brute_all_pairs_topk
        monkeypatch.setitem(sys.modules, "npclient.geometry.knn", fake)
        return fake


def test_umap_places_a_family_together(knn_module):
    narrow = plant(128, 32, seed=3)
    W, families = split_families(narrow, 300, seed=3)
    W = W.copy()
    W[7] = 0.0  # a zero row: left out, NaN coordinates
    assert 7 not in {m for ms in families.values() for m in ms}, "seed 3 plants no family on the zero row"
    coords = umap_embed(W, k=10, seed=0, n_epochs=60)
    assert coords.shape == (300, 2) and coords.dtype == np.float32
    assert np.isnan(coords[7]).all() and np.isfinite(np.delete(coords, 7, axis=0)).all()
    xy = np.delete(coords, 7, axis=0)
    rand = np.random.default_rng(0)
    a, b = rand.integers(0, len(xy), 2000), rand.integers(0, len(xy), 2000)
    random_pair = float(np.median(np.linalg.norm(xy[a] - xy[b], axis=1)))
    fam = [np.linalg.norm(coords[i] - coords[j]) for ms in families.values() for i in ms for j in ms if i < j]
    assert np.median(fam) < 0.25 * random_pair
    again = umap_embed(W, k=10, seed=0, n_epochs=60)
    np.testing.assert_allclose(coords, again, atol=1e-4, equal_nan=True)  # seeded: reproducible


def test_umap_calls_our_knn(monkeypatch, knn_module, recwarn):
    calls = []
    real = knn_module.all_pairs_topk

    def spy(W, k, **kw):
        calls.append((np.asarray(W).shape, k))
        return real(W, k, **kw)

    monkeypatch.setattr(knn_module, "all_pairs_topk", spy)
    narrow = plant(128, 32, seed=1)
    coords = umap_embed(narrow.W_dec, k=8, n_epochs=10, features=list(range(100)))
    assert coords.shape == (100, 2)
    assert calls and calls[0][1] == 8 and calls[0][0][0] == 100 - sum(1 for z in narrow.zero_rows if z < 100)
    assert not [w for w in recwarn if "will be ignored" in str(w.message)]  # umap-learn took our graph
    with pytest.raises(ValueError, match="k=8"):
        umap_embed(narrow.W_dec[:8], k=8)


# ---- plots --------------------------------------------------------------------------------------


def test_plots_write_png_and_html(sae, tmp_path):
    labels = {i: sae.labels.get(i) for i in range(sae.d_sae)}
    res = pca(sae.W_dec, sae.days)
    tree = cluster(sae.W_dec, sae.tree_nodes + sae.noise[:5], threshold=0.5)
    rng = np.random.default_rng(0)
    coords = rng.standard_normal((40, 2)).astype(np.float32)
    coords[3] = np.nan
    for suffix in (".png", ".html"):
        outs = [
            plots.plot_pca(res, labels, tmp_path / f"pca{suffix}"),
            plots.plot_umap(coords, None, tmp_path / f"umap{suffix}", colors=rng.integers(0, 3, 40)),
            plots.plot_umap(coords, [f"f{i}" for i in range(40)], tmp_path / f"umap_cat{suffix}",
                            colors=[("a", "b")[i % 2] for i in range(40)]),
            plots.plot_dendrogram(tree, labels, tmp_path / f"tree{suffix}", threshold=0.5),
        ]
        for out in outs:
            data = out.read_bytes()
            assert len(data) > 1000
            if suffix == ".png":
                assert data[:8] == b"\x89PNG\r\n\x1a\n"
            else:
                text = data.decode("utf-8")
                assert "plotly" in text and "cdn.plot.ly" not in text.split("<body>")[0]
    html = (tmp_path / "pca.html").read_text()
    assert "Monday" in html and "Sunday" in html  # points named by explanation
    with pytest.raises(ValueError, match=r"\.png or \.html"):
        plots.plot_pca(res, None, tmp_path / "pca.svg")
    assert not (tmp_path / "pca.svg").exists()
