"""`np-mirror serve` against Neuronpedia's contract (`npclient.wire`), on a mirror built by hand.

The mirror holds what real syncs leave behind, each case on purpose: GET-origin bodies (with
their model/source/sourceSet relations, one with tied activations out of id order, one with bare
NaN/Infinity), POST-origin bodies (activations unordered, no relations), an imported export with
NaN/Infinity, listed sources with and without dashboards, a set known only from a POST feature,
and a model known only from the `models` table. No emulator: the expectations come from
`wire` and from the constants here.
"""

from __future__ import annotations

import ast
import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from npclient import SourceId, wire
from npclient.store.importer import import_source_dir
from npclient.models import Feature, ModelInfo, SourceInfo
from npclient.serve import create_app
from npclient.serve import api as serve_api
from npclient.store import catalog
from npclient.store.database import Database
from npclient.store.writer import FeatureRow, write_batch

M = "toy-model"
M2 = "other-model"
RES = "res-toy"
N_RES = 25  # GET-origin features of 0-res-toy: more than one search page
SERVE_DIR = Path(__file__).resolve().parents[1] / "npclient" / "serve"


def _strict_json(data: bytes) -> Any:
    """JSON as JSON.parse reads it: NaN and Infinity are not JSON."""
    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    return json.loads(data, parse_constant=refuse)


# --------------------------------------------------------------------------- the hand-built mirror

MODEL_ROW = {
    "id": M, "displayNameShort": "Toy", "displayName": "Toy Model", "creatorId": "u1", "tlensId": "toy",
    "openRouterId": None, "dimension": 16, "thinking": False, "visibility": "PUBLIC",
    "defaultSourceSetName": RES, "defaultSourceId": f"0-{RES}", "defaultGraphSourceSetName": None,
    "inferenceEnabled": False, "instruct": False, "layers": 4, "neuronsPerLayer": 64,
    "createdAt": "2024-01-01T00:00:00.000Z", "owner": "toys", "updatedAt": "2024-02-01T00:00:00.000Z",
    "website": "https://example.org/toy",
}


def source_row(source: str, **over: Any) -> dict[str, Any]:
    row = {
        "id": source, "modelId": M, "hasDashboards": True, "inferenceEnabled": False,
        "saelensConfig": {"d_sae": 64, "hook_name": f"blocks.{source[0]}.hook_resid_pre"},
        "saelensRelease": "toy-saes", "saelensSaeId": f"layer_{source[0]}", "hfRepoId": "toys/saes",
        "hfFolderId": f"layer_{source[0]}", "visibility": "PUBLIC", "defaultOfModelId": None,
        "setName": wire.set_name_of(source), "creatorId": "u1", "hasUmap": True, "hasUmapLogSparsity": False,
        "hasUmapClusters": False, "num_prompts": 100, "num_tokens_in_prompt": 128, "dataset": "toys/text",
        "notes": None, "cosSimMatchModelId": None, "cosSimMatchSourceId": None,
        "createdAt": "2024-01-02T00:00:00.000Z",
    }
    row.update(over)
    return row


def set_row(name: str, **over: Any) -> dict[str, Any]:
    row = {
        "modelId": M, "name": name, "hasDashboards": True, "allowInferenceSearch": False, "visibility": "PUBLIC",
        "description": f"Toy SAEs ({name})", "type": "SAE", "creatorName": "Toy Lab",
        "urls": [f"https://example.org/{name}"], "creatorEmail": None, "creatorId": "u1", "releaseName": "toy-release",
        "hasGraphs": False, "graphEnabled": False, "similarityMatrixEnabled": False, "defaultOfModelId": None,
        "defaultGraphModelId": None, "defaultRange": 1, "defaultShowBreaks": True, "showDfa": False,
        "showCorrelated": False, "showHeadAttribution": False, "showUmap": True,
        "createdAt": "2024-01-03T00:00:00.000Z",
    }
    row.update(over)
    return row


def act(source: str, index: int, ident: str, max_value: Any) -> dict[str, Any]:
    return {"id": ident, "tokens": ["a", "b", "c"], "dataIndex": None, "index": str(index), "layer": source,
            "modelId": M, "dataSource": None, "maxValue": max_value, "maxValueTokenIndex": 1, "minValue": 0.0,
            "values": [0.0, max_value, 0.0], "creatorId": "u1", "createdAt": "2024-01-04T00:00:00.000Z"}


