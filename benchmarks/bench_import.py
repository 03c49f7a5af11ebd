"""Import speed of a whole bulk-export source, against a Python loop and against gunzip.

Generates a 24,576-feature export (~20 activations per feature) in the real layout with the
emulator, then prints and records, from one run:
- the import time of `import_source_dir` (DuckDB `read_json`, one transaction per batch);
- its ratio to a Python `json.loads` + `executemany` loop over the same files (the loop is
  slow, so by default it runs over the first feature batch and the first activations batch,
  and both sides are timed on exactly those files);
- throughput as a fraction of `gzip -dc > /dev/null` over all the files (goal >= 0.4);
- peak memory of the import, measured in a fresh process (goal < 2 GB).

    .venv/bin/python benchmarks/bench_import.py [--features 24576] [--dir DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from npclient.ids import SourceId
from npclient.testing import EmulatorConfig, EmulatorState, SourceSpec
from npclient.testing.emulator.exports import ExportQuirks, write_export

SRC = SourceId("gpt2-small", "0-res-jb")

CHILD = """
import resource, sys, time
from pathlib import Path
from npclient.exports.importer import import_source_dir
from npclient.ids import SourceId
from npclient.store.database import Database
db = Database(Path(sys.argv[2]), linger_s=60)
with db.connect():
    pass
t = time.perf_counter()
report = import_source_dir(db, Path(sys.argv[1]), SourceId.parse(sys.argv[3]))
took = time.perf_counter() - t
db.close()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(took, peak, sum(report.rows.values()), len(report.failed))
"""


def python_loop(files: list[Path], db_path: Path) -> float:
    """The baseline: parse each line with json.loads and insert rows with executemany."""
    con = duckdb.connect(str(db_path))
    con.execute("CREATE TABLE features (model_id VARCHAR, source VARCHAR, idx INTEGER, max_act DOUBLE, topk INTEGER[], raw VARCHAR)")
    con.execute('CREATE TABLE activations (model_id VARCHAR, source VARCHAR, idx INTEGER, tokens VARCHAR[], "values" DOUBLE[], max_value DOUBLE)')
    t = time.perf_counter()
    for path in files:
        rows = []
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                r = json.loads(line)
                if "/features/" in str(path):
                    rows.append((r["modelId"], r["layer"], int(r["index"]), r.get("maxActApprox"), r.get("topkCosSimIndices"), line))
                else:
                    rows.append((r["modelId"], r["layer"], int(r["index"]), r.get("tokens"), r.get("values"), r.get("maxValue")))
        table = "features" if "/features/" in str(path) else "activations"
        con.execute("BEGIN")
        con.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
        con.execute("COMMIT")
    took = time.perf_counter() - t
    con.close()
    return took


def ours_on(files: list[Path], folder: Path, db_path: Path) -> float:
    """Import only `files` (a copy of the source folder holding just them) with the product code."""
    import shutil

    from npclient.exports.importer import import_source_dir
    from npclient.store.database import Database

    sub = db_path.parent / "subset" / SRC.source
    for f in files:
        dest = sub / f.relative_to(folder)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
    db = Database(db_path, linger_s=60)
    with db.connect():  # create the schema before timing: the loop's CREATE TABLEs are not timed either
        pass
    t = time.perf_counter()
    import_source_dir(db, sub, SRC)
    took = time.perf_counter() - t
    db.close()
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=24576)
    ap.add_argument("--dir", type=Path, default=None, help="reuse or keep the generated export here")
    args = ap.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="np-bench-import-"))
    folder = root / "v1" / SRC.model_id / SRC.source
    if not (folder / "features").is_dir():
        t = time.perf_counter()
        state = EmulatorState(EmulatorConfig(sources=(SourceSpec(SRC.model_id, SRC.source, d_sae=args.features),), cache_size=64))
        write_export(state, root, quirks=ExportQuirks(non_source_folders=False))
        print(f"generated the export in {time.perf_counter() - t:.1f} s")
    files = sorted(folder.rglob("batch-*.jsonl.gz"))
    gz_bytes = sum(f.stat().st_size for f in files)
    t = time.perf_counter()
    raw_bytes = 0
    for f in files:
        out = subprocess.run(["bash", "-c", f"gzip -dc '{f}' | wc -c"], capture_output=True, text=True, check=True)
        raw_bytes += int(out.stdout)
    t = time.perf_counter()
    subprocess.run(["bash", "-c", "gzip -dc " + " ".join(f"'{f}'" for f in files) + " > /dev/null"], check=True)
    gunzip_s = time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "import.duckdb"
        out = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(db_path), str(SRC)], capture_output=True, text=True, check=True)
        took, peak_mb, rows, failed = out.stdout.split()
        took, peak_mb = float(took), float(peak_mb)

        subset = [next(f for f in files if "/features/" in str(f)), next(f for f in files if "/activations/" in str(f))]
        base_s = python_loop(subset, Path(tmp) / "loop.duckdb")
        ours_s = ours_on(subset, folder, Path(tmp) / "subset.duckdb")

    print(f"machine: {os.cpu_count()} cores; duckdb {duckdb.__version__}")
    print(f"export: {len(files)} batch files, {gz_bytes / 1e6:.0f} MB gzip, {raw_bytes / 1e6:.0f} MB JSON; {rows} rows imported, {failed} failed")
    print()
    print(f"{'measure':58s} {'value':>12s}")
    print(f"{'import time, whole source':58s} {took:10.1f} s")
    print(f"{'gzip -dc > /dev/null, same files':58s} {gunzip_s:10.1f} s")
    print(f"{'throughput as a fraction of gunzip (goal >= 0.4)':58s} {gunzip_s / took:10.2f}")
    print(f"{'JSON imported per second':58s} {raw_bytes / took / 1e6:8.0f} MB/s")
    print(f"{'peak memory of the import process (goal < 2 GB)':58s} {peak_mb:8.0f} MB")
    print(f"{'subset: python json.loads + executemany loop':58s} {base_s:10.2f} s")
    print(f"{'subset: ours on the same 2 files':58s} {ours_s:10.2f} s")
    print(f"{'ratio loop / ours (goal >= 10x)':58s} {base_s / ours_s:10.1f} x")


if __name__ == "__main__":
    main()
