"""Converting a bulk export into the shared dataset: the Ray engine against the local engine, side by side (issue 15, section 5).

Writes a 24,576-feature export in the real layout with the emulator (`--dir` keeps and reuses
it), serves it with the S3 stand-in on loopback, and times `dataset_sync` (every export file:
ETag check, the importer's typed reader, Parquet units with markers; then the per-source
reduce) with `engine="local"` (a thread per core) and `engine="ray"` (one task per export file
on a local cluster of the same cores), into a fresh dataset each round. The download cache is
filled once before the rounds, so both engines convert the same files already on disk (the
downloader only checks size and ETag). Cluster start-up (ray.init) and the workers' first
job (a whole sync: their imports) are timed apart and are not in the ratio. Rounds alternate and rotate
which engine leads; the ratio is Ray's median over local's median (goal: <= 1.3x). The two
datasets are checked equal (every table, bookkeeping columns aside). The load average before
and after is printed: the machine may be shared. Never asserts on time.

    .venv/bin/python benchmarks/bench_dataset_sync.py [--features 24576] [--rounds 3] [--dir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from machine import cpu_model, git_head, usable_cores, versions


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _contents(ds: Path) -> dict[str, list[str]]:
    import duckdb

    con = duckdb.connect()
    out = {}
    for table, key in (("features", "feature_key"), ("activations", "feature_key, rank"),
                       ("explanations", "feature_key, rank")):
        rel = f"read_parquet('{ds}/{table}/*/*/*.parquet')"
        cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {rel}").fetchall() if r[0] not in ("fetched_at", "run_id")]
        quoted = ", ".join(f'"{c}"' for c in cols)
        out[table] = [repr(r) for r in con.execute(f"SELECT {quoted} FROM {rel} ORDER BY {key}").fetchall()]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=24576)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="reuse or keep the generated export here")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import ray

    from npclient.dataset.sync import dataset_sync
    from npclient.ids import SourceId
    from npclient.testing import EmulatorConfig, EmulatorState, SourceSpec
    from npclient.testing.emulator.exports import ExportQuirks, write_export
    from npclient.testing.emulator.s3 import S3Server

    src = SourceId("gpt2-small", "0-res-jb")
    cores = usable_cores()
    work = Path(tempfile.mkdtemp(prefix="np-bench-dsync-"))
    root = args.dir or work / "bucket"
    if not (root / "v1" / src.model_id / src.source / "features").is_dir():
        t = time.perf_counter()
        state = EmulatorState(EmulatorConfig(sources=(SourceSpec(src.model_id, src.source, d_sae=args.features),),
                                             cache_size=64))
        write_export(state, root, quirks=ExportQuirks(non_source_folders=False))
        print(f"generated the export in {time.perf_counter() - t:.1f} s")
    files = sorted((root / "v1" / src.model_id / src.source).rglob("batch-*.jsonl.gz"))
    print(f"dataset sync of {args.features:,} features ({len(files)} export files, "
          f"{sum(f.stat().st_size for f in files) / 1e6:.1f} MB gzip); {cores} cores ({cpu_model()}); "
          f"{', '.join(versions(['ray', 'duckdb', 'pyarrow']))}; np-mirror at {git_head()}; load average before: {_load()}")
    cache = work / "cache"
    times: dict[str, list[float]] = {"local": [], "ray": []}
    with S3Server(root) as s3:
        def once(engine: str, name: str) -> tuple[float, Path]:
            ds = work / f"ds-{name}"
            shutil.rmtree(ds, ignore_errors=True)
            t = time.perf_counter()
            summary = dataset_sync(str(ds), sources=[src], engine=engine, exports_url=s3.bucket_url, cache=cache,
                                   workers=cores, api=False)  # the conversion only: no API for the gaps
            took = time.perf_counter() - t
            assert summary.exit_code == 0, summary.sources[0].export_failed
            return took, ds

        t = time.perf_counter()
        once("local", "fill")  # fills the download cache; not timed as a round
        print(f"first local run (downloads the export once, not in the ratio): {time.perf_counter() - t:.2f} s")
        t = time.perf_counter()
        ray.init(num_cpus=cores, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level="warning")
        t_cluster = time.perf_counter() - t
        t_workers, _ = once("ray", "warm")  # the workers' first job: processes, imports, first DuckDB connection
        print(f"start-up (not in the ratio): ray.init {t_cluster:.2f} s, the workers' first job {t_workers:.2f} s")
        out = {}
        for r in range(args.rounds):
            for engine in (["local", "ray"] if r % 2 == 0 else ["ray", "local"]):
                took, out[engine] = once(engine, engine)
                times[engine].append(took)
                print(f"  round {r + 1} {engine:5s} {took:.2f} s")
        ray.shutdown()
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    ratio = med["ray"] / med["local"]
    equal = _contents(out["ray"]) == _contents(out["local"])
    print(f"local: median {med['local']:.2f} s, best {best['local']:.2f} s "
          f"({args.features / med['local']:,.0f} features/s)")
    print(f"ray:   median {med['ray']:.2f} s, best {best['ray']:.2f} s")
    print(f"ratio ray/local: {ratio:.2f}x median, {best['ray'] / best['local']:.2f}x best (goal <= 1.3x)")
    print(f"equal: {equal} (every table, bookkeeping columns aside)")
    print(f"load average after: {_load()}")
    if args.json:
        args.json.write_text(json.dumps({
            "features": args.features, "files": len(files), "cores": cores, "times": times, "median": med,
            "best": best, "ratio_median": ratio, "startup_cluster_s": t_cluster, "startup_workers_s": t_workers,
            "equal": equal}, indent=2))
    shutil.rmtree(work, ignore_errors=True)  # the datasets and the cache (an export kept with --dir is elsewhere)


if __name__ == "__main__":
    main()