def neuron(source: str, index: int, acts: list[dict[str, Any]], explanations: list[dict[str, Any]]) -> dict[str, Any]:
    return {"modelId": M, "layer": source, "index": str(index), "sourceSetName": wire.set_name_of(source),
            "creatorId": "u1", "maxActApprox": 5.0, "frac_nonzero": 0.01, "pos_str": ["x"], "pos_values": [1.0],
            "neg_str": ["y"], "neg_values": [-1.0], "topkCosSimIndices": [], "topkCosSimValues": [],
            "activations": acts, "explanations": explanations}


def get_body(source: str, index: int, acts: list[dict[str, Any]], description: str,
             sset: dict[str, Any]) -> dict[str, Any]:
    """A GET /api/feature body: the Neuron with all its relations, activations by maxValue desc."""
    body = neuron(source, index, acts, [{"id": f"e-{source}-{index}", "description": description,
                                         "explanationModelName": "toy-llm", "typeName": "oai_token-act-pair",
                                         "scores": [], "triggeredByUser": None}])
    body.update({"model": MODEL_ROW, "lists": [], "creator": {"name": "toy"}, "source": source_row(source),
                 "sourceSet": sset, "comments": []})
    return body


def post_body(source: str, index: int, acts: list[dict[str, Any]]) -> dict[str, Any]:
    """A POST /api/features item: no relations, activations in database order."""
    return neuron(source, index, acts, [{"description": f"posted {index}", "explanationModelName": "toy-llm",
                                         "typeName": "oai_token-act-pair"}])


#: 1-res-toy/0, synced by POST: activations not in rank order
POSTED_ACTS = [("c", 1.0), ("a", 5.0), ("b", 3.0), ("d", 4.0)]


def _gz_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))


def _write_export(root: Path) -> Path:
    """An export of 3-res-toy as Neuronpedia's export script writes it: Python's json.dumps, so bare NaN/Infinity."""
    src = root / M / f"3-{RES}"
    head = f'"modelId": "{M}", "layer": "3-{RES}", "index": "0"'
    _gz_lines(src / "features" / "batch-0.jsonl.gz", [
        "{" + head + ', "maxActApprox": NaN, "creatorId": null, "frac_nonzero": Infinity, "pos_str": ["p"], '
        '"pos_values": [-Infinity], "neg_str": [], "neg_values": [], "topkCosSimIndices": [], "topkCosSimValues": [], '
        f'"sourceSetName": "{RES}", "hasVector": false' + "}"
    ])
    _gz_lines(src / "activations" / "batch-0.jsonl.gz", [
        "{" + head + f', "id": "{ident}", "creatorId": null, "dataSource": null, "tokens": ["a", "b"], '
        f'"maxValue": {mv}, "minValue": 0.0, "values": [{v0}, {v1}], "maxValueTokenIndex": 0, "dfaValues": [], '
        '"dfaMaxValue": null, "dfaTargetIndex": null, "binContains": null, "binMin": null, "binMax": null}'
        for ident, mv, v0, v1 in (("x1", "2.0", "2.0", "NaN"), ("x2", "NaN", "NaN", "0.0"), ("x3", "5.0", "Infinity", "5.0"))
    ])
    _gz_lines(src / "explanations" / "batch-0.jsonl.gz", [
        "{" + head + ', "id": "ex0", "authorId": null, "description": "exported cats", "embedding": null, '
        '"typeName": "oai_token-act-pair", "explanationModelName": "toy-llm", "umap_x": NaN, "umap_y": 0.0, '
        '"umap_cluster": 0, "umap_log_feature_sparsity": 0.0}'
    ])
    (src / "source.jsonl").write_text(json.dumps(source_row(f"3-{RES}")) + "\n")
    return src


