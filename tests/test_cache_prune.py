"""`np-mirror cache prune`: only downloads the mirror recorded as imported go, nothing else.

An exports-first sync from the emulator's S3 stand-in fills `$NP_MIRROR_HOME/exports/`, as
tests/test_sync_exports.py sets it up; the commands run in-process, as tests/test_cli.py does.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from helpers import LIGHT, run_cli
from npclient import SourceId
from npclient.mirror import Mirror
from npclient.testing import EmulatorConfig, SourceSpec
from npclient.testing.emulator.exports import ExportQuirks, write_export
from npclient.testing.emulator.s3 import S3Server

SRC = SourceId("gpt2-small", "0-res-jb")
D_SAE = 300
PREFIX = f"v1/{SRC.model_id}/{SRC.source}/"


def batch_files(cache: Path) -> dict[str, bytes]:
    """key -> bytes of every downloaded batch under the cache."""
    return {p.relative_to(cache).as_posix(): p.read_bytes() for p in sorted(cache.rglob("batch-*.jsonl.gz"))}


def listed(out: str, verb: str) -> set[str]:
    return set(re.findall(rf"^{verb}\s+[0-9.]+ [kMG]?B\s+(\S+)$", out, flags=re.M))


def query(db: Path, sql: str) -> list[dict]:
    with Mirror(db, linger_s=0) as mirror:  # let go of the file: the commands open it next
        return mirror.sql(sql).to_pylist()


def object_gets(s3: S3Server) -> list[str]:
    return [r.key for r in s3.requests if r.method == "GET" and "list-type" not in (r.query or "") and r.key]


@pytest.fixture
def world(np_emulator_factory, tmp_path, monkeypatch):
    """The emulator's API, its export in a bucket folder (served by the test), a home, a mirror path."""
    server = np_emulator_factory(EmulatorConfig(sources=(SourceSpec(SRC.model_id, SRC.source, d_sae=D_SAE),),
                                                hole_rate=0.0, **LIGHT))
    bucket = tmp_path / "bucket"
    write_export(server.state, bucket, quirks=ExportQuirks(batch_size=100, non_source_folders=False), compresslevel=1)
    home = tmp_path / "home"
    monkeypatch.setenv("NEURONPEDIA_BASE_URL", server.url)
    monkeypatch.setenv("NP_MIRROR_HOME", str(home))
    return server, bucket, home / "exports", tmp_path / "m.duckdb"


def sync(capsys, db: Path) -> int:
    code, _, err = run_cli(capsys, "sync", str(SRC), "--db", str(db), "--quiet")
    return code


def test_prune_deletes_exactly_the_imported_downloads_and_a_rerun_needs_none(world, capsys, monkeypatch):
    server, bucket, cache, db = world
    with S3Server(bucket) as s3:
        monkeypatch.setenv("NP_MIRROR_EXPORTS_URL", s3.bucket_url)
        assert sync(capsys, db) == 0
        downloaded = batch_files(cache)
        assert set(downloaded) == set(batch_files(bucket))  # the whole export came down
        imported = {r["key"] for r in query(db, "SELECT key FROM export_files WHERE status = 'imported'")}
        assert imported == set(downloaded)
        # Beside them: a download in progress and files no record names.
        part = cache / PREFIX / "features" / "batch-7.jsonl.gz.part"
        part.write_bytes(b"half a file")
        stray = cache / "notes.txt"
        stray.write_text("mine")
        metadata = sorted(p.name for p in (cache / PREFIX).glob("*.jsonl"))
        assert metadata  # source.jsonl and friends

        code, out, err = run_cli(capsys, "cache", "prune", "--dry-run", "--db", str(db))
        assert code == 0, err
        assert listed(out, "would delete") == imported
        total = sum(len(b) for b in downloaded.values())
        assert f"would delete {len(imported)} files, " in out and f"({total:,} bytes)" in out
        assert batch_files(cache) == downloaded  # a dry run deletes nothing

        code, out, err = run_cli(capsys, "cache", "prune", "--db", str(db))
        assert code == 0, err
        assert listed(out, "deleted") == imported and f"({total:,} bytes)" in out
        assert batch_files(cache) == {}
        assert list(cache.rglob("batch-*.jsonl.gz.etag")) == []  # their sidecars went with them
        assert part.read_bytes() == b"half a file" and stray.read_text() == "mine"
        assert sorted(p.name for p in (cache / PREFIX).glob("*.jsonl")) == metadata

        # The mirror still answers, and a rerun of the sync downloads nothing: it has the rows.
        code, out, err = run_cli(capsys, "show", f"{SRC}/5", "--db", str(db))
        assert code == 0 and "Top activations" in out, err
        before = len(object_gets(s3))
        requests = len(server.state.requests)
        assert sync(capsys, db) == 0
        assert object_gets(s3)[before:] == [] and len(server.state.requests) == requests
        assert batch_files(cache) == {}

        code, out, _ = run_cli(capsys, "cache", "prune", "--db", str(db))
        assert code == 0 and "deleted 0 files, 0 B" in out


