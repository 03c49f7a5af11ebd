"""Benchmark of `NeuronpediaClient` against the local emulator (not a test: nothing here asserts on time).

Two measurements from one run, each against an emulator running in a *separate process*
(a server in the client's own interpreter would share its GIL and event-loop time; as
separate processes each gets its own core on a 2-core machine, as far as other load allows).
Every phase reports the CPU seconds of the client, of the emulator process and of all
other processes on the machine, so a result skewed by a busy neighbour can be recognised.

(a) throughput, no rate limit: N features (default 2,000) fetched by GET through
    `NeuronpediaClient` at its default concurrency (`budget=None`), against a sequential
    `httpx.Client` loop doing `GET /api/feature/{model}/{source}/{i}` + `json.loads` one
    request at a time (the official `neuronpedia` package's pattern). Emulator latency
    50 ms per request. The emulator's payload cache is warmed in the server process
    before it starts listening, so both sides are served the same cached bytes.
    Goal: client / sequential >= 20x.

(b) pacing under a rate limit: the emulator limits /api to R requests per 10 s window
    (`RateLimitConfig(api_limit=R, window_s=10.0)`, default algorithm: "upstash", which
    imitates the real site); the client gets `Budget(limit=R, window_s=10.0, burst=B)`
    and is asked for more features than the windows allow. Measured from the emulator's
    request log (fetched over `GET /_emulator/log`): achieved requests per window / R
    (goal >= 0.9) and the count of 429s (goal 0).
    Burst: one second of the rate (R / 10), as `Budget.per_second` (the CLI's --rate)
    chooses. The pacer's sliding log alone keeps any exact 10 s window at <= R, but Upstash
    estimates the window from two fixed windows, and a burst at the start of a period makes
    it over-count: with burst = R the same run draws 429s (see benchmarks/RESULTS.md).
    Client cooldown after a 429: one window (10 s; the library default, 600 s, is sized for
    the real site's 1 h window and would stall the whole measurement).

Usage:
    PYTHONPATH=. .venv/bin/python benchmarks/bench_client.py            # full (~3 min)
    PYTHONPATH=. .venv/bin/python benchmarks/bench_client.py --quick    # smoke (~40 s)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import gc
import json
import os
import platform
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import httpx

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # allow running without PYTHONPATH=.
    sys.path.insert(0, str(REPO))

from npclient import Budget, Feature, FeatureId  # noqa: E402
try:  # the package layout since the redesign; ab.py also runs this script against older revisions
    from npclient.http.client import DEFAULT_CONCURRENCY, NeuronpediaClient  # noqa: E402
except ImportError:
    from npclient.client import DEFAULT_CONCURRENCY, NeuronpediaClient  # noqa: E402
from npclient import aio  # noqa: E402

from machine import cpu_model, git_head, usable_cores, versions  # noqa: E402

MODEL = "gpt2-small"
SOURCE = "0-res-bench"
CLIENT_TICKS = os.sysconf("SC_CLK_TCK")

# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, str]:
    cpu = cpu_model()
    usable = usable_cores()
    libs = versions(["httpx", "httpcore", "h11", "anyio", "uvicorn", "starlette", "orjson", "pydantic", "tenacity"],
                    say_absent=False) + versions(["uvloop", "httptools"])
    return {
        "date (UTC)": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "cpu": cpu,
        "cores": f"{os.cpu_count()} logical, {usable} usable",
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "libraries": ", ".join(libs),
        "git HEAD": git_head(),
    }


# --------------------------------------------------------------------------- emulator process

# Runs in the child: build the state, warm the payload cache *before* listening, serve on
# the given port until the parent closes our stdin (or a hard lifetime runs out).
_CHILD = r"""
import json, os, sys, threading, time
params = json.loads(sys.argv[1])
from npclient.testing.emulator import EmulatorConfig, EmulatorServer, EmulatorState, RateLimitConfig, SourceSpec
rl = params["rate_limit"]
cfg = EmulatorConfig(
    sources=(SourceSpec(params["model"], params["source"], d_sae=params["d_sae"]),),
    latency_s=params["latency_s"],
    rate_limit=None if rl is None else RateLimitConfig(**rl),
    cache_size=params["cache_size"],
)
state = EmulatorState(cfg)
t = time.perf_counter()
for i in range(params["warm"]):
    state.feature_bytes(params["model"], params["source"], i)