def build_mirror(path: Path) -> Path:
    db = Database(path)
    res_set = set_row(RES)
    for source in (f"0-{RES}", f"1-{RES}"):
        catalog.save_source(db, SourceId(M, source), SourceInfo.model_validate(source_row(source)), 64, "test")
    catalog.save_source(db, SourceId(M, f"2-{RES}"),
                        SourceInfo.model_validate(source_row(f"2-{RES}", hasDashboards=False)), 64, "test")
    catalog.save_source(db, SourceId(M, "0-att-toy"), SourceInfo.model_validate(source_row("0-att-toy")), 64, "test")
    rows = []
    for i in range(N_RES):
        acts = [act(f"0-{RES}", i, f"a{i}-{k}", float(10 - k)) for k in range(5)]
        rows.append(get_body(f"0-{RES}", i, acts, f"cats and dogs number {i}", res_set))
    # 0-res-toy/1: tied activations stored out of id order (Neuronpedia's sort has no tiebreak)
    rows[1]["activations"] = [act(f"0-{RES}", 1, "t-b", 3.0), act(f"0-{RES}", 1, "t-a", 3.0)]
    get_rows = [FeatureRow(Feature.from_json(orjson.dumps(r)), "get") for r in rows]
    # 0-res-toy/2: a body with bare NaN/Infinity, as a NaN-keeping writer would leave it
    nan_body = orjson.dumps(rows[2]).replace(b'"maxActApprox":5.0', b'"maxActApprox":NaN').replace(
        b'"pos_values":[1.0]', b'"pos_values":[Infinity]')
    assert b"NaN" in nan_body and b"Infinity" in nan_body
    nan_feature = Feature.from_json(orjson.dumps(rows[2]))
    nan_feature._raw_json = nan_body  # what raw_chunks will hold (Feature.from_json itself refuses NaN)
    get_rows[2] = FeatureRow(nan_feature, "get")
    # 0-att-toy/0: a GET body whose set has no dashboards
    get_rows.append(FeatureRow(Feature.from_json(orjson.dumps(get_body(
        "0-att-toy", 0, [act("0-att-toy", 0, "z", 1.0)], "attention cats", set_row("att-toy", hasDashboards=False)))), "get"))
    # 0-steer-toy/0: a steering vector synced by GET (its set, like Neuronpedia's vector sets, has no dashboards)
    steer = get_body("0-steer-toy", 0, [], "steer towards joy", set_row("steer-toy", hasDashboards=False))
    steer.update({"vector": [0.25, -1.5], "vectorLabel": "joy", "hookName": "blocks.0.hook_resid_pre",
                  "vectorDefaultSteerStrength": 10.0, "hasVector": True})
    get_rows.append(FeatureRow(Feature.from_json(orjson.dumps(steer)), "get"))
    post_rows = [
        FeatureRow(Feature.from_json(orjson.dumps(post_body(f"1-{RES}", 0, [act(f"1-{RES}", 0, i, v) for i, v in POSTED_ACTS]))), "post"),
        FeatureRow(Feature.from_json(orjson.dumps(post_body("0-bare-toy", 0, [act("0-bare-toy", 0, "q", 2.0)]))), "post"),
    ]
    write_batch(db, get_rows + post_rows)
    catalog.save_models(db, [ModelInfo.model_validate({"id": M2, "displayName": "Other Model", "layers": 2,
                                                       "owner": "others", "dimension": 8})])
    catalog.save_source(db, SourceId(M2, "0-res-x"), SourceInfo.model_validate(source_row("0-res-x", modelId=M2)), 8, "test")
    report = import_source_dir(db, _write_export(path.parent / "export"))
    assert report.ok, report.failed
    db.close()
    return path


@pytest.fixture(scope="module")
def mirror_path(tmp_path_factory) -> Path:
    return build_mirror(tmp_path_factory.mktemp("contract") / "mirror.duckdb")


@pytest.fixture(scope="module")
def client(mirror_path):
    app = create_app(mirror_path, linger_s=0.2)
    with TestClient(app, base_url="http://127.0.0.1:3000") as c:
        yield c
    app.state.reader.close()


def _stored_bytes(mirror_path: Path, key: str) -> bytes:
    from npclient.mirror import Mirror

    with Mirror(mirror_path, read_only=True) as mirror:
        return mirror.feature(key).raw_json


def _json(r) -> Any:
    assert r.headers["content-type"].startswith("application/json"), (r.status_code, r.text[:200])
    return _strict_json(r.content)


# --------------------------------------------------------------------------- 1. no emulator, wire's routes


