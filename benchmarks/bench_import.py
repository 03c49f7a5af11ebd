"""Import speed of a whole bulk-export source, against a Python loop and against gunzip.

Generates a 24,576-feature export (~20 activations per feature) in the real layout with the
emulator, then prints and records, from one run:
- the import time of `import_source_dir` (DuckDB `read_json`, one transaction per batch);
- its ratio to a Python `json.loads` + `executemany` loop over the same files that writes the
  same rows into the same mirror tables (the loop is slow, so it runs over the first feature
  batch and the first activations batch, and both sides are timed on exactly those files);
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
try:  # ab.py runs this against older revisions too, where the importer lived in exports/
    from npclient.store.importer import import_source_dir
except ImportError:
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
    """The baseline: json.loads each line, build the same rows ours writes, insert them with executemany.

    Both sides fill the same mirror tables with the same columns, so the ratio compares the
    method (a Python loop vs DuckDB's reader), not the amount of work.
    """
    from npclient.store.database import Database

    db = Database(db_path, linger_s=60)
    feature_cols = ["feature_key", "model_id", "source", "index", "origin", "max_act_approx", "frac_nonzero",
                    "hook_name", "has_vector", "umap_x", "umap_y", "umap_cluster", "umap_log_feature_sparsity",
                    "topk_cos_sim_indices", "topk_cos_sim_values", "pos_str", "pos_values", "neg_str", "neg_values",
                    "export_raw"]
    act_cols = ["feature_key", "model_id", "source", "index", "rank", "activation_id", "tokens", "values",
                "max_value", "max_value_token_index", "min_value", "data_source", "data_index", "creator_id",
                "created_at", "dfa_values", "dfa_max_value", "dfa_target_index", "loss_values", "logit_contributions",
                "bin_min", "bin_max", "bin_contains", "qualifying_token_index", "origin"]
    act_keys = ["id", "tokens", "values", "maxValue", "maxValueTokenIndex", "minValue", "dataSource", "dataIndex",
                "creatorId", "createdAt", "dfaValues", "dfaMaxValue", "dfaTargetIndex", "lossValues",
                "logitContributions", "binMin", "binMax", "binContains", "qualifyingTokenIndex"]
    with db.connect():
        pass  # schema created before timing, as for ours
    t = time.perf_counter()
    for path in files:
        rows = []
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            records = [json.loads(line) for line in fh]
        if "/features/" in str(path):
            table, cols = "features", feature_cols
            for r in records:
                i = int(r["index"])
                rows.append((f"{r['modelId']}/{r['layer']}/{i}", r["modelId"], r["layer"], i, "export", r.get("maxActApprox"),
                             r.get("frac_nonzero"), r.get("hookName"), r.get("hasVector"), r.get("umap_x"), r.get("umap_y"),
                             r.get("umap_cluster"), r.get("umap_log_feature_sparsity"), r.get("topkCosSimIndices"),
                             r.get("topkCosSimValues"), r.get("pos_str"), r.get("pos_values"), r.get("neg_str"),
                             r.get("neg_values"), json.dumps(r)))
        else:
            table, cols = "activations", act_cols
            by_feature: dict[int, list[dict]] = {}
            for r in records:
                by_feature.setdefault(int(r["index"]), []).append(r)
            for i, acts in by_feature.items():
                acts.sort(key=lambda a: (-(a.get("maxValue") if a.get("maxValue") is not None else float("-inf")), a.get("id") or ""))
                for rank, a in enumerate(acts):
                    values = [a.get(k) for k in act_keys]
                    values[act_keys.index("logitContributions")] = (
                        None if a.get("logitContributions") is None else json.dumps(a["logitContributions"]))
                    data_index = a.get("dataIndex")
                    values[act_keys.index("dataIndex")] = None if data_index is None else str(data_index)
                    rows.append((f"{a['modelId']}/{a['layer']}/{i}", a["modelId"], a["layer"], i, rank, *values, "export"))
        quoted = ", ".join('"' + c + '"' for c in cols)
        with db.transaction() as cur:
            cur.executemany(f"INSERT INTO {table} ({quoted}) VALUES ({', '.join('?' * len(cols))})", rows)
    took = time.perf_counter() - t
    db.close()
    return took


def ours_on(files: list[Path], folder: Path, db_path: Path) -> float:
    """Import only `files` (a copy of the source folder holding just them) with the product code."""
    import shutil

    try:
        from npclient.store.importer import import_source_dir
    except ImportError:
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
    ap.add_argument("--write-only", action="store_true", help="only write the export (into --dir) and stop")
    ap.add_argument("--skip-loop", action="store_true", help="skip the Python-loop baseline (benchmarks/ab.py)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="np-bench-import-"))
    folder = root / "v1" / SRC.model_id / SRC.source
    if not (folder / "features").is_dir():
        t = time.perf_counter()
        state = EmulatorState(EmulatorConfig(sources=(SourceSpec(SRC.model_id, SRC.source, d_sae=args.features),), cache_size=64))
        write_export(state, root, quirks=ExportQuirks(non_source_folders=False))
        print(f"generated the export in {time.perf_counter() - t:.1f} s")
    if args.write_only:
        return
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
        base_s = ours_s = float("nan")
        if not args.skip_loop:
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
    if args.json:
        args.json.write_text(json.dumps({
            "files": len(files), "gzip_bytes": gz_bytes, "json_bytes": raw_bytes, "rows": int(rows), "failed": int(failed),
            "import_s": took, "gunzip_s": gunzip_s, "import_mb_s": raw_bytes / took / 1e6, "peak_mb": peak_mb,
            "loop_subset_s": base_s, "ours_subset_s": ours_s,
        }, indent=2))


if __name__ == "__main__":
    main()
