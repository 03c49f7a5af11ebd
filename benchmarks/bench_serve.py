"""`GET /api/feature` against `np-mirror serve` on loopback: latency under load, and throughput.

Builds a mirror from the emulator (or takes `--db`), starts `np-mirror serve` in its own
process, then measures from this process:

* open loop: requests sent on a fixed schedule (`--rate` per second for `--duration` s),
  each at its time whatever the earlier ones are doing; latency is counted from the
  scheduled send time, so a stalled server cannot hide its queue (goal: p99 < 25 ms at 100/s);
* closed loop: `--concurrency` clients, each sending its next request when the previous one
  is answered, for `--duration` s: the maximum throughput.

Random feature ids of the mirror, keep-alive connections. A benchmark, not a test: it never
fails on time.

`--baseline DIR` also measures the `np-mirror serve` of another source tree (a directory holding
`npclient/` and `np_mirror/`, e.g. `git archive HEAD npclient cli` unpacked with `cli/np_mirror`
moved up) in the same run, on the same mirror: the two servers take turns, `--rounds` times
each, so a busy machine slows both alike. Each server runs from a neutral working directory with
its tree first on `PYTHONPATH`.

    .venv/bin/python benchmarks/bench_serve.py [--features 2000] [--rate 100] [--duration 10] [--concurrency 8]
        [--db PATH (built there if absent)] [--baseline DIR [--rounds 2]]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from npclient import NeuronpediaClient, SourceId
from npclient.mirror import Mirror
from npclient.store.database import Database
from npclient.sync import SyncOptions, run_sync
from npclient.testing import EmulatorConfig, EmulatorServer, SourceSpec

M, S = "gpt2-small", "0-res-jb"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


def build_mirror(path: Path, n: int) -> float:
    config = EmulatorConfig(sources=(SourceSpec(M, S, d_sae=n),))
    t0 = time.perf_counter()
    with EmulatorServer(config) as server:
        async def go() -> None:
            async with NeuronpediaClient(server.url, budget=None, concurrency=8, timeout=30.0) as client:
                await run_sync([SourceId(M, S)], db=Database(path), client=client, options=SyncOptions(method="get"))

        asyncio.run(go())
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(db: Path, port: int, tree: Path | None = None) -> subprocess.Popen:
    """`np-mirror serve` in its own process; `tree` first on its path (else this checkout's package)."""
    code = ("import sys, typer, npclient; from np_mirror.cmd_serve import serve; "
            "print('np-mirror serve from', npclient.__file__, file=sys.stderr); typer.run(serve)")
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # `python -c` puts its working directory first on sys.path: run where no package shadows the tree
    proc = subprocess.Popen([sys.executable, "-c", code, "--port", str(port), "--db", str(db)], env=env,
                            cwd=tempfile.gettempdir())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/feature/x/y/0", timeout=1.0)
            return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("np-mirror serve did not start")


async def open_loop(base: str, paths: list[str], rate: float, duration: float) -> tuple[list[float], list[float], int]:
    n = int(rate * duration)
    lat_sched: list[float] = []
    lat_send: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10.0) as client:
        for p in paths[:16]:  # warm the connections and the server
            await client.get(p)
        start = time.perf_counter() + 0.05

        async def one(k: int) -> None:
            nonlocal errors
            scheduled = start + k / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.perf_counter()
            r = await client.get(paths[k % len(paths)])
            done = time.perf_counter()
            if r.status_code != 200:
                errors += 1
            lat_sched.append((done - scheduled) * 1e3)
            lat_send.append((done - sent) * 1e3)

        await asyncio.gather(*(one(k) for k in range(n)))
    return lat_sched, lat_send, errors


async def closed_loop(base: str, paths: list[str], concurrency: int, duration: float) -> tuple[int, float, list[float], int]:
    done = 0
    errors = 0
    lat: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10.0) as client:
        for p in paths[:16]:
            await client.get(p)
        stop = time.perf_counter() + duration
        t0 = time.perf_counter()

        async def worker(seed: int) -> None:
            nonlocal done, errors
            rng = random.Random(seed)
            while time.perf_counter() < stop:
                t = time.perf_counter()
                r = await client.get(rng.choice(paths))
                lat.append((time.perf_counter() - t) * 1e3)
                done += 1
                errors += r.status_code != 200

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return done, elapsed, lat, errors