def test_serve_imports_nothing_from_the_emulator():
    for path in SERVE_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mod = ("." * node.level) + (node.module or "")
                assert "testing" not in mod.split("."), f"{path.name} imports {mod}"
            elif isinstance(node, ast.Import):
                assert not any("npclient.testing" in a.name for a in node.names), path.name
    code = ("import sys, npclient.serve, npclient.serve.api, npclient.serve.pages, np_mirror.cmd_serve\n"
            "print(sorted(m for m in sys.modules if m.startswith('npclient.testing')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_route_table_is_wires_read_routes(client):
    assert set(serve_api.SERVED_ROUTES) <= set(wire.READ_ROUTES)
    assert {p for p, _ in serve_api.SERVED_ROUTES} | set(serve_api.UNSERVED_ROUTES) == {p for p, _ in wire.READ_ROUTES}
    fill = {"model_id": M, "source_id": f"0-{RES}", "index": "0", "set_name": RES}
    for path, method in wire.READ_ROUTES:
        r = client.request(method, path.format(**fill), content=b"{}")
        body = _json(r)
        if path in serve_api.UNSERVED_ROUTES:
            assert r.status_code == 404 and "does not serve" in body["message"], path
        else:
            assert r.status_code != 404 or path == wire.FEATURE_PATH, (path, body)
    assert client.get(f"/api/feature/{M}/0-{RES}/0").status_code == 200


# --------------------------------------------------------------------------- 2. never 500 to bad input


@pytest.mark.parametrize(("path", "access_denied"), [
    (f"/api/feature/{M}/0-{RES}/{'9' * 5000}", False),
    (f"/api/feature/{M}/0-{RES}/{'1' + '0' * 4400}", False),
    (f"/api/feature/nomodel/0-{RES}/{'9' * 5000}", True),
    (f"/api/feature/{M}/0-{RES}/abc", False),
    (f"/api/feature/{M}/0-{RES}/-1", False),
    (f"/api/feature/{M}/0-{RES}/007", False),
    (f"/api/feature/{M}/0-{RES}/2147483648", False),
    (f"/api/feature/{M}/0-{RES}/1e400", False),
    (f"/api/feature/{M}/9-{RES}/0", False),  # a source the set does not list: only the feature misses
    (f"/api/feature/{M}/0-{RES}__x/0", False),  # `__` cuts the set name: still res-toy
    (f"/api/feature/{M}/0-nosuchset/0", True),
    (f"/api/feature/{M}/7/0", True),  # a bare number is the `neurons` set, which the mirror lacks
    (f"/api/feature/nomodel/0-{RES}/0", True),
])
def test_get_feature_misses_are_neuronpedias_404s(client, path, access_denied):
    r = client.get(path)
    assert r.status_code == 404
    assert _json(r) == wire.not_found_body(access_denied=access_denied)


@pytest.mark.parametrize(("body", "message"), [
    (b'[{"modelId": "toy-model", "layer": "0-res-toy", "index": "1e400"}]', "[0].index must be an integer"),
    (b'[{"modelId": "toy-model", "layer": "0-res-toy", "index": "Infinity"}]', "[0].index must be an integer"),
    (b'[{"modelId": "toy-model", "layer": "0-res-toy", "index": 1e400}]', "[0].index must be an integer"),
    (b'[{"modelId": "toy-model", "layer": "0-res-toy", "index": ' + b"9" * 5000 + b"}]", "[0].index must be an integer"),
    (b'[{"modelId": "toy-model", "layer": "0-res-toy", "index": 1.5}]', "[0].index must be an integer"),
    (b'[{"modelId": "toy-model", "layer": "0-res-toy", "index": 0}, {"index": 1}]', "[1].layer is a required field"),
    (b"[]", wire.UNKNOWN_ERROR),
    (b"null", wire.INVALID_JSON_BODY),
    (b"0", wire.INVALID_JSON_BODY),
])
def test_post_features_bad_bodies_are_400(client, body, message):
    r = client.post("/api/features", content=body)
    assert (r.status_code, _json(r)) == (400, {"message": message})


@pytest.mark.parametrize("body", [b"", b"{", b"[1,]", b"NaN", b'[{"index": NaN}]', b"\xff\xfe", b"[" * 100000])
@pytest.mark.parametrize("path", [wire.FEATURES_PATH, wire.SEARCH_PATH])
def test_a_body_that_is_not_json_is_400(client, path, body):
    r = client.post(path, content=body)
    assert r.status_code == 400 and "message" in _json(r)


@pytest.mark.parametrize(("body", "message"), [
    ({"modelId": M, "layers": [f"0-{RES}"], "query": "ab"}, "query must be at least 3 characters"),
    ({"modelId": M, "layers": [f"0-{RES}"]}, "query is a required field"),
    ({"modelId": M, "query": "cats"}, "layers is a required field"),
    ({"layers": [f"0-{RES}"], "query": "cats"}, "modelId is a required field"),
    ({"modelId": M, "layers": [f"0-{RES}"], "query": "cats", "offset": 1.5}, "offset must be an integer"),
    ({"modelId": M, "layers": "0-res-toy", "query": "cats"},
     "layers must be a `array` type, but the final value was: `\"0-res-toy\"`."),
    ({"modelId": M, "layers": [], "query": "cats"}, wire.UNKNOWN_ERROR),  # Neuronpedia: 500
    ({"modelId": M, "layers": [f"0-{RES}"], "query": "cats", "offset": -1}, wire.UNKNOWN_ERROR),  # Neuronpedia: 500
    ([], "this must be a `object` type, but the final value was: `[]`."),
    (None, wire.INVALID_JSON_BODY),
])
def test_search_validation_is_400_with_wires_message(client, body, message):
    r = client.post(wire.SEARCH_PATH, content=json.dumps(body))
    assert (r.status_code, _json(r)) == (400, {"message": message})


def test_search_unknown_model_or_set_is_404_and_says_so(client):
    r = client.post(wire.SEARCH_PATH, json={"modelId": "no-such-model", "layers": [f"0-{RES}"], "query": "cats"})
    assert r.status_code == 404 and "no-such-model" in _json(r)["message"]
    r = client.post(wire.SEARCH_PATH, json={"modelId": M, "layers": [f"0-{RES}", "0-nosuchset"], "query": "cats"})
    assert r.status_code == 404 and "nosuchset" in _json(r)["message"]
    r = client.post(wire.SEARCH_PATH, json={"modelId": M, "layers": [f"0-{RES}"], "query": "(unclosed", "regex": True})
    assert r.status_code == 400 and _json(r)["message"].startswith("Invalid query")


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", wire.FEATURES_PATH, "POST"),
    ("GET", wire.MODEL_LIST_PATH, "POST"),  # three segments: a page URL shape, still the API's 405
    ("GET", wire.SEARCH_PATH, "POST"),
    ("DELETE", wire.SEARCH_PATH, "POST"),
    ("POST", f"/api/feature/{M}/0-{RES}/0", "GET, HEAD"),
    ("PUT", f"/api/source-set/{M}/{RES}", "GET, HEAD"),
    ("GET", wire.FEATURES_OFFSET_PATH, "POST"),
])
def test_a_wrong_method_is_405_with_allow_and_json(client, method, path, allow):
    r = client.request(method, path)
    assert r.status_code == 405  # Starlette keeps methods in a set: the order of `Allow` varies
    assert {m.strip() for m in r.headers["allow"].split(",")} == {m.strip() for m in allow.split(",")}
    assert _json(r)["error"] == "Method Not Allowed"


