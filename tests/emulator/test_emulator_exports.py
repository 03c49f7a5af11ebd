"""Bulk-export tree (`write_export`) and the read-only S3 stand-in (`create_s3_app`, `S3Server`).

The export writer is checked against Neuronpedia's own exporter,
`utils/neuronpedia-utils/neuronpedia_utils/export-data.py`: its column lists (npclient.wire),
its pagination (features and explanations `ORDER BY index LIMIT/OFFSET` on a TEXT index,
activations by numeric range sized by the feature count), its serialisation (`json.dumps`
defaults, gzip level 5) and its creator-id rewriting.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_plus

import httpx
import orjson
import pytest

from npclient import wire
from npclient.testing import (
    EmulatorConfig,
    EmulatorState,
    ExportQuirks,
    S3Faults,
    S3Server,
    SourceSpec,
    create_s3_app,
    write_export,
)
from npclient.testing.emulator.exports import (
    ACTIVATION_FIELDS,
    ACTIVATION_OPTIONAL_FIELDS,
    DEFAULT_CREATOR_ID,
    EXPLANATION_FIELDS,
    activation_ranges,
    exported_explanation_ids,
)
from npclient.testing.emulator.s3 import S3_NAMESPACE, hostile_keys_for, s3_etag, safe_key_path

M = "gpt2-small"
S0, S1 = "0-res-jb", "1-res-jb"
BS = 100
NS = {"s3": S3_NAMESPACE}
EXTRA_FEATURE = {"decoderNorm", "_exportVersion"}
BATCH_RE = re.compile(r"batch-(\d+)\.jsonl\.gz$")
META_RE = r"(model|release|source|sourceset|inference_hosts_on_source|inference_hosts)\.jsonl"

CONFIG = EmulatorConfig(
    sources=(
        SourceSpec(M, S0, d_sae=350, d_in=32),
        SourceSpec(M, S1, d_sae=120, d_in=32),
        SourceSpec("gemma-2-2b", "3-gemmascope-res-16k", d_sae=40, d_in=16),
        SourceSpec(M, "6-res-vectors", d_sae=0, kind="vector", n_vectors=2),
    ),
    seed=7,
    hole_rate=0.06,
    n_activations=(1, 3),
    tokens_per_activation=(3, 6),
)
SMALL = EmulatorConfig(
    sources=(SourceSpec(M, S0, d_sae=60, d_in=16),), seed=2, hole_rate=0.05,
    n_activations=(1, 2), tokens_per_activation=(2, 4),
)


# --------------------------------------------------------------------------- helpers


def read_gz(path: Path) -> list[dict[str, Any]]:
    """Records of a batch; Python's json reads the bare NaN/Infinity the writer emits."""
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]


def batches(folder: Path) -> list[tuple[int, Path]]:
    """Batch files of a folder in numeric order of N."""
    found = [(int(BATCH_RE.search(p.name).group(1)), p) for p in folder.glob("batch-*.jsonl.gz")]  # type: ignore[union-attr]
    return sorted(found)


def all_records(folder: Path) -> list[dict[str, Any]]:
    return [r for _, p in batches(folder) for r in read_gz(p)]


def same(a: Any, b: Any) -> bool:
    """Equal, NaN included (as json.dumps writes both)."""
    return json.dumps(a) == json.dumps(b)


def key_url(base: str, key: str) -> str:
    """URL of a key, with dot segments percent-encoded so the client does not normalise them."""
    segs = [quote(s, safe="") if s not in (".", "..") else s.replace(".", "%2E") for s in key.split("/")]
    return base + "/" + "/".join(segs)


def parse_list(body: bytes) -> dict[str, Any]:
    root = ET.fromstring(body)
    assert root.tag == f"{{{S3_NAMESPACE}}}ListBucketResult"

    def text(tag: str) -> str | None:
        el = root.find(f"s3:{tag}", NS)
        return None if el is None else (el.text or "")

    return {
        "name": text("Name"), "prefix": text("Prefix"), "key_count": text("KeyCount"),
        "max_keys": text("MaxKeys"), "truncated": text("IsTruncated"),
        "token": text("NextContinuationToken"), "cont": text("ContinuationToken"),
        "contents": [
            {c.tag.split("}")[1]: (c.text or "") for c in el} for el in root.findall("s3:Contents", NS)
        ],
        "prefixes": [el.findtext("s3:Prefix", namespaces=NS) for el in root.findall("s3:CommonPrefixes", NS)],
    }


def list_all(client: httpx.Client, url: str, **params: str) -> tuple[list[str], int]:
    keys: list[str] = []
    token: str | None = None
    pages = 0
    for _ in range(100):
        q = {"list-type": "2", **params}
        if token:
            q["continuation-token"] = token
        r = client.get(url, params=q)
        assert r.status_code == 200, r.text
        page = parse_list(r.content)
        pages += 1
        keys.extend(c["Key"] for c in page["contents"])
        if page["truncated"] == "false":
            assert page["token"] is None
            return keys, pages
        token = page["token"]
        assert token
    raise AssertionError("listing did not end")


def error_code(body: bytes) -> str:
    root = ET.fromstring(body)
    assert root.tag == "Error"
    return root.findtext("Code") or ""


# --------------------------------------------------------------------------- export fixtures


