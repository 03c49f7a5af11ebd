"""Point reads from the mirror vs a GET to the API, and a whole source to Arrow.

Prints, from one run: p50/p99 of `Mirror.feature(id)` on a 5,000-feature mirror (goal p50 <
3 ms), the ratio to one GET against the emulator at 150 ms latency (goal >= 50x), the time to
load all features to Arrow, and how long the sync that built the mirror took. A benchmark,
not a test: it never fails on time.

    .venv/bin/python benchmarks/bench_store.py [--features 5000] [--reads 2000]
"""

from __future__ import annotations

import argparse
from npclient import aio
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from npclient import FeatureId, NeuronpediaClient, SourceId
from npclient.mirror import Mirror
from npclient.sync import SyncOptions, run_sync
from npclient.testing import EmulatorConfig, EmulatorServer, SourceSpec
from machine import cpu_model, usable_cores


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def machine() -> str:
    return f"{cpu_model()}, {usable_cores()} cores, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=5000)
    ap.add_argument("--reads", type=int, default=2000)
    ap.add_argument("--gets", type=int, default=20)
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args()
    n = args.features
    src = SourceId("gpt2-small", "0-res-jb")
    config = EmulatorConfig(sources=(SourceSpec(src.model_id, src.source, d_sae=n),), cache_size=max(4096, n + 10))
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp, EmulatorServer(config) as server:
        path = Path(tmp) / "bench.duckdb"
        mirror = Mirror(path, linger_s=5.0)

        async def build():
            async with NeuronpediaClient(server.url, budget=None, concurrency=8) as client:
                return await run_sync([src], db=mirror.db, client=client, options=SyncOptions())

        t0 = time.perf_counter()
        summary = aio.run(build())
        sync_s = time.perf_counter() - t0
        print(f"sync of {summary.fetched} features by POST batches: {sync_s:.1f} s ({summary.requests} requests, "
              f"{summary.fetched / sync_s:.0f} features/s); file {path.stat().st_size / 1e6:.0f} MB")

        rng = random.Random(0)
        ids = [FeatureId(src.model_id, src.source, rng.randrange(n)) for _ in range(args.reads)]
        mirror.feature(ids[0])  # open the file once; the reads below share the connection
        lat = []
        for fid in ids:
            t = time.perf_counter()
            feature = mirror.feature(fid)
            lat.append(time.perf_counter() - t)
            assert feature is not None
        p50, p99 = pct(lat, 0.5) * 1e3, pct(lat, 0.99) * 1e3

        t = time.perf_counter()
        table = mirror.features(src)
        arrow_s = time.perf_counter() - t
        t = time.perf_counter()
        acts = mirror.sql("SELECT * FROM activations WHERE model_id = ? AND source = ?", [src.model_id, src.source])
        acts_s = time.perf_counter() - t
        mirror.close()

        server.state.latency_s = 0.150
        gets = []
        with httpx.Client(base_url=server.url) as http:
            for fid in ids[: args.gets]:
                t = time.perf_counter()
                http.get(f"/api/feature/{fid.model_id}/{fid.source}/{fid.index}").json()
                gets.append(time.perf_counter() - t)
        get_p50 = statistics.median(gets) * 1e3

    print()
    print(f"{'measure':48s} {'value':>12s}")
    print(f"{'Mirror.feature(id) p50 (goal < 3 ms)':48s} {p50:10.2f} ms")
    print(f"{'Mirror.feature(id) p99':48s} {p99:10.2f} ms")
    print(f"{'GET /api/feature at 150 ms latency, p50':48s} {get_p50:10.1f} ms")
    print(f"{'ratio GET / mirror read (goal >= 50x)':48s} {get_p50 / p50:10.0f} x")
    print(f"{f'all {table.num_rows} features to Arrow':48s} {arrow_s:10.3f} s")
    print(f"{f'all {acts.num_rows} activations to Arrow':48s} {acts_s:10.3f} s")
    if args.json:
        import json

        args.json.write_text(json.dumps({
            "machine": machine(), "features": n, "sync_s": sync_s, "feature_p50_ms": p50, "feature_p99_ms": p99,
            "get_p50_ms": get_p50, "get_over_read": get_p50 / p50, "features_arrow_s": arrow_s,
            "activations_arrow_s": acts_s,
        }, indent=2))


if __name__ == "__main__":
    main()