@pytest.mark.parametrize("path", ["/api", "/api/", "/api/nothing", "/api/feature/a/b", "/api/features/x",
                                  "/api/feature/a/b/c/d", "/api/model", "/api/%00", "/api/x%0Ay", "/api/feature/%0A0"])
def test_unknown_api_paths_are_404_json(client, path):
    r = client.get(path)
    assert r.status_code == 404 and _json(r)["error"] == "Not Found"


def test_a_refused_host_gets_json(mirror_path):
    app = create_app(mirror_path, linger_s=0)
    for base in ("http://evil.example:3000", "http://127.0.0.1.evil.example"):
        with TestClient(app, base_url=base) as c:
            for path in (f"/api/feature/{M}/0-{RES}/0", "/", f"/{M}/0-{RES}"):
                r = c.get(path)
                assert r.status_code == 400 and "Invalid host header" in _json(r)["error"], (base, path)
    with TestClient(app, base_url="http://127.0.0.1:3000", headers={"host": "[::1"}) as c:
        assert c.get("/").status_code == 400
    only = create_app(mirror_path, allowed_hosts=["*.example.org"], linger_s=0)
    with TestClient(only, base_url="http://mirror.example.org") as c:
        assert c.get(f"/api/feature/{M}/0-{RES}/0").status_code == 200
    app.state.reader.close()
    only.state.reader.close()


def test_an_oversized_body_is_413_and_a_busy_mirror_503(mirror_path, monkeypatch):
    from npclient.errors import MirrorBusyError

    app = create_app(mirror_path, linger_s=0)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        r = c.post(wire.FEATURES_PATH, content=b"[" + b" " * serve_api.MAX_BODY + b"]")
        assert r.status_code == 413 and "MiB" in _json(r)["message"]
        r = c.post(wire.FEATURES_PATH, json=[{"modelId": M, "layer": f"0-{RES}", "index": i} for i in range(serve_api.MAX_BATCH + 1)])
        assert r.status_code == 400 and str(serve_api.MAX_BATCH) in _json(r)["message"]

        def busy(*args: Any) -> None:
            raise MirrorBusyError("locked by another process for 30 s")

        monkeypatch.setattr(app.state.reader, "feature_body", busy)
        r = c.get(f"/api/feature/{M}/0-{RES}/0")
        assert r.status_code == 503 and r.headers["retry-after"] and "busy" in _json(r)["message"]
    app.state.reader.close()