@pytest.fixture(scope="module")
def state() -> EmulatorState:
    return EmulatorState(CONFIG)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory, state: EmulatorState) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("export")
    return root, write_export(state, root, quirks=ExportQuirks(batch_size=BS))


# --------------------------------------------------------------------------- export tests


def test_layout(export: tuple[Path, list[Path]], state: EmulatorState) -> None:
    root, written = export
    on_disk = sorted(p for p in root.rglob("*") if p.is_file())
    assert written == on_disk
    rel = {p.relative_to(root).as_posix() for p in written}
    for spec in state.sources():
        base = f"v1/{spec.model_id}/{spec.source_id}/"
        if spec.kind == "vector":
            assert not any(k.startswith(base) for k in rel)
            continue
        for name in ("model", "release", "source", "sourceset", "inference_hosts_on_source", "inference_hosts"):
            assert base + f"{name}.jsonl" in rel
        n = state.feature_count(spec.model_id, spec.source_id)
        for folder in ("features", "activations"):  # both: ceil(count / bs) batches
            got = sorted(k for k in rel if k.startswith(base + folder + "/"))
            assert got == sorted(base + f"{folder}/batch-{i}.jsonl.gz" for i in range(-(-n // BS)))
        for k in rel:
            if k.startswith(base):
                assert re.fullmatch(re.escape(base) + "(" + META_RE + r"|"
                                    r"(features|activations|explanations)/batch-\d+\.jsonl\.gz)", k), k
    for model in ("gpt2-small", "gemma-2-2b"):
        assert f"v1/{model}/headvis/batch-0.jsonl.gz" in rel
        assert f"v1/{model}/jlens/features/batch-0.jsonl.gz" in rel


def test_serialisation_is_pythons_json_dumps_and_gzip_level_5(export: tuple[Path, list[Path]], state: EmulatorState) -> None:
    """export-data.py: `json.dumps(row)` with defaults per line, `gzip.compress(..., compresslevel=5)`."""
    root, written = export
    tokens = Counter()
    for path in written:
        if path.suffix != ".gz":
            continue
        raw = gzip.decompress(path.read_bytes())
        assert path.read_bytes() == gzip.compress(raw, compresslevel=5, mtime=0), path
        if not raw:
            continue
        assert raw.endswith(b"\n") and raw.isascii()  # ensure_ascii=True
        for line in raw.splitlines():
            rec = json.loads(line)
            assert line == json.dumps(rec).encode()  # separators ", " and ": ", allow_nan
        tokens.update(t for t in ("NaN", "Infinity") if re.search(rb"[\[ ]-?" + t.encode() + rb"[,\]]", raw))
    assert tokens["NaN"] and tokens["Infinity"]  # bare tokens, where the API says null
    for name in ("model", "source"):
        line = (root / "v1" / M / S0 / f"{name}.jsonl").read_bytes()
        assert line.endswith(b"\n") and line.count(b"\n") == 1 and b'": ' in line


def test_meta_rows_are_the_db_rows(export: tuple[Path, list[Path]], state: EmulatorState) -> None:
    root, _ = export
    base = root / "v1" / M / S0
    rows = {}
    for name in ("model", "release", "source", "sourceset"):
        lines = (base / f"{name}.jsonl").read_bytes().splitlines()
        assert len(lines) == 1
        rows[name] = json.loads(lines[0])
    for name in ("inference_hosts_on_source", "inference_hosts"):
        assert (base / f"{name}.jsonl").read_bytes() == b""  # the emulator runs no inference hosts
    full = state.feature(M, S0, state.feature_indices(M, S0)[0])
    assert full is not None

    def as_exported(api_row: dict[str, Any]) -> dict[str, Any]:
        # getFormattedJsonlRow: naive isoformat (Prisma's timestamp(3) has no zone), creatorId replaced
        out = dict(api_row)
        for k in ("createdAt", "updatedAt"):
            if k in out:
                assert out[k].endswith("Z")
                date, frac = out[k][:-1].split(".")
                out[k] = date if frac == "000" else f"{date}.{frac}000"
        if "creatorId" in out:
            out["creatorId"] = DEFAULT_CREATOR_ID
        return out

    assert rows["model"] == as_exported(full["model"])
    assert list(rows["model"]) == list(full["model"])  # key order: the table's columns
    assert rows["source"] == as_exported(full["source"])
    set_row = {k: v for k, v in full["sourceSet"].items() if k not in ("sources", "releases", "model")}
    assert rows["sourceset"] == as_exported(set_row)
    assert rows["release"]["name"] == full["sourceSet"]["releaseName"] == full["source"]["saelensRelease"]
    assert rows["release"]["defaultSourceId"] == S0 and rows["release"]["creatorId"] == DEFAULT_CREATOR_ID
    assert "Z" not in rows["model"]["createdAt"]


def test_features_exact_columns_text_order_and_holes(export: tuple[Path, list[Path]], state: EmulatorState) -> None:
    root, _ = export
    for source in (S0, S1):
        present = state.feature_indices(M, source)
        holes = [i for i in range(state.source(M, source).d_sae) if state.is_hole(M, source, i)]  # type: ignore[union-attr]
        assert holes, "the config should produce holes"
        files = batches(root / "v1" / M / source / "features")
        sizes = [len(read_gz(p)) for _, p in files]
        assert all(s == BS for s in sizes[:-1]) and 0 < sizes[-1] <= BS
        records = all_records(root / "v1" / M / source / "features")
        assert [r["index"] for r in records] == sorted((str(i) for i in present))
        assert [r["index"] for r in records][:4] == ["0", "1", "10", "100"]
        assert not {int(r["index"]) for r in records} & set(holes)
        for r in records:
            assert tuple(r) == wire.EXPORT_FEATURE_FIELDS  # exactly, in export-data.py's order
            db = state.feature_db(M, source, int(r["index"]))
            assert db is not None
            assert r["creatorId"] == DEFAULT_CREATOR_ID != db["creatorId"]
            assert all(same(r[k], db[k]) for k in wire.EXPORT_FEATURE_FIELDS if k != "creatorId"), r["index"]
    # NaN/Infinity: the DB's floats, which the API serves as null
    nan_seen = False
    for r in all_records(root / "v1" / M / S0 / "features"):
        vals = r["freq_hist_data_bar_values"] + r["logits_hist_data_bar_values"]
        bad = [k for k, v in enumerate(vals) if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            nan_seen = True
            api = state.feature(M, S0, int(r["index"]))
            assert api is not None
            api_vals = api["freq_hist_data_bar_values"] + api["logits_hist_data_bar_values"]
            assert all(api_vals[k] is None for k in bad)
    assert nan_seen


def test_activation_batches_follow_the_feature_count(export: tuple[Path, list[Path]], state: EmulatorState) -> None:
    root, _ = export
    folder = root / "v1" / M / S0 / "activations"
    count = state.feature_count(M, S0)
    ranges = activation_ranges(state, f"{M}/{S0}", ExportQuirks(batch_size=BS))
    assert ranges[-1][1] == count - 1 < max(state.feature_indices(M, S0))
    assert [n for n, _ in batches(folder)] == list(range(len(ranges)))
    per_feature: dict[int, list[dict[str, Any]]] = {}
    for n, path in batches(folder):
        recs = read_gz(path)
        lo, hi = ranges[n]
        assert [r["id"] for r in recs] == sorted(r["id"] for r in recs)  # no ORDER BY: storage order
        for r in recs:
            i = int(r["index"])
            assert lo <= i <= hi and n * BS <= i
            assert not state.is_hole(M, S0, i)
            assert tuple(r) == wire.EXPORT_ACTIVATION_FIELDS
            assert r["creatorId"] == DEFAULT_CREATOR_ID
            per_feature.setdefault(i, []).append(r)
    beyond = [i for i in state.feature_indices(M, S0) if i > count - 1]
    assert beyond and not set(beyond) & set(per_feature)  # the highest indices get no batch at all
    for i in state.feature_indices(M, S0):
        if i in beyond:
            continue
        api = state.feature(M, S0, i)
        assert api is not None
        got = {r["id"]: r for r in per_feature.get(i, [])}
        assert sorted(got) == sorted(a["id"] for a in api["activations"])
        for act in api["activations"]:
            for k in ACTIVATION_FIELDS:
                if k != "creatorId":
                    assert got[act["id"]][k] == act[k], (i, k)


def test_explanations_are_row_batches_in_text_order(export: tuple[Path, list[Path]], state: EmulatorState) -> None:
    root, _ = export
    folder = root / "v1" / M / S0 / "explanations"
    files = batches(folder)
    sizes = [len(read_gz(p)) for _, p in files]
    want = [e for i in sorted(state.feature_indices(M, S0), key=str) for e in state.explanations(M, S0, i)]
    assert len(files) == -(-len(want) // BS)
    assert all(s == BS for s in sizes[:-1]) and sizes[-1] <= BS  # 100 *rows* a file
    records = all_records(folder)
    assert [r["id"] for r in records] == [e["id"] for e in want]
    truth = exported_explanation_ids(state, f"{M}/{S0}", ExportQuirks(batch_size=BS))
    assert [[r["id"] for r in read_gz(p)] for _, p in files] == truth
    for r, e in zip(records, want):
        assert tuple(r) == wire.EXPORT_EXPLANATION_FIELDS
        assert r["authorId"] == DEFAULT_CREATOR_ID
        for k in EXPLANATION_FIELDS:
            if k not in ("embedding", "authorId"):
                assert r[k] == e[k], k
        # pgvector's text form, as psycopg2 returns it without an adapter
        assert isinstance(r["embedding"], str) and r["embedding"].startswith("[")
        assert " " not in r["embedding"] and len(orjson.loads(r["embedding"])) == 256
        api = state.feature(M, S0, int(r["index"]))
        assert api is not None
        match = [x for x in api["explanations"] if x["id"] == r["id"]]
        assert len(match) == 1
        for k in ("description", "explanationModelName", "typeName"):
            assert match[0][k] == r[k]
    # one feature's explanations straddle two files
    per_file = [{r["index"] for r in read_gz(p)} for _, p in files]
    assert any(a & b for a, b in zip(per_file, per_file[1:]))
    assert {int(r["index"]) for r in records} == {i for i in state.feature_indices(M, S0)
                                                  if state.explanations(M, S0, i)}


def test_per_page_tie_order_repeats_one_row_and_drops_another(tmp_path: Path, state: EmulatorState) -> None:
    q = ExportQuirks(batch_size=BS, explanation_ties="per_page", non_source_folders=False)
    write_export(state, tmp_path, sources=[f"{M}/{S0}"], quirks=q, compresslevel=1)
    files = batches(tmp_path / "v1" / M / S0 / "explanations")
    got = [[r["id"] for r in read_gz(p)] for _, p in files]
    assert got == exported_explanation_ids(state, f"{M}/{S0}", q)
    flat = [i for page in got for i in page]
    want = {e["id"] for i in state.feature_indices(M, S0) for e in state.explanations(M, S0, i)}
    assert len(flat) == len(want)  # same row count: what repeats is missing elsewhere
    repeated = {i for i, n in Counter(flat).items() if n > 1}
    assert repeated and len(want - set(flat)) == len(repeated)
    assert all(len(page) == len(set(page)) for page in got)  # never twice in one file


def test_decoy_folders_are_not_sources(export: tuple[Path, list[Path]]) -> None:
    root, _ = export
    for decoy in ("headvis", "jlens"):
        assert not (root / "v1" / M / decoy / "source.jsonl").exists()
    assert read_gz(root / "v1" / M / "jlens" / "features" / "batch-0.jsonl.gz")[0]["layer"] == "jlens"


def test_quirks(tmp_path: Path) -> None:
    st = EmulatorState(SMALL)
    root = tmp_path / "q1"
    files = write_export(st, root, quirks=ExportQuirks(
        batch_size=16, index_as_int_fraction=0.5, embedding_style="string",
        explanations_folder="explanations-gpt-4o-mini", extra_fields=True, non_source_folders=False,
        activation_optional="mixed", inference_host_files=False,
    ))
    base = root / "v1" / M / S0
    assert not (base / "explanations").exists() and (base / "explanations-gpt-4o-mini").is_dir()
    assert not any("headvis" in p.parts or "jlens" in p.parts for p in files)
    assert not (base / "inference_hosts.jsonl").exists()
    for folder in ("features", "activations", "explanations-gpt-4o-mini"):
        recs = all_records(base / folder)
        kinds = {type(r["index"]) for r in recs}
        assert kinds == {int, str}, folder
        assert all("_exportVersion" in r for r in recs)
    for r in all_records(base / "features"):
        assert set(r) == set(wire.EXPORT_FEATURE_FIELDS) | EXTRA_FEATURE
    seen_optional = set()
    for _, path in batches(base / "activations"):
        recs = read_gz(path)
        has_opt = {all(k in r for k in ACTIVATION_OPTIONAL_FIELDS) for r in recs}
        assert len(has_opt) <= 1  # decided per batch file
        seen_optional |= has_opt
    assert seen_optional == {True, False}
    expl = all_records(base / "explanations-gpt-4o-mini")
    assert expl and all(isinstance(r["embedding"], str) for r in expl)
    assert {"scoreV2", "createdAt"} <= set(expl[0])

    root2 = tmp_path / "q2"
    write_export(st, root2, quirks=ExportQuirks(batch_size=16, embedding_style="absent",
                                               activation_optional="all"))
    assert all("embedding" not in r for r in all_records(root2 / "v1" / M / S0 / "explanations"))
    assert all(set(ACTIVATION_OPTIONAL_FIELDS) <= set(r) for r in all_records(root2 / "v1" / M / S0 / "activations"))
    list_style = tmp_path / "q3"
    write_export(st, list_style, quirks=ExportQuirks(batch_size=16, embedding_style="list"))
    lists = all_records(list_style / "v1" / M / S0 / "explanations")
    strings = all_records(root / "v1" / M / S0 / "explanations-gpt-4o-mini")
    assert [orjson.loads(s["embedding"]) for s in strings] == [r["embedding"] for r in lists]
    mixed = tmp_path / "q4"
    write_export(st, mixed, quirks=ExportQuirks(batch_size=4, embedding_style="mixed"))
    styles = {type(r.get("embedding")).__name__ for r in all_records(mixed / "v1" / M / S0 / "explanations")}
    assert styles == {"list", "str", "NoneType"}

    with pytest.raises(ValueError):
        ExportQuirks(explanations_folder="../x")
    with pytest.raises(ValueError):
        ExportQuirks(batch_size=0)
    with pytest.raises(ValueError):
        ExportQuirks(index_as_int_fraction=2.0)
    with pytest.raises(ValueError):
        ExportQuirks(explanation_ties="random")  # type: ignore[arg-type]


def test_deterministic_bytes_and_source_selection(tmp_path: Path) -> None:
    a = write_export(EmulatorState(SMALL), tmp_path / "a", quirks=ExportQuirks(batch_size=16))
    b = write_export(EmulatorState(SMALL), tmp_path / "b", quirks=ExportQuirks(batch_size=16))
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes(), pa
        if pa.suffix == ".gz":
            assert pa.read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime 0
    fast = write_export(EmulatorState(SMALL), tmp_path / "fast", quirks=ExportQuirks(batch_size=16), compresslevel=1)
    for pa, pf in zip(a, fast):
        if pa.suffix == ".gz":
            assert gzip.decompress(pa.read_bytes()) == gzip.decompress(pf.read_bytes())
    st = EmulatorState(CONFIG)
    only = write_export(st, tmp_path / "c", sources=[f"{M}/{S1}", (M, "6-res-vectors")],
                        quirks=ExportQuirks(batch_size=BS, non_source_folders=False))
    assert {p.relative_to(tmp_path / "c").parts[2] for p in only} == {S1}
    with pytest.raises(KeyError):
        write_export(st, tmp_path / "d", sources=[(M, "99-nope")])


# --------------------------------------------------------------------------- S3 fixtures


@pytest.fixture(scope="module")
def s3(export: tuple[Path, list[Path]]) -> Iterator[S3Server]:
    root, _ = export
    with S3Server(root) as srv:
        yield srv


@pytest.fixture
def srv(s3: S3Server) -> Iterator[S3Server]:
    s3.faults = S3Faults()
    s3.reset()
    yield s3
    s3.faults = S3Faults()


@pytest.fixture(scope="module")
def many_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("many")
    keys = []
    for m in ("Zeta", "alpha", "beta", "é-model", "😀-model"):
        for i in range(470):
            keys.append(f"v1/{m}/batch-{i}.jsonl.gz")
    for k in keys:
        p = root / k
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
    (root / "other" / "x.txt").parent.mkdir()
    (root / "other" / "x.txt").write_bytes(b"x")
    return root, keys


# --------------------------------------------------------------------------- S3 tests


def test_list_pagination_past_1000_keys(many_files: tuple[Path, list[str]]) -> None:
    root, keys = many_files
    with S3Server(root, bucket="bkt") as srv, httpx.Client() as c:
        assert srv.bucket_url == srv.url + "/bkt"
        got, pages = list_all(c, srv.bucket_url, prefix="v1/")
        assert len(keys) == 2350 and pages == 3
        assert got == sorted(keys, key=lambda k: k.encode())
        assert got[0].startswith("v1/Zeta/") and got[-1].startswith("v1/😀-model/")
        # first page details
        r = c.get(srv.bucket_url, params={"list-type": "2", "prefix": "v1/", "max-keys": "5000"})
        page = parse_list(r.content)
        assert r.headers["content-type"] == "application/xml"
        assert page["name"] == "bkt" and page["prefix"] == "v1/"
        assert page["max_keys"] == "1000" and page["key_count"] == "1000" and page["truncated"] == "true"
        assert page["token"] and "v1/" not in page["token"]
        first = page["contents"][0]
        assert list(first) == ["Key", "LastModified", "ETag", "Size", "StorageClass"]
        assert first["ETag"] == '"d41d8cd98f00b204e9800998ecf8427e"' and first["Size"] == "0"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z", first["LastModified"])
        assert b"<ETag>&quot;d41d8cd98f00b204e9800998ecf8427e&quot;</ETag>" in r.content
        r2 = c.get(srv.bucket_url, params={"list-type": "2", "prefix": "v1/", "continuation-token": page["token"]})
        page2 = parse_list(r2.content)
        assert page2["cont"] == page["token"] and page2["contents"][0]["Key"] == got[1000]
        # small pages, start-after, whole bucket
        small, n = list_all(c, srv.bucket_url, prefix="v1/beta/", **{"max-keys": "100"})
        assert n == 5 and small == [k for k in got if k.startswith("v1/beta/")]
        after, _ = list_all(c, srv.bucket_url, **{"start-after": got[2000]})
        assert after == got[2001:]
        everything, _ = list_all(c, srv.bucket_url)
        assert everything == ["other/x.txt", *got]
        # delimiter: common prefixes, paged one at a time
        r = c.get(srv.bucket_url, params={"list-type": "2", "prefix": "v1/", "delimiter": "/"})
        page = parse_list(r.content)
        assert page["prefixes"] == ["v1/Zeta/", "v1/alpha/", "v1/beta/", "v1/é-model/", "v1/😀-model/"]
        assert page["contents"] == [] and page["key_count"] == "5"
        seen: list[str] = []
        token = None
        for _ in range(10):
            q = {"list-type": "2", "prefix": "v1/", "delimiter": "/", "max-keys": "2"}
            if token:
                q["continuation-token"] = token
            p = parse_list(c.get(srv.bucket_url, params=q).content)
            seen.extend(p["prefixes"])
            token = p["token"]
            if p["truncated"] == "false":
                break
        assert seen == page["prefixes"]
        # url encoding of keys
        r = c.get(srv.bucket_url, params={"list-type": "2", "prefix": "v1/é", "encoding-type": "url", "max-keys": "1"})
        enc = parse_list(r.content)["contents"][0]["Key"]
        assert "%" in enc and unquote_plus(enc) == "v1/é-model/batch-0.jsonl.gz"
        # bad token / bad max-keys / wrong list type
        for params in ({"continuation-token": "not-a-token"}, {"max-keys": "-1"}, {"max-keys": "abc"}):
            r = c.get(srv.bucket_url, params={"list-type": "2", **params})
            assert r.status_code == 400 and error_code(r.content) == "InvalidArgument"
        # V1 listing
        r = c.get(srv.bucket_url, params={"prefix": "v1/alpha/", "max-keys": "3", "marker": "v1/alpha/batch-1.jsonl.gz"})
        assert r.status_code == 200 and b"<Marker>v1/alpha/batch-1.jsonl.gz</Marker>" in r.content
        assert [x["Key"] for x in parse_list(r.content)["contents"]] == [
            "v1/alpha/batch-10.jsonl.gz", "v1/alpha/batch-100.jsonl.gz", "v1/alpha/batch-101.jsonl.gz"]


def test_get_head_and_etag(srv: S3Server, export: tuple[Path, list[Path]]) -> None:
    root, _ = export
    key = f"v1/{M}/{S0}/features/batch-0.jsonl.gz"
    data = (root / key).read_bytes()
    with httpx.Client() as c:
        r = c.get(key_url(srv.bucket_url, key))
        assert r.status_code == 200 and r.content == data
        assert r.headers["etag"] == f'"{hashlib.md5(data).hexdigest()}"'
        assert r.headers["content-length"] == str(len(data))
        assert r.headers["accept-ranges"] == "bytes"
        assert "content-encoding" not in r.headers
        lm = parsedate_to_datetime(r.headers["last-modified"])
        assert abs(lm.timestamp() - (root / key).stat().st_mtime) < 1.01
        h = c.head(key_url(srv.bucket_url, key))
        assert h.status_code == 200 and h.content == b""
        for k in ("etag", "content-length", "last-modified", "accept-ranges"):
            assert h.headers[k] == r.headers[k]
        # the listing shows the same ETag and size
        page = parse_list(c.get(srv.bucket_url, params={"list-type": "2", "prefix": key}).content)
        assert page["contents"] == [{"Key": key, "LastModified": page["contents"][0]["LastModified"],
                                     "ETag": r.headers["etag"], "Size": str(len(data)), "StorageClass": "STANDARD"}]
        assert page["contents"][0]["LastModified"].startswith(lm.strftime("%Y-%m-%dT%H:%M:%S"))
    assert [(q.method, q.key, q.status) for q in srv.requests[:2]] == [("GET", key, 200), ("HEAD", key, 200)]


def test_range_and_conditional_requests(srv: S3Server, export: tuple[Path, list[Path]]) -> None:
    root, _ = export
    key = f"v1/{M}/{S0}/activations/batch-1.jsonl.gz"
    data = (root / key).read_bytes()
    size = len(data)
    url = key_url(srv.bucket_url, key)
    with httpx.Client() as c:
        etag = c.head(url).headers["etag"]
        lm = c.head(url).headers["last-modified"]
        cases = {
            "bytes=10-19": (10, 19), "bytes=100-": (100, size - 1), "bytes=-10": (size - 10, size - 1),
            f"bytes=5-{size + 1000}": (5, size - 1), "bytes=0-0": (0, 0),
        }
        for header, (a, b) in cases.items():
            r = c.get(url, headers={"range": header})
            assert r.status_code == 206, header
            assert r.content == data[a : b + 1]
            assert r.headers["content-range"] == f"bytes {a}-{b}/{size}"
            assert r.headers["content-length"] == str(b - a + 1) and r.headers["etag"] == etag
        r = c.get(url, headers={"range": f"bytes={size}-"})
        assert r.status_code == 416 and error_code(r.content) == "InvalidRange"
        for ignored in ("bytes=0-1,5-6", "bytes=9-3", "items=0-5", "bytes=x-"):
            r = c.get(url, headers={"range": ignored})
            assert r.status_code == 200 and r.content == data, ignored
        # If-Range: a matching ETag keeps the range, another gives the whole object
        r = c.get(url, headers={"range": "bytes=10-19", "if-range": etag})
        assert r.status_code == 206 and r.content == data[10:20]
        r = c.get(url, headers={"range": "bytes=10-19", "if-range": '"0123456789abcdef0123456789abcdef"'})
        assert r.status_code == 200 and r.content == data and "content-range" not in r.headers
        r = c.get(url, headers={"range": "bytes=10-19", "if-range": lm})
        assert r.status_code == 206
        r = c.get(url, headers={"range": "bytes=10-19", "if-range": "Mon, 01 Jan 2001 00:00:00 GMT"})
        assert r.status_code == 200 and r.content == data
        # If-Match / If-None-Match
        assert c.get(url, headers={"if-none-match": etag}).status_code == 304
        r = c.get(url, headers={"if-match": '"nope"'})
        assert r.status_code == 412 and error_code(r.content) == "PreconditionFailed"
        assert c.get(url, headers={"if-match": etag}).status_code == 200


def test_multipart_etag(tmp_path: Path) -> None:
    blob = bytes(range(256)) * 10 + b"tail"  # 2,564 bytes
    (tmp_path / "big.bin").write_bytes(blob)
    (tmp_path / "small.bin").write_bytes(blob[:999])
    parts = [blob[i : i + 400] for i in range(0, len(blob), 400)]
    want = '"%s-%d"' % (hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest(), len(parts))
    assert len(parts) == 7
    assert s3_etag(blob, multipart_threshold=1000, part_size=400) == want
    assert s3_etag(tmp_path / "big.bin", multipart_threshold=1000, part_size=400) == want
    nine_mib = b"\x01" * (9 * 1024 * 1024)
    assert re.fullmatch(r'"[0-9a-f]{32}-2"', s3_etag(nine_mib))
    assert s3_etag(b"abc") == f'"{hashlib.md5(b"abc").hexdigest()}"'
    with S3Server(tmp_path, multipart_threshold=1000, part_size=400) as srv, httpx.Client() as c:
        assert c.head(srv.bucket_url + "/big.bin").headers["etag"] == want
        assert c.get(srv.bucket_url + "/small.bin").headers["etag"] == f'"{hashlib.md5(blob[:999]).hexdigest()}"'
        page = parse_list(c.get(srv.bucket_url, params={"list-type": "2"}).content)
        assert [x["ETag"] for x in page["contents"]] == [want, f'"{hashlib.md5(blob[:999]).hexdigest()}"']


def test_errors_are_s3_xml(srv: S3Server) -> None:
    with httpx.Client() as c:
        r = c.get(srv.bucket_url + "/v1/no/such/key.jsonl.gz")
        assert r.status_code == 404 and r.headers["content-type"] == "application/xml"
        root = ET.fromstring(r.content)
        assert root.findtext("Code") == "NoSuchKey" and root.findtext("Key") == "v1/no/such/key.jsonl.gz"
        assert root.findtext("Message") == "The specified key does not exist." and root.findtext("RequestId")
        assert r.content.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
        h = c.head(srv.bucket_url + "/v1/no/such/key.jsonl.gz")
        assert h.status_code == 404 and h.content == b""
        r = c.get(srv.url + "/other-bucket?list-type=2")
        assert r.status_code == 404 and error_code(r.content) == "NoSuchBucket"
        for method in ("PUT", "DELETE", "POST"):
            r = c.request(method, srv.bucket_url + f"/v1/{M}/{S0}/model.jsonl", content=b"x")
            assert r.status_code == 403 and error_code(r.content) == "AccessDenied"
        assert c.get(srv.url + "/").status_code == 403


def test_path_escapes_are_rejected(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    (root / "v1" / "m").mkdir(parents=True)
    (root / "v1" / "m" / "ok.txt").write_bytes(b"ok")
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"TOP SECRET")
    (root / "v1" / "m" / "escape.txt").symlink_to(secret)
    (root / "v1" / "m" / "inside.txt").symlink_to(root / "v1" / "m" / "ok.txt")
    (root / "v1" / "outdir").symlink_to(tmp_path, target_is_directory=True)
    for bad in ("", "/abs", "v1/../secret.txt", "../secret.txt", "v1/./m/ok.txt", "v1//m/ok.txt",
                "v1\\m\\ok.txt", "v1/m/ok.txt\x00", "v1/m/escape.txt", "v1/outdir/secret.txt", "v1/m"):
        assert safe_key_path(root, bad) is None, bad
    assert safe_key_path(root, "v1/m/ok.txt") == (root / "v1" / "m" / "ok.txt").resolve()
    attempts = [
        "/" + "%2E%2E/secret.txt",
        "/v1/%2e%2e/%2e%2e/secret.txt",
        "/v1/m/%2E%2E%2F%2E%2E%2F%2E%2E%2Fsecret.txt",
        "/" + quote(str(secret), safe=""),
        "/" + str(secret),
        "/v1/m/escape.txt",
        "/v1/outdir/secret.txt",
        "/v1%5Cm%5C..%5C..%5C..%5Csecret.txt",
        "/v1/m/ok.txt%00",
    ]
    with S3Server(root, bucket="b") as srv, httpx.Client() as c:
        for a in attempts:
            r = c.get(srv.bucket_url + a)
            assert r.status_code == 404, a
            assert b"TOP SECRET" not in r.content
        assert c.get(srv.bucket_url + "/v1/m/ok.txt").content == b"ok"
        assert c.get(srv.bucket_url + "/v1/m/inside.txt").content == b"ok"
        keys, _ = list_all(c, srv.bucket_url)
        assert keys == ["v1/m/inside.txt", "v1/m/ok.txt"]
        # raw ASGI paths with literal dot segments (a client that does not normalise)
        for raw in ("/b/../secret.txt", "/b/v1/../../secret.txt", "/b/v1/m/../../../secret.txt"):
            with httpx.Client() as raw_client:
                req = raw_client.build_request("GET", srv.url)
                req.url = req.url.copy_with(raw_path=raw.encode())
                r = raw_client.send(req)
                assert r.status_code == 404 and b"TOP SECRET" not in r.content


def test_fault_missing_and_flaky(srv: S3Server) -> None:
    missing = f"v1/{M}/{S0}/explanations/batch-1.jsonl.gz"
    flaky = f"v1/{M}/{S0}/explanations/batch-2.jsonl.gz"
    srv.faults = S3Faults(missing=frozenset({missing}), flaky={flaky: 2})
    with httpx.Client() as c:
        keys, _ = list_all(c, srv.bucket_url, prefix=f"v1/{M}/{S0}/explanations/")
        assert missing in keys and flaky in keys
        r = c.get(key_url(srv.bucket_url, missing))
        assert r.status_code == 404 and error_code(r.content) == "NoSuchKey"
        assert c.head(key_url(srv.bucket_url, missing)).status_code == 404
        assert [c.get(key_url(srv.bucket_url, flaky)).status_code for _ in range(4)] == [404, 404, 200, 200]
    assert [q.fault for q in srv.requests if q.key == flaky] == ["flaky", "flaky", None, None]


def test_fault_truncated(srv: S3Server, export: tuple[Path, list[Path]]) -> None:
    root, _ = export
    half = f"v1/{M}/{S0}/features/batch-0.jsonl.gz"
    exact = f"v1/{M}/{S0}/features/batch-1.jsonl.gz"
    srv.faults = S3Faults(truncated={half: -1, exact: 1234})
    size = (root / half).stat().st_size
    with httpx.Client() as c:
        with pytest.raises(httpx.RemoteProtocolError):
            c.get(key_url(srv.bucket_url, half))
        got = bytearray()
        with pytest.raises(httpx.RemoteProtocolError):
            with c.stream("GET", key_url(srv.bucket_url, exact)) as r:
                assert r.headers["content-length"] == str((root / exact).stat().st_size)
                for chunk in r.iter_raw():
                    got += chunk
        assert bytes(got) == (root / exact).read_bytes()[:1234]
        # a ranged read of a truncated key is cut too; HEAD is unaffected
        with pytest.raises(httpx.RemoteProtocolError):
            c.get(key_url(srv.bucket_url, half), headers={"range": "bytes=0-999"})
        assert c.head(key_url(srv.bucket_url, half)).headers["content-length"] == str(size)
    # the set-of-keys form means "half"
    assert S3Faults(truncated={half}).truncated == {half: -1}
    srv.faults = S3Faults()
    assert httpx.get(key_url(srv.bucket_url, half)).content == (root / half).read_bytes()


async def test_fault_truncated_in_process(export: tuple[Path, list[Path]]) -> None:
    root, _ = export
    key = f"v1/{M}/{S0}/model.jsonl"
    data = (root / key).read_bytes()
    app = create_s3_app(root, faults=S3Faults(truncated={key: 10}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s3") as c:
        r = await c.get("/neuronpedia-datasets/" + key)
        assert r.headers["content-length"] == str(len(data)) and r.content == data[:10]


def test_fault_corrupt(srv: S3Server, export: tuple[Path, list[Path]]) -> None:
    root, _ = export
    key = f"v1/{M}/{S0}/activations/batch-0.jsonl.gz"
    data = (root / key).read_bytes()
    srv.faults = S3Faults(corrupt=frozenset({key}))
    with httpx.Client() as c:
        r = c.get(key_url(srv.bucket_url, key))
        assert r.status_code == 200 and len(r.content) == len(data) and r.content != data
        assert r.headers["etag"] == f'"{hashlib.md5(data).hexdigest()}"' != f'"{hashlib.md5(r.content).hexdigest()}"'
        with pytest.raises(Exception):
            gzip.decompress(r.content)
        mid = len(data) // 2
        part = c.get(key_url(srv.bucket_url, key), headers={"range": f"bytes={mid - 5}-{mid + 5}"}).content
        assert part == r.content[mid - 5 : mid + 6] != data[mid - 5 : mid + 6]


def test_fault_hostile_listing(srv: S3Server, export: tuple[Path, list[Path]]) -> None:
    srv.faults = S3Faults(hostile_listing=True)
    hostile = hostile_keys_for(f"v1/{M}/{S0}/")
    with httpx.Client() as c:
        keys, _ = list_all(c, srv.bucket_url)
        assert "v1/../../etc/passwd" in keys
        assert f"v1/{M}/{S0}/features/../../../x.jsonl.gz" in keys
        assert "/tmp/npclient-s3-hostile/absolute.jsonl.gz" in keys
        assert any("東京" in k for k in keys) and any("\n" in k for k in keys)
        assert any(k.endswith("/features/") for k in keys)
        assert set(hostile) <= set(keys)
        assert keys == sorted(keys, key=lambda k: k.encode())
        under_v1, _ = list_all(c, srv.bucket_url, prefix="v1/")
        assert "v1/../../etc/passwd" in under_v1 and f"v1/{M}//tmp/npclient-s3-hostile/double-slash.jsonl.gz" in under_v1
        # served from memory, never from the file system
        for k in hostile:  # every listed key is fetchable, from memory
            r = c.get(key_url(srv.bucket_url, k))
            assert r.status_code == 200 and b"hostile" in r.content and b"root:" not in r.content, k
        # off again: gone from the listing and 404
        srv.faults = S3Faults()
        keys2, _ = list_all(c, srv.bucket_url)
        assert not set(hostile) & set(keys2)
        assert c.get(key_url(srv.bucket_url, "v1/../../etc/passwd")).status_code == 404
    custom = S3Faults(hostile_listing=True, hostile_keys=("v1/x/../../y",))
    srv.faults = custom
    with httpx.Client() as c:
        keys3, _ = list_all(c, srv.bucket_url, prefix="v1/x/")
        assert keys3 == ["v1/x/../../y"]


def test_server_lifecycle(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"a")
    ports = set()
    for _ in range(3):
        with S3Server(tmp_path) as s:
            assert s.running and s.url.startswith("http://127.0.0.1:")
            ports.add(s.port)
            assert httpx.get(s.bucket_url + "/a.txt").content == b"a"
        assert not s.running
    assert all(p > 0 for p in ports)
    with pytest.raises(ValueError):
        S3Server(tmp_path, host="0.0.0.0")
    with pytest.raises(ValueError):
        create_s3_app(tmp_path, bucket="a/b")
    assert os.path.isdir(tmp_path)
