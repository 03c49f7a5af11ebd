"""The emulator serves the SAE that `npclient.testing.saes` writes: features and weights join by index.

The emulator's source and the sae_lens folder written for it (`make_emulator_sae`) agree row
for row: same decoder, `topkCosSimIndices` served over HTTP equal a brute force on the W_dec
that sae_lens loads (through `npclient.weights.attach`), and the planted features'
explanations are their labels ("Monday".."Sunday" around the circle).
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from npclient.ids import SourceId
from npclient.store.catalog import save_source
from npclient.store.database import Database
from npclient.testing import EmulatorServer, EmulatorState
from npclient.testing.saes import DAYS, MONTHS, make_emulator_sae, make_sae
from npclient.weights import attach, decoder

from helpers import brute_topk

M, S = "gpt2-small", "0-res-jb"
SRC = f"{M}/{S}"
K = 25  # the emulator's default top_k


@pytest.fixture(scope="module")
def server():
    with EmulatorServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def syn(tmp_path_factory, server):
    return make_emulator_sae(tmp_path_factory.mktemp("emu-sae"), server.state, M, S)


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.setenv("NP_MIRROR_HOME", str(tmp_path / "home"))
    database = Database(tmp_path / "mirror.duckdb")
    save_source(database, SourceId.parse(SRC), None, 1024, "test")
    yield database
    database.close()


@pytest.fixture(scope="module")
def http(server):
    # one client for every GET: a new httpx client (its SSL context) costs ~80 ms, a GET ~2 ms
    with httpx.Client(base_url=server.url) as client:
        yield client


def _served(http: httpx.Client, index: int) -> dict:
    r = http.get(f"/api/feature/{M}/{S}/{index}")
    assert r.status_code == 200
    return r.json()



def test_seed_rule_rebuilds_the_emulators_decoder(tmp_path, server, syn) -> None:
    st = server.state
    served = st.decoder(M, S)
    assert (syn.d_sae, syn.d_in) == (1024, 64)
    assert np.array_equal(syn.W_dec, served.weights) and syn.labels == served.labels
    assert syn.truth() == served.truth()
    # make_sae with the emulator's seed is the same SAE; another source, another seed
    again = make_sae(tmp_path / "again", d_sae=1024, d_in=64, seed=st.decoder_seed(M, S), d_sae_wide=64)
    assert np.array_equal(again.W_dec, served.weights)
    assert st.decoder_seed(M, S) == EmulatorState().decoder_seed(M, S) != st.decoder_seed(M, "1-res-jb")
    assert not np.array_equal(st.decoder(M, "1-res-jb").weights, served.weights)


def test_attached_weights_join_served_features_by_index(db, server, syn, http) -> None:
    rec = attach(db, SRC, path=syn.path)  # sae_lens's load_from_disk
    assert (rec.d_sae, rec.d_in, rec.neuronpedia_id, rec.zero_rows) == (1024, 64, SRC, len(syn.zero_rows))
    W = decoder(db, SRC).numpy()
    assert np.array_equal(W, server.state.decoder(M, S).weights)  # row for row

    ref_i, ref_v = brute_topk(W, K)
    labelled = sorted(syn.labels)
    check = sorted(set(range(0, 1024, 9)) | set(labelled) | set(syn.zero_rows) | set(syn.null_space))
    for i in check:
        f = _served(http, i)
        got_i, got_v = f["topkCosSimIndices"], f["topkCosSimValues"]
        assert int(f["index"]) == i and len(got_i) == K and got_i[0] == i
        if i in syn.zero_rows:
            assert all(v is None for v in got_v)
            continue
        np.testing.assert_allclose(got_v[1:], ref_v[i, 1:], atol=2e-6)
        # only near-ties may swap
        assert all(abs(ref_v[i, p] - ref_v[i, p - 1]) < 1e-5 or abs(ref_v[i, p] - ref_v[i, min(p + 1, K - 1)]) < 1e-5
                   for p in range(K) if got_i[p] != ref_i[i, p])
        if i in syn.labels:  # the planted label is the first explanation served
            assert f["explanations"][0]["description"] == syn.labels[i]

    # the days, found from the served explanations, lie on a circle in weight space, in order
    label_of = {i: _served(http, i)["explanations"][0]["description"] for i in syn.days + syn.months}
    for ring, names in ((syn.days, DAYS), (syn.months, MONTHS)):
        assert [label_of[i] for i in ring] == list(names)
        n = len(ring)
        for k, i in enumerate(ring):
            assert {label_of[int(j)] for j in ref_i[i, 1:3]} == {names[(k - 1) % n], names[(k + 1) % n]}
    # walking the circle from Monday through nearest unvisited day neighbours visits the week in order
    by_label = {label_of[i]: i for i in syn.days}
    walk, prev = ["Monday"], None
    cur = by_label["Monday"]
    nxt = by_label["Tuesday"]
    while len(walk) < 7:
        walk.append(label_of[nxt])
        prev, cur = cur, nxt
        nxt = next(int(j) for j in ref_i[cur, 1:3] if int(j) != prev)
    assert walk == list(DAYS)