def test_vector_get_answers_stored_vectors(client):
    want = {"modelId": M, "layer": "0-steer-toy", "index": "0", "vectorLabel": "joy", "createdAt": None,
            "creatorId": "u1", "vectorDefaultSteerStrength": 10.0, "hookName": "blocks.0.hook_resid_pre",
            "vector": [0.25, -1.5]}
    for index in ("0", 0):
        r = client.post(wire.VECTOR_GET_PATH, json={"modelId": M, "source": "0-steer-toy", "index": index})
        assert (r.status_code, _json(r)) == (200, {"vector": want})
    for body, status, message in (
        ({}, 400, "index is a required field"),
        ({"index": "0"}, 400, "source is a required field"),
        ({"index": "0", "source": {"a": 1}, "modelId": M}, 400,
         'source must be a `string` type, but the final value was: `{\n  "a": 1\n}`.'),
        (None, 400, "this must be a `object` type, but the final value was: `null`."),
    ):
        r = client.post(wire.VECTOR_GET_PATH, content=json.dumps(body))
        assert (r.status_code, _json(r)) == (status, wire.error_envelope(message)), body
    for body in ({"modelId": M, "source": f"0-{RES}", "index": "0"},  # an SAE feature: no stored vector
                 {"modelId": M, "source": "0-steer-toy", "index": "1"}, {"modelId": "x", "source": "y", "index": "z"}):
        r = client.post(wire.VECTOR_GET_PATH, json=body)
        assert r.status_code == 404 and "No stored vector" in _json(r)["message"]
    r = client.post(wire.VECTOR_GET_PATH, content=b"{")
    assert r.status_code == 400 and set(_json(r)) == {"error", "message"}


# --------------------------------------------------------------------------- 3. shapes


def test_model_list_has_neuronpedias_shape(client):
    models = {m["id"]: m for m in _json(client.post(wire.MODEL_LIST_PATH))}
    assert set(models) == {M, M2}
    toy = models[M]
    for key, value in MODEL_ROW.items():  # the model row a GET body carried
        assert toy[key] == value, key
    sets = {s["name"]: s for s in toy["sourceSets"]}
    assert set(sets) == {RES, "bare-toy"}  # att-toy: its set has no dashboards
    res = sets[RES]
    assert {k: v for k, v in res.items() if k != "sources"} == set_row(RES)
    assert [s["id"] for s in res["sources"]] == [f"0-{RES}", f"1-{RES}", f"3-{RES}"]  # 2-: no dashboards
    for s in res["sources"] + sets["bare-toy"]["sources"]:
        assert tuple(s) == wire.MODEL_LIST_SOURCE_FIELDS
    assert res["sources"][0] == {k: source_row(f"0-{RES}")[k] for k in wire.MODEL_LIST_SOURCE_FIELDS}
    bare = sets["bare-toy"]  # known from one POST feature only: Neuronpedia's column defaults
    assert (bare["description"], bare["urls"], bare["releaseName"], bare["hasDashboards"]) == ("", [], None, True)
    assert bare["sources"][0]["id"] == "0-bare-toy" and bare["sources"][0]["setName"] == "bare-toy"
    other = models[M2]  # from the models table
    assert (other["displayName"], other["layers"], other["owner"], other["dimension"]) == ("Other Model", 2, "others", 8)
    assert other["displayNameShort"] == "" and other["visibility"] == "PUBLIC"
    assert [s["name"] for s in other["sourceSets"]] == ["res-x"]