warm_s = time.perf_counter() - t
threading.Timer(params["max_lifetime_s"], lambda: os._exit(3)).start()  # never outlive a crashed parent
server = EmulatorServer(state, port=params["port"]).start()
print("READY " + json.dumps({"url": server.url, "warm_s": warm_s, "stats": dict(state.stats)}), flush=True)
sys.stdin.read()  # the parent closes stdin to stop us
server.stop()
print("STATS " + json.dumps(dict(state.stats)), flush=True)
os._exit(0)
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    """user + system CPU seconds of a process (all its threads), from /proc/<pid>/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields_ = stat.rsplit(")", 1)[1].split()
    return (int(fields_[11]) + int(fields_[12])) / CLIENT_TICKS  # utime, stime


def system_cpu_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat."""
    try:
        parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return float("nan"), float("nan")
    v = [int(x) for x in parts] + [0] * 10
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq) / CLIENT_TICKS, steal / CLIENT_TICKS


class Meter:
    """CPU seconds of this process (the client), of the emulator process, and of everything else.

    `foreign_cpu_s` is what other processes on the machine burnt meanwhile (this machine is
    shared: a busy neighbour takes cores from the client and the server); `steal_s` is time the
    hypervisor gave to other guests.
    """

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid

    def __enter__(self) -> "Meter":
        self.load_before = Path("/proc/loadavg").read_text().split()[0]
        self._c, self._s, (self._b, self._st) = time.process_time(), proc_cpu_s(self.pid), system_cpu_s()
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._t
        self.client_cpu_s = time.process_time() - self._c
        self.server_cpu_s = proc_cpu_s(self.pid) - self._s
        busy, steal = system_cpu_s()
        self.foreign_cpu_s = max(0.0, busy - self._b - self.client_cpu_s - self.server_cpu_s)
        self.steal_s = steal - self._st


@dataclass
class Emulator:
    url: str
    proc: subprocess.Popen[str]
    warm_s: float
    stats_start: dict[str, int]
    stats_end: dict[str, int] = field(default_factory=dict)

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def reset(self) -> None:
        httpx.post(self.url + "/_emulator/reset", timeout=10).raise_for_status()

    def log(self) -> list[dict[str, Any]]:
        r = httpx.get(self.url + "/_emulator/log", timeout=60)
        r.raise_for_status()
        return [rec for rec in r.json() if rec["path"].startswith("/api")]


@contextlib.contextmanager
def emulator_process(
    *, latency_s: float, d_sae: int, warm: int, rate_limit: Optional[dict[str, Any]], max_lifetime_s: float
) -> Iterator[Emulator]:
    port = free_port()
    params = {
        "model": MODEL, "source": SOURCE, "d_sae": d_sae, "latency_s": latency_s, "rate_limit": rate_limit,
        "cache_size": max(4096, d_sae), "warm": warm, "port": port, "max_lifetime_s": max_lifetime_s,
    }
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(params)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(REPO), env=env,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        deadline = time.monotonic() + 120.0
        line = ""
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                line = proc.stdout.readline()
                if line.startswith("READY "):
                    break
        if not line.startswith("READY "):
            raise RuntimeError(f"emulator process did not start (rc={proc.poll()}, last line {line!r})")
        info = json.loads(line[len("READY "):])
        emu = Emulator(url=info["url"], proc=proc, warm_s=info["warm_s"], stats_start=info["stats"])
        yield emu
        with contextlib.suppress(subprocess.TimeoutExpired):
            out, _ = proc.communicate(timeout=15)  # closes stdin: the child stops and prints STATS
            for ln in out.splitlines():
                if ln.startswith("STATS "):
                    emu.stats_end = json.loads(ln[len("STATS "):])
    finally:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # type: ignore[union-attr]
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()  # only the process we started, by its handle
                proc.wait(timeout=10)


# --------------------------------------------------------------------------- part (a)


@dataclass
class Run:
    name: str
    n: int
    wall_s: float
    ok: int
    errors: int
    client_cpu_s: float
    server_cpu_s: float
    foreign_cpu_s: float
    statuses: dict[str, int]
    gc_s: float = 0.0
    gc_full: int = 0

    @property
    def rps(self) -> float:
        return self.n / self.wall_s if self.wall_s > 0 else float("nan")


