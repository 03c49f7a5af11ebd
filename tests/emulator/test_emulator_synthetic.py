"""The synthetic decoder: reproducible, with the planted structure the geometry tests rely on."""

from __future__ import annotations

import numpy as np
import pytest

from npclient.testing import make_decoder, make_synthetic


def _unit(w: np.ndarray) -> np.ndarray:
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def test_shape_dtype_and_determinism() -> None:
    a = make_decoder(512, 64, seed=3)
    b = make_decoder(512, 64, seed=3)
    c = make_decoder(512, 64, seed=4)
    assert a.shape == (512, 64) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_circle_is_positive_and_planar() -> None:
    syn = make_synthetic(1024, 64, seed=0)
    assert len(syn.circle) == 7 and len(set(syn.circle)) == 7
    u = _unit(syn.weights[syn.circle].astype(np.float64))
    cos = u @ u.T
    mean = cos[np.triu_indices(7, 1)].mean()
    assert 0.4 < mean < 0.8
    # centred, the seven points span (almost) a plane: two dominant singular values
    s = np.linalg.svd(u - u.mean(0), compute_uv=False)
    assert s[2] < 0.2 * s[1]


def test_families_and_zero_row() -> None:
    syn = make_synthetic(1024, 64, seed=1)
    assert [len(c) for c in syn.families.values()] == [4, 3, 4]
    w = syn.weights.astype(np.float64)
    for parent, children in syn.families.items():
        cos = _unit(w[children]) @ _unit(w[[parent]]).T
        assert (cos > 0.85).all()
        assert len(np.unique(np.round(cos, 6))) == len(children)  # no exact ties
    assert syn.zero_rows and not np.any(w[syn.zero_rows])
    assert not syn.nan_rows and np.isfinite(w).all()
    planted = syn.planted
    assert len(planted) == len(set(planted))


def test_nan_row_flag() -> None:
    syn = make_synthetic(256, 16, seed=2, nan_row=True)
    assert len(syn.nan_rows) == 1 and np.isnan(syn.weights[syn.nan_rows]).all()
    assert np.isfinite(np.delete(syn.weights, syn.nan_rows, axis=0)).all()


def test_too_small_is_refused() -> None:
    with pytest.raises(ValueError):
        make_synthetic(10, 64, seed=0)