def measure(db: Path, paths: list[str], args: argparse.Namespace, tree: Path | None) -> dict[str, Any]:
    port = free_port()
    proc = start_server(db, port, tree)
    base = f"http://127.0.0.1:{port}"
    try:
        sched, sent, err_open = asyncio.run(open_loop(base, paths, args.rate, args.duration))
        done, elapsed, lat_closed, err_closed = asyncio.run(closed_loop(base, paths, args.concurrency, args.duration))
    finally:
        proc.terminate()
        proc.wait(10)
    return {"sched": sched, "sent": sent, "err_open": err_open, "done": done, "elapsed": elapsed,
            "closed": lat_closed, "err_closed": err_closed}


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"sched": [], "sent": [], "closed": [], "err_open": 0, "err_closed": 0, "done": 0, "elapsed": 0.0}
    for r in runs:
        for k in ("sched", "sent", "closed"):
            out[k] += r[k]
        for k in ("err_open", "err_closed", "done", "elapsed"):
            out[k] += r[k]
    return out


def table(label: str, m: dict[str, Any], args: argparse.Namespace, rounds: int) -> None:
    sched, sent, lat_closed = m["sched"], m["sent"], m["closed"]
    print(f"**{label}**")
    print()
    print("| load | requests | errors | p50 ms | p90 ms | p99 ms | max ms | throughput req/s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| open loop {args.rate:g}/s x {args.duration:g} s x {rounds} (from schedule) | {len(sched)} | {m['err_open']} | "
          f"{pct(sched, 50):.2f} | {pct(sched, 90):.2f} | {pct(sched, 99):.2f} | {max(sched):.2f} | "
          f"{len(sched) / (args.duration * rounds):.0f} |")
    print(f"| open loop, from actual send | {len(sent)} | {m['err_open']} | "
          f"{pct(sent, 50):.2f} | {pct(sent, 90):.2f} | {pct(sent, 99):.2f} | {max(sent):.2f} | |")
    print(f"| closed loop, {args.concurrency} clients x {args.duration:g} s x {rounds} | {m['done']} | {m['err_closed']} | "
          f"{pct(lat_closed, 50):.2f} | {pct(lat_closed, 90):.2f} | {pct(lat_closed, 99):.2f} | {max(lat_closed):.2f} | "
          f"**{m['done'] / m['elapsed']:.0f}** |")
    p99 = pct(sched, 99)
    print()
    print(f"goal p99 < 25 ms at {args.rate:g}/s: {'met' if p99 < 25 else 'missed'} ({p99:.2f} ms)")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", type=int, default=2000)
    ap.add_argument("--db", type=Path, help="a mirror (built there by sync from the emulator if absent; default: a temporary one)")
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--baseline", type=Path, help="a source tree whose `np-mirror serve` is measured in turn with this one")
    ap.add_argument("--rounds", type=int, default=None, help="turns per server (default 2 with --baseline, else 1)")
    args = ap.parse_args()
    rounds = args.rounds or (2 if args.baseline else 1)
    if args.baseline is not None and not (args.baseline / "npclient").is_dir():
        raise SystemExit(f"--baseline {args.baseline}: no npclient/ there")

    tmp = tempfile.TemporaryDirectory(prefix="bench_serve_")
    db = args.db
    build_s = None
    if db is None:
        db = Path(tmp.name) / "mirror.duckdb"
    if not db.exists():
        build_s = build_mirror(db, args.features)
    with Mirror(db, read_only=True) as mirror:
        rows = mirror.sql("SELECT model_id, source, \"index\" FROM features").to_pylist()
        sample = mirror.feature(f"{rows[0]['model_id']}/{rows[0]['source']}/{rows[0]['index']}")
        body_kb = len(sample.raw_json) / 1024 if sample else 0.0
    rng = random.Random(0)
    paths = [f"/api/feature/{r['model_id']}/{r['source']}/{r['index']}" for r in rows]
    rng.shuffle(paths)

    servers: list[tuple[str, Path | None]] = [("this checkout", None)]
    if args.baseline is not None:
        servers.insert(0, (f"baseline {args.baseline}", args.baseline))
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in servers}
    for _ in range(rounds):
        for label, tree in servers:
            results[label].append(measure(db, paths, args, tree))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"mirror: {len(rows)} features, first body {body_kb:.0f} kB"
          + (f", built by sync in {build_s:.1f} s" if build_s is not None else f" ({db})"))
    print()
    for label, _ in servers:
        table(label, merge(results[label]), args, rounds)
    tmp.cleanup()


if __name__ == "__main__":
    main()