def test_prune_keeps_a_failed_import_a_changed_file_and_unrelated_files(world, capsys, monkeypatch):
    server, bucket, cache, db = world
    broken = PREFIX + "activations/batch-1.jsonl.gz"
    (bucket / broken).write_bytes(gzip.compress(b'{"modelId": "gpt2-small", "layer":\n'))  # downloads fine, imports not
    with S3Server(bucket) as s3:
        monkeypatch.setenv("NP_MIRROR_EXPORTS_URL", s3.bucket_url)
        assert sync(capsys, db) == 1  # the broken batch is reported (its features came from the API)
    status = {r["key"]: r["status"] for r in query(db, "SELECT key, status FROM export_files")}
    assert status[broken] == "failed"
    downloaded = batch_files(cache)
    assert broken in downloaded
    # A file changed on disk after its import (another version now): not the bytes the mirror has.
    changed = PREFIX + "features/batch-0.jsonl.gz"
    (cache / changed).write_bytes(downloaded[changed] + b"\0")
    stray = cache / PREFIX / "activations" / "batch-99.jsonl.gz"  # looks like a batch; no record names it
    stray.write_bytes(b"not ours")

    code, out, err = run_cli(capsys, "cache", "prune", "--db", str(db))
    assert code == 0, err
    gone = {k for k, v in status.items() if v == "imported"} - {changed}
    assert listed(out, "deleted") == gone
    assert f"kept {broken}: recorded failed, not imported" in err
    assert f"kept {changed}: size" in err
    left = batch_files(cache)
    assert set(left) == {broken, changed, stray.relative_to(cache).as_posix()}
    assert left[broken] == downloaded[broken] and stray.read_bytes() == b"not ours"
    code, out, _ = run_cli(capsys, "show", f"{SRC}/150", "--db", str(db))
    assert code == 0 and "Top activations" in out
    # The source still has a failed batch, so the next sync goes to its export again: it never
    # downloads the pruned batches, whose rows the mirror holds (the failed one is still on disk).
    with S3Server(bucket) as s3:
        monkeypatch.setenv("NP_MIRROR_EXPORTS_URL", s3.bucket_url)
        assert sync(capsys, db) == 1  # the broken batch fails again, and says so
        assert s3.requests  # the export was listed
        batches = {k for k in object_gets(s3) if "/batch-" in k}
    assert not batches & gone


def test_prune_of_no_mirror_is_bad_input_and_deletes_nothing(world, capsys):
    _, _, cache, db = world
    kept = cache / PREFIX / "features" / "batch-0.jsonl.gz"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"downloaded by some other mirror")
    code, out, err = run_cli(capsys, "cache", "prune", "--db", str(db))
    assert code == 2 and "no mirror at" in err and len(err.strip().splitlines()) == 1
    assert kept.read_bytes() == b"downloaded by some other mirror"


def test_which_bytes_count_as_the_imported_version(tmp_path):
    """The file must be the version imported: its size, and its ETag from the download's sidecar,
    else from its own MD5 when the ETag is a plain MD5; symlinks and unsafe keys never go."""
    import hashlib

    from npclient.exports.prune import plan_prune, prune
    from npclient.store.downloads import DownloadRecord

    root = tmp_path / "exports"
    folder = root / PREFIX / "features"
    folder.mkdir(parents=True)

    def put(n: int, data: bytes, sidecar: str | None) -> tuple[str, str]:
        key = f"{PREFIX}features/batch-{n}.jsonl.gz"
        (root / key).write_bytes(data)
        if sidecar is not None:
            (root / (key + ".etag")).write_text(sidecar + "\n")
        return key, hashlib.md5(data).hexdigest()

    same, md5_0 = put(0, b"zero", '"etag-0-2"')  # multipart-style ETag, sidecar agrees
    other, _ = put(1, b"one", "etag-new-2")  # sidecar names another version than the import's
    by_md5, md5_2 = put(2, b"two", None)  # no sidecar: the MD5 decides
    bad_md5, _ = put(3, b"three", None)
    link = f"{PREFIX}features/batch-4.jsonl.gz"
    (root / link).symlink_to(root / same)
    records = [
        DownloadRecord(same, 4, "etag-0-2", "imported"),
        DownloadRecord(other, 3, "etag-old-2", "imported"),
        DownloadRecord(by_md5, 3, md5_2, "imported"),
        DownloadRecord(bad_md5, 5, "0" * 32, "imported"),
        DownloadRecord(link, 4, "etag-0-2", "imported"),
        DownloadRecord("v1/../../etc/passwd", 1, None, "imported"),
        DownloadRecord(f"{PREFIX}features/batch-9.jsonl.gz", 1, None, "imported"),  # not on disk
    ]
    plan = plan_prune(records, root)
    assert [i.key for i in plan.delete] == [same, by_md5] and plan.total_bytes == 7
    assert set(plan.kept) == {other, bad_md5, link, "v1/../../etc/passwd"}
    assert "ETag etag-new-2 differs" in plan.kept[other] and "MD5" in plan.kept[bad_md5]
    assert [i.key for i in prune(plan)] == [same, by_md5]
    assert sorted(p.name for p in folder.iterdir()) == ["batch-1.jsonl.gz", "batch-1.jsonl.gz.etag",
                                                       "batch-3.jsonl.gz", "batch-4.jsonl.gz"]
    assert (root / link).is_symlink()
