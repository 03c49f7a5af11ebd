"""Geometry through the mirror and the CLI, on the emulator's planted SAE: every answer has a known truth."""

import json

import numpy as np
import pytest

from npclient import SourceId
from npclient.geometry.subspace import circular_order
from npclient.weights import attach
from np_mirror.app import main

from helpers import synced_mirror_with_sae

SRC = SourceId("gpt2-small", "0-res-jb")
WIDE = SourceId("gpt2-small", "0-reswide-jb")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("geometry")
    server, mirror, sae = synced_mirror_with_sae(tmp, SRC)
    attach(mirror.db, WIDE, path=sae.wide_path / "sae_weights.safetensors", tensor="W_dec", root=tmp / "weights")
    yield server, mirror, sae, tmp
    server.stop()


def cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


def test_neighbors_equal_the_emulators_topk(world, capsys):
    server, mirror, sae, _ = world
    day = sae.days[0]
    out, _ = cli(capsys, "neighbors", f"{SRC}/{day}", "-k", "6", "--db", str(mirror.path), "--format", "json")
    rows = json.loads(out)
    truth = server.state.feature(SRC.model_id, SRC.source, day)
    assert [r["index"] for r in rows] == truth["topkCosSimIndices"][:6]
    assert rows[0]["explanation"] == "Monday"
    assert rows[1]["explanation"] in DAYS  # a neighbour on the circle


def test_allpairs_table_matches_the_emulator_and_is_reused(world, capsys):
    server, mirror, sae, _ = world
    cli(capsys, "geometry", "allpairs", str(SRC), "-k", "25", "--db", str(mirror.path))
    got = mirror.sql('SELECT "index", list(neighbor_index ORDER BY rank) AS idx, list(cosine ORDER BY rank) AS val '
                     'FROM neighbors GROUP BY 1 ORDER BY 1').to_pylist()
    assert len(got) == 512
    checked = 0
    for row in got:
        truth = server.state.feature(SRC.model_id, SRC.source, row["index"])
        if truth is None or truth["topkCosSimValues"][0] is None:
            continue
        tv = np.array([np.nan if v is None else v for v in truth["topkCosSimValues"]])
        assert np.allclose(np.array(row["val"], dtype=float), tv, atol=1e-4, equal_nan=True)
        distinct = np.r_[True, np.abs(np.diff(tv)) > 1e-4] & np.r_[np.abs(np.diff(tv)) > 1e-4, True]
        assert np.array(row["idx"])[distinct].tolist() == np.array(truth["topkCosSimIndices"])[distinct].tolist()
        checked += 1
    assert checked > 500
    # neighbors now reads the stored table (same answer)
    out, _ = cli(capsys, "neighbors", f"{SRC}/{sae.days[3]}", "-k", "4", "--db", str(mirror.path), "--format", "json")
    assert [r["index"] for r in json.loads(out)] == server.state.feature(SRC.model_id, SRC.source, sae.days[3])["topkCosSimIndices"][:4]
    joined = mirror.sql("""SELECT f.top_explanation AS day, g.top_explanation AS near FROM neighbors n
                           JOIN features f ON f."index" = n."index" JOIN features g ON g."index" = n.neighbor_index
                           WHERE n.rank = 1 AND f.top_explanation IN ('Monday', 'Wednesday')""").to_pylist()
    assert {r["day"] for r in joined} == {"Monday", "Wednesday"} and all(r["near"] in DAYS for r in joined)


def test_pca_of_the_days_is_an_ordered_circle(world, capsys):
    _, mirror, sae, tmp = world
    where = "top_explanation IN ('Monday','Tuesday','Wednesday','Thursday','Friday','Saturday','Sunday')"
    out, err = cli(capsys, "geometry", "pca", str(SRC), "--where", where, "--out", str(tmp / "days.png"),
                   "--db", str(mirror.path), "--format", "json")
    rows = json.loads(out)
    assert [r["index"] for r in rows] == sorted(sae.days)
    coords = np.array([[r["x"], r["y"]] for r in rows])
    order = [rows[i]["explanation"] for i in circular_order(coords)]
    start = order.index("Monday")
    walk = order[start:] + order[:start]
    assert walk in (list(DAYS), [DAYS[0]] + list(reversed(DAYS[1:])))
    assert (tmp / "days.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "explained variance" in err


def test_match_recovers_the_split_families(world, capsys):
    _, mirror, sae, _ = world
    out, _ = cli(capsys, "geometry", "match", str(SRC), str(WIDE), "--db", str(mirror.path), "--format", "json", "--limit", "0")
    best = {r["index"]: r["match_index"] for r in json.loads(out)}
    assert sae.families
    for parent, children in sae.families.items():
        assert best[parent] in children


def test_nullspace_finds_exactly_the_planted_sets(world, capsys):
    _, mirror, sae, _ = world
    out, _ = cli(capsys, "geometry", "nullspace", str(SRC), "--matrix", str(sae.head_path), "--tensor", "W_K",
                 "--ov-tensor", "W_OV", "--db", str(mirror.path), "--format", "json")
    rows = json.loads(out)
    assert {r["index"] for r in rows if r["invisible"]} == set(sae.null_space)
    assert {r["index"] for r in rows if r["suppressed"]} == set(sae.suppressed)


def test_cluster_recovers_the_tree(world, capsys):
    _, mirror, sae, _ = world
    tree = [sae.tree_root] + [c for cs in sae.tree.values() for c in cs]
    chosen = sorted(set(tree) | set(sae.noise[:12]))
    out, _ = cli(capsys, "geometry", "cluster", str(SRC), "--features", ",".join(map(str, chosen)), "--threshold", "0.5",
                 "--db", str(mirror.path), "--format", "json")
    label = {r["index"]: r["label"] for r in json.loads(out)}
    assert len({label[i] for i in tree}) == 1
    assert all(label[n] != label[sae.tree_root] for n in sae.noise[:12])


def test_geometry_needs_weights_and_good_input(world, capsys):
    _, mirror, _, _ = world
    assert main(["neighbors", "gpt2-small/9-res-jb/1", "--db", str(mirror.path)]) == 2
    assert "weights" in capsys.readouterr().err
    assert main(["geometry", "pca", str(SRC), "--features", "1,x", "--db", str(mirror.path)]) == 2
    assert main(["geometry", "pca", str(SRC), "--where", "no_such_column > 1", "--db", str(mirror.path)]) == 2
    err = capsys.readouterr().err
    assert "SQL error" in err