def test_source_set_has_neuronpedias_shape(client):
    got = _json(client.get(f"/api/source-set/{M}/{RES}"))
    base = {k: v for k, v in got.items() if k not in ("sources", "releases", "model")}
    assert base == set_row(RES)
    assert isinstance(got["releases"], dict) and got["releases"]["name"] == "toy-release"
    assert got["model"] == {**MODEL_ROW}
    ids = [s["id"] for s in got["sources"]]
    assert ids == [f"0-{RES}", f"1-{RES}", f"2-{RES}", f"3-{RES}"]  # all columns, no hasDashboards filter
    assert got["sources"][0] == source_row(f"0-{RES}")
    assert got["sources"][2]["hasDashboards"] is False
    assert got["sources"][2]["saelensConfig"] == source_row(f"2-{RES}")["saelensConfig"]
    bare = _json(client.get(f"/api/source-set/{M}/bare-toy"))
    assert (bare["description"], bare["urls"], bare["releases"]) == ("", [], None)
    assert bare["model"]["displayName"] == "Toy Model"  # another set's GET body still names the model
    assert [s["id"] for s in bare["sources"]] == ["0-bare-toy"]
    assert set(bare["sources"][0]) == set(source_row("0-bare-toy"))
    for unknown in (f"/api/source-set/{M}/nosuchset", f"/api/source-set/nomodel/{RES}", f"/api/source-set/{M}/{'x' * 600}"):
        r = client.get(unknown)
        assert (r.status_code, r.content) == (200, b"null")


def test_search_results_have_neuronpedias_shape_and_pages(client):
    body = {"modelId": M, "layers": [f"0-{RES}", f"1-{RES}"], "query": "cats"}
    page = _json(client.post(wire.SEARCH_PATH, json=body))
    assert page["request"] == body
    assert (page["resultsCount"], page["hasMore"], page["nextOffset"]) == (20, True, 20)
    keys = {"modelId", "layer", "index", "description", "explanationModelName", "typeName", "cosine_similarity", "neuron"}
    for r in page["results"]:
        assert set(r) == keys, r
        n = r["neuron"]
        assert (n["modelId"], n["layer"], n["index"]) == (r["modelId"], r["layer"], r["index"])
        assert len(n["activations"]) == min(3, len(n["activations"])) and n["activations"]
        assert n["activations"] == wire.rank_activations(n["activations"])
        assert "model" not in n and "sourceSet" not in n
        assert all(set(e) == {"description", "explanationModelName", "typeName"} for e in n["explanations"])
    top = page["results"][0]["neuron"]["activations"]
    assert [a["maxValue"] for a in top] == [10.0, 9.0, 8.0] or [a["id"] for a in top] == ["t-a", "t-b"]
    last = _json(client.post(wire.SEARCH_PATH, json={**body, "offset": 20}))
    assert (last["resultsCount"], last["hasMore"]) == (N_RES - 20, False) and "nextOffset" not in last
    seen = {(r["layer"], r["index"]) for r in page["results"] + last["results"]}
    assert len(seen) == N_RES
    # yup's casts rebuild the echo: declared keys in reverse order, then the rest
    cast = _json(client.post(wire.SEARCH_PATH, json={"modelId": M, "layers": [f"0-{RES}"], "query": "cats",
                                                        "offset": "20", "extra": 1}))
    assert list(cast["request"].items()) == [("offset", 20), ("query", "cats"), ("layers", [f"0-{RES}"]),
                                             ("modelId", M), ("extra", 1)]


# --------------------------------------------------------------------------- 4. activation order, NaN


def test_get_feature_ranks_activations_and_keeps_ranked_bodies_byte_exact(client, mirror_path):
    r = client.get(f"/api/feature/{M}/0-{RES}/0")
    assert r.content == _stored_bytes(mirror_path, f"{M}/0-{RES}/0")  # already ranked: as stored
    tied = _json(client.get(f"/api/feature/{M}/0-{RES}/1"))
    assert [a["id"] for a in tied["activations"]] == ["t-a", "t-b"]  # ties by id, as wire ranks them
    posted = _json(client.get(f"/api/feature/{M}/1-{RES}/0"))
    assert [a["id"] for a in posted["activations"]] == ["a", "d", "b", "c"]
    assert posted == {**orjson.loads(_stored_bytes(mirror_path, f"{M}/1-{RES}/0")), "activations": posted["activations"]}


def test_post_features_activation_order_follows_neuronpedia(client):
    item = {"modelId": M, "layer": f"1-{RES}", "index": 0}
    plain = _json(client.post(wire.FEATURES_PATH, json=[item]))
    assert [a["id"] for a in plain[0]["activations"]] == ["a", "b", "c", "d"]  # database order, no ranking
    top = _json(client.post(wire.FEATURES_PATH, json=[{**item, "maxActsToReturn": 2}]))
    assert [a["id"] for a in top[0]["activations"]] == ["a", "d"]
    second_only = _json(client.post(wire.FEATURES_PATH, json=[
        {"modelId": M, "layer": f"0-{RES}", "index": 3}, {**item, "maxActsToReturn": 1}]))
    assert [len(x["activations"]) for x in second_only] == [5, 4]  # only the first item's value counts
    ranked = _json(client.post(wire.FEATURES_PATH, json=[{"modelId": M, "layer": f"0-{RES}", "index": 0, "maxActsToReturn": 99}]))
    assert [a["maxValue"] for a in ranked[0]["activations"]] == [10.0, 9.0, 8.0, 7.0, 6.0]
    for r in (plain[0], top[0]):
        assert not {"model", "source", "sourceSet", "lists", "comments", "creator"} & set(r)