def status_counts(log: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for rec in log:
        out[str(rec["status"])] = out.get(str(rec["status"]), 0) + 1
    return out


async def _client_fetch(url: str, ids: list[FeatureId], concurrency: int) -> tuple[int, int]:
    async with NeuronpediaClient(url, budget=None, concurrency=concurrency) as client:
        results = await client.get_features(ids, method="get")
    ok = sum(isinstance(r, Feature) for r in results)
    return ok, len(results) - ok


class GcTimer:
    """Seconds the client spent in the cyclic garbage collector, and its full collections.

    cProfile charges a collection to whatever function happened to allocate, so it cannot
    show this; `gc.callbacks` can.
    """

    def __enter__(self) -> "GcTimer":
        self.seconds, self.full, self._t = 0.0, 0, 0.0
        gc.collect()
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._t
            self.full += info["generation"] == 2


def run_client_get(emu: Emulator, n: int, concurrency: int, time_limit_s: float) -> Run:
    emu.reset()
    ids = [FeatureId(MODEL, SOURCE, i) for i in range(n)]
    with GcTimer() as g, Meter(emu.proc.pid) as m:
        ok, errors = aio.run(asyncio.wait_for(_client_fetch(emu.url, ids, concurrency), time_limit_s))
    return Run(f"NeuronpediaClient GET, concurrency {concurrency}", n, m.wall_s, ok, errors, m.client_cpu_s,
               m.server_cpu_s, m.foreign_cpu_s, status_counts(emu.log()), g.seconds, g.full)


def run_sequential_httpx(emu: Emulator, n: int, time_limit_s: float) -> Run:
    """The official client's pattern: one blocking request at a time, `json.loads` each body."""
    emu.reset()
    ok = errors = done = 0
    deadline = time.monotonic() + time_limit_s
    with Meter(emu.proc.pid) as m, httpx.Client(timeout=30.0) as http:
        for i in range(n):
            if time.monotonic() > deadline:
                break
            r = http.get(f"{emu.url}/api/feature/{MODEL}/{SOURCE}/{i}")
            done += 1
            if r.status_code == 200 and isinstance(json.loads(r.content), dict):
                ok += 1
            else:
                errors += 1
    return Run("sequential httpx.Client + json.loads", done, m.wall_s, ok, errors, m.client_cpu_s, m.server_cpu_s,
               m.foreign_cpu_s, status_counts(emu.log()))


# --------------------------------------------------------------------------- part (b)


@dataclass
class PacedRun:
    rate: int
    window_s: float
    windows: int
    burst: int
    algorithm: str
    cooldown_s: float
    latency_s: float
    requested: int
    client_sent: int
    client_wall_s: float
    ok_in_span: int
    n429: int
    other_errors: int
    per_window: list[int]
    max_sliding: int
    achieved: float
    client_cpu_s: float
    server_cpu_s: float
    foreign_cpu_s: float


def max_in_sliding_window(times: list[float], window: float) -> int:
    """Most accepted arrivals in any half-open interval of length `window` (exact sliding log)."""
    times = sorted(times)
    best = lo = 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def _paced_fetch(
    url: str, ids: list[FeatureId], budget: Budget, cooldown_s: float, run_s: float
) -> tuple[int, float]:
    """Fetch by GET until every id is done or `run_s` has passed; return (requests sent, wall)."""
    t0 = time.perf_counter()
    async with NeuronpediaClient(url, budget=budget, cooldown_s=cooldown_s) as client:
        stream = client.iter_features(ids, method="get")
        try:
            async with contextlib.aclosing(stream):
                async with asyncio.timeout(run_s):
                    async for _ in stream:
                        pass
        except TimeoutError:
            pass  # the planned end: more ids than the windows allow
        return client.requests_sent, time.perf_counter() - t0


def run_paced(
    *, rate: int, window_s: float, windows: int, burst: int, algorithm: str, cooldown_s: float,
    latency_s: float, d_sae: int,
) -> PacedRun:
    requested = min(d_sae, rate * (windows + 2))  # more than `windows` windows can carry
    span = windows * window_s
    run_s = span + 3.0  # past the end of the measured span, so it is never short of traffic
    rl = {"api_limit": rate, "window_s": window_s, "algorithm": algorithm}
    with emulator_process(latency_s=latency_s, d_sae=d_sae, warm=requested, rate_limit=rl,
                          max_lifetime_s=run_s + 300) as emu:
        budget = Budget(limit=rate, window_s=window_s, burst=burst)
        ids = [FeatureId(MODEL, SOURCE, i) for i in range(requested)]
        with Meter(emu.proc.pid) as m:
            sent, wall = aio.run(_paced_fetch(emu.url, ids, budget, cooldown_s, run_s))
        log = emu.log()
    if not log:
        raise RuntimeError("the emulator logged no request")
    # Achieved rate, from the server's log: the span starts at the first request's arrival
    # (emulator clock) and lasts `windows` whole windows; a request counts when it was
    # accepted (status 200) and arrived inside [t0, t0 + span). Then
    #     achieved = accepted_in_span / (span / window_s) / R
    # i.e. accepted requests per window as a fraction of the server's limit R (1.0 = the
    # whole budget used, never more than R per window on average).
    t_first = min(rec["t"] for rec in log)
    ok_times = [rec["t"] for rec in log if rec["status"] == 200]
    in_span = [t for t in ok_times if t_first <= t < t_first + span]
    per_window = [0] * windows
    for t in in_span:
        per_window[min(windows - 1, int((t - t_first) // window_s))] += 1
    n429 = sum(1 for rec in log if rec["status"] == 429)
    other = sum(1 for rec in log if rec["status"] not in (200, 429, None))
    return PacedRun(
        rate=rate, window_s=window_s, windows=windows, burst=burst, algorithm=algorithm, cooldown_s=cooldown_s,
        latency_s=latency_s, requested=requested, client_sent=sent, client_wall_s=wall, ok_in_span=len(in_span),
        n429=n429, other_errors=other, per_window=per_window,
        max_sliding=max_in_sliding_window(ok_times, window_s),
        achieved=len(in_span) / (span / window_s) / rate, client_cpu_s=m.client_cpu_s, server_cpu_s=m.server_cpu_s,
        foreign_cpu_s=m.foreign_cpu_s,
    )


# --------------------------------------------------------------------------- output


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run (200 features, R=20, 2 windows)")
    ap.add_argument("--features", type=int, help="features for part (a) (default 2000; 200 with --quick)")
    ap.add_argument("--latency", type=float, default=0.05, help="emulator latency per request, s (default 0.05)")
    ap.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                    help=f"client concurrency for part (a) (default DEFAULT_CONCURRENCY={DEFAULT_CONCURRENCY})")
    ap.add_argument("--rate", type=int, help="part (b): R requests per window (default 50; 20 with --quick)")
    ap.add_argument("--windows", type=int, help="part (b): windows measured (default 6; 2 with --quick)")
    ap.add_argument("--window-s", type=float, default=10.0, help="part (b): window length, s (default 10)")
    ap.add_argument("--burst", type=int,
                    help="part (b): client Budget burst (default: one second of the rate, R/window_s, "
                         "as Budget.per_second does)")
    ap.add_argument("--algorithm", choices=["upstash", "log"], default="upstash",
                    help="part (b): emulator limiter (default upstash, the real site's)")
    ap.add_argument("--cooldown", type=float,
                    help="part (b): client cooldown after a 429, s (default: one window)")
    ap.add_argument("--skip-a", action="store_true", help="run part (b) only")
    ap.add_argument("--skip-b", action="store_true", help="run part (a) only")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args(argv)

    n = args.features or (200 if args.quick else 2000)
    rate = args.rate or (20 if args.quick else 50)
    windows = args.windows or (2 if args.quick else 6)
    burst = args.burst or max(1, round(rate / args.window_s))
    cooldown = args.cooldown if args.cooldown is not None else args.window_s
    d_sae = max(2048, n, rate * (windows + 2))

    info = machine_info()
    print("== machine ==")
    for k, v in info.items():
        print(f"{k:>11}: {v}")
    print(f"    command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print()
    report: dict[str, Any] = {"machine": info, "args": vars(args) | {"json": str(args.json) if args.json else None}}

    if not args.skip_a:
        print(f"== (a) {n} features by GET, emulator latency {args.latency * 1e3:.0f} ms, no rate limit ==")
        with emulator_process(latency_s=args.latency, d_sae=d_sae, warm=n, rate_limit=None,
                              max_lifetime_s=1800) as emu:
            print(f"emulator pid {emu.proc.pid} at {emu.url}; cache warmed with {n} payloads in {emu.warm_s:.1f} s")
            seq_limit = max(60.0, n * (args.latency + 0.05) * 3)
            client_run = run_client_get(emu, n, args.concurrency, time_limit_s=300)
            seq_run = run_sequential_httpx(emu, n, time_limit_s=seq_limit)
        runs = [client_run, seq_run]
        print(table(
            ["run", "features", "ok", "errors", "wall s", "req/s", "client CPU s", "client CPU ms/req",
             "server CPU s", "other procs CPU s", "server statuses"],
            [[r.name, str(r.n), str(r.ok), str(r.errors), f"{r.wall_s:.2f}", f"{r.rps:.1f}",
              f"{r.client_cpu_s:.2f}", f"{r.client_cpu_s / max(r.n, 1) * 1e3:.2f}", f"{r.server_cpu_s:.2f}",
              f"{r.foreign_cpu_s:.2f}", json.dumps(r.statuses)] for r in runs],
        ))
        ratio = client_run.rps / seq_run.rps
        ceiling = min(args.concurrency, n) * 1.0 / max(args.latency, 1e-9)
        print(f"ratio client/sequential (req/s): {ratio:.1f}x   (goal >= 20x: {'met' if ratio >= 20 else 'MISSED'})")
        print(f"latency-bound ceiling at concurrency {args.concurrency}: {ceiling:.0f} req/s; client reached "
              f"{client_run.rps / ceiling:.0%} of it. The client's event loop (one thread) was busy "
              f"{client_run.client_cpu_s / client_run.wall_s:.0%} of the wall time, the server "
              f"{client_run.server_cpu_s / client_run.wall_s:.0%}, other processes {client_run.foreign_cpu_s / client_run.wall_s:.0%} "
              f"(of one core; {os.cpu_count()} cores)")
        print(f"client time in the garbage collector: {client_run.gc_s:.2f} s "
              f"({client_run.gc_s / client_run.n * 1e3:.2f} ms/req; {client_run.gc_full} full collections)")
        if emu.stats_end:
            print(f"emulator payload cache: start {emu.stats_start}, end {emu.stats_end}")
        print()
        report["a"] = {"runs": [r.__dict__ | {"rps": r.rps} for r in runs], "ratio": ratio, "speedup": ratio,
                       "client_s": client_run.wall_s,
                       "ceiling_rps": ceiling, "cache_start": emu.stats_start, "cache_end": emu.stats_end}

    if not args.skip_b:
        print(f"== (b) pacing: emulator limit R={rate} per {args.window_s:g} s ({args.algorithm}), "
              f"client Budget(limit={rate}, window_s={args.window_s:g}, burst={burst}), {windows} windows ==")
        p = run_paced(rate=rate, window_s=args.window_s, windows=windows, burst=burst, algorithm=args.algorithm,
                      cooldown_s=cooldown, latency_s=args.latency, d_sae=d_sae)
        print(table(
            ["R / window", "algorithm", "burst", "windows", "ids asked", "client sent", "ok in span",
             "per window", "max in any 10 s", "achieved / R", "429s", "other errors"],
            [[f"{p.rate} / {p.window_s:g} s", p.algorithm, str(p.burst), str(p.windows), str(p.requested),
              str(p.client_sent), str(p.ok_in_span), " ".join(map(str, p.per_window)), str(p.max_sliding),
              f"{p.achieved:.3f}", str(p.n429), str(p.other_errors)]],
        ))
        print(f"achieved/R = {p.achieved:.3f} (goal >= 0.9: {'met' if p.achieved >= 0.9 else 'MISSED'}); "
              f"429s = {p.n429} (goal 0: {'met' if p.n429 == 0 else 'MISSED'}); client cooldown after a 429: "
              f"{p.cooldown_s:g} s; CPU client {p.client_cpu_s:.1f} s, server {p.server_cpu_s:.1f} s, "
              f"other processes {p.foreign_cpu_s:.1f} s over {p.client_wall_s:.1f} s")
        report["b"] = p.__dict__
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