def test_nan_and_infinity_are_served_as_null(client):
    r = client.get(f"/api/feature/{M}/0-{RES}/2")  # a stored body with bare NaN/Infinity
    body = _json(r)
    assert body["maxActApprox"] is None and body["pos_values"] == [None]
    exp = _json(client.get(f"/api/feature/{M}/3-{RES}/0"))  # an imported export with NaN/Infinity
    assert exp["maxActApprox"] is None and exp["frac_nonzero"] is None and exp["pos_values"] == [None]
    assert [a["id"] for a in exp["activations"]] == ["x3", "x1", "x2"]  # NaN ranks last
    assert exp["activations"][0]["values"] == [None, 5.0] and exp["activations"][2]["maxValue"] is None
    assert exp["explanations"][0]["description"] == "exported cats"
    posted = _json(client.post(wire.FEATURES_PATH, json=[{"modelId": M, "layer": f"3-{RES}", "index": 0, "maxActsToReturn": 2},
                                                         {"modelId": M, "layer": f"0-{RES}", "index": 2}]))
    assert [p["index"] for p in posted] == ["0", "2"] and [a["id"] for a in posted[0]["activations"]] == ["x3", "x1"]
    found = _json(client.post(wire.SEARCH_PATH, json={"modelId": M, "layers": [f"3-{RES}"], "query": "exported cats"}))
    assert found["results"][0]["neuron"]["maxActApprox"] is None
    for page in (f"/{M}/3-{RES}/0", f"/{M}/0-{RES}/2", f"/{M}/3-{RES}"):
        assert client.get(page).status_code == 200, page


def test_wide_integers_and_lone_surrogates_are_written_as_json():
    assert serve_api.dumps({"n": 10**30, "x": math.nan}) == b'{"n":1000000000000000000000000000000,"x":null}'
    assert _strict_json(serve_api.dumps({"s": "\ud800", "y": math.inf})) == {"s": "\ud800", "y": None}
    assert serve_api.loads(b'{"a": NaN, "b": -Infinity, "c": 123456789012345678901234567890}')["c"] == 123456789012345678901234567890


# --------------------------------------------------------------------------- the official client


def test_official_client_reads_a_set_built_from_defaults(mirror_path):
    pytest.importorskip("neuronpedia", reason="pip install neuronpedia (dev extra)")
    from helpers import official_client_port
    from test_serve import serve_process

    code = (
        "import json, sys\n"
        "from neuronpedia.np_source_set import SourceSet\n"
        "from neuronpedia.np_sae_feature import SAEFeature\n"
        "out = {}\n"
        "for name in sys.argv[2:]:\n"
        "    s = SourceSet.get(sys.argv[1], name)\n"
        "    out[name] = [s.name, s.model_id, s.description, s.url, [[x.id, x.model_id, x.set_name] for x in s.sources]]\n"
        "f = SAEFeature.get(sys.argv[1], '1-res-toy', '0')\n"
        "out['feature'] = [f.modelId, f.source, f.index, [a['id'] for a in json.loads(f.jsonData)['activations']]]\n"
        "print('NPSETS ' + json.dumps(out))\n"
    )
    env = {**os.environ, "USE_LOCALHOST": "true", "NEURONPEDIA_API_KEY": "local-mirror"}
    with official_client_port() as port, serve_process(mirror_path, port):  # skips if port 3000 is taken
        out = subprocess.run([sys.executable, "-c", code, M, RES, "bare-toy"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("NPSETS "))[len("NPSETS "):])
    assert got[RES][:4] == [RES, M, f"Toy SAEs ({RES})", f"https://example.org/{RES}"]
    assert [s[0] for s in got[RES][4]] == [f"{n}-{RES}" for n in range(4)]
    assert got["bare-toy"] == ["bare-toy", M, "", None, [["0-bare-toy", M, "bare-toy"]]]
    assert got["feature"] == [M, f"1-{RES}", "0", ["a", "d", "b", "c"]]
