"""The HTML pages of `np-mirror serve` on a 131,072-feature source: p50/p95 per page kind.

Writes the source straight through the store's writer (`npclient.testing.bigsource`; no HTTP),
or takes `--db`, starts `np-mirror serve` in its own process, and times sequential requests of
each kind from this process over loopback (keep-alive, one request at a time: the latency a
person clicking around sees). Kinds:

* `source`: the source page, first table page, the UMAP map (50,000 of the points, sampled);
* `source-sorted`: a random table page sorted by max activation (descending) or density;
* `source-search`: the source page with a search (`?q=`), hits ringed on the map;
* `feature`: a random feature with activations, histograms and neighbours;
* `feature-bare`: a random feature with only an explanation and coordinates.

"first ms" is each kind's first request (the source kind's lays out the map, which later
requests reuse until the file changes); p50/p95 are over the `--requests` after it.

Goal: p95 < 300 ms per kind on the 2-core machine. A benchmark, not a test: it never fails on time.

Then, side by side in this process on the same file, the search behind `source-search`: the
store's ranking (`store.search_page`: scored, ordered and counted in DuckDB, one page and the
first 500 features back) against the way before it (every hit fetched and scored in Python by
the same rule, then sorted), alternating, per query word.

    .venv/bin/python benchmarks/bench_pages.py [--features 131072] [--requests 40] [--local-umap]
        [--db PATH (built there if absent)] [--json OUT] [--search-rounds 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import free_port, start_server  # noqa: E402

from npclient.testing.bigsource import BIG_WORDS, write_big_source  # noqa: E402

M, S = "gpt2-small", "8-res-big"
GOAL_MS = 300.0
ACTS_EVERY = 32


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))] if s else float("nan")


def paths(kind: str, n: int, rng: random.Random) -> str:
    base = f"/{M}/{S}"
    if kind == "source":
        return base
    if kind == "source-sorted":
        sort = rng.choice(["max_act", "density"])
        return f"{base}?sort={sort}&order=desc&page={rng.randrange(1, n // 100)}"
    if kind == "source-search":
        return f"{base}?q={rng.choice(BIG_WORDS)}"
    if kind == "feature":
        return f"{base}/{rng.randrange(n // ACTS_EVERY) * ACTS_EVERY}"
    return f"{base}/{rng.randrange(n) | 1}"  # odd: never a full feature


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=131_072)
    ap.add_argument("--requests", type=int, default=40, help="timed requests per page kind")
    ap.add_argument("--local-umap", action="store_true", help="also store a local UMAP (the map then draws it)")
    ap.add_argument("--db", type=Path, help="a mirror holding the source (written there if absent)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--search-rounds", type=int, default=5, help="rounds of the side-by-side search timing (0: skip)")
    args = ap.parse_args()
    n = args.features
    print(f"machine: {platform.platform()}, {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "pages.duckdb"
        if not db.exists():
            t0 = time.perf_counter()
            write_big_source(db, M, S, n, acts_every=ACTS_EVERY, local_umap=args.local_umap)
            print(f"wrote {n:,} features through the store's writer in {time.perf_counter() - t0:.1f} s "
                  f"({db.stat().st_size / 1e6:.0f} MB)")
        port = free_port()
        proc = start_server(db, port)
        results: dict[str, Any] = {}
        try:
            rng = random.Random(0)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60.0) as http:
                for kind in ("source", "source-sorted", "source-search", "feature", "feature-bare"):
                    t = time.perf_counter()  # the first of a kind: opens the file, lays out the map
                    first = http.get(paths(kind, n, rng))
                    first_ms = (time.perf_counter() - t) * 1e3
                    assert first.status_code == 200, (kind, first.status_code)
                    lat, size = [], 0
                    for _ in range(args.requests):
                        t = time.perf_counter()
                        r = http.get(paths(kind, n, rng))
                        lat.append((time.perf_counter() - t) * 1e3)
                        assert r.status_code == 200, (kind, r.status_code)
                        size = max(size, len(r.content))
                    results[kind] = {"first_ms": first_ms, "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "max_kb": size / 1024,
                                     "ratio_p95_to_goal": pct(lat, 95) / GOAL_MS}
        finally:
            proc.terminate()
            proc.wait(10)
        search_rows = compare_search(db, args.search_rounds) if args.search_rounds else []
    print()
    print(f"{'page kind':16s} {'first ms':>9s} {'p50 ms':>9s} {'p95 ms':>9s} {'p95/300ms':>10s} {'largest':>10s}")
    for kind, r in results.items():
        print(f"{kind:16s} {r['first_ms']:9.1f} {r['p50_ms']:9.1f} {r['p95_ms']:9.1f} {r['ratio_p95_to_goal']:10.2f} "
              f"{r['max_kb']:8.0f} kB")
    if search_rows:
        print()
        print(f"{'search (one source)':20s} {'hits':>8s} {'SQL page ms':>12s} {'all in Python ms':>17s} {'ratio':>7s}")
        for r in search_rows:
            print(f"{r['query']:20s} {r['hits']:8,d} {r['sql_ms']:12.1f} {r['python_ms']:17.1f} {r['ratio']:7.3f}")
        print("ms: median of the rounds; ratio: SQL page / all in Python (lower is better); the same "
              "page, count and first features from both, checked each round")
    if args.json:
        args.json.write_text(json.dumps({"features": n, "requests": args.requests, "results": results,
                                         "search": search_rows}, indent=1))


def python_ranking(mirror: Any, query: str, features: int) -> tuple[list[Any], int, list[Any]]:
    """The way before `search_page`: every candidate back to Python, scored by the same rule, sorted."""
    from npclient.store.search import ExplanationHit, _Query  # noqa: PLC2701 - the rule's own pieces

    qy = _Query(query, M, [S], False)
    hits = []
    with mirror.store.db.connect() as cur:
        rows = cur.execute('SELECT model_id, source, "index", rank, description, explanation_model_name, type_name '
                           f"FROM explanations WHERE {' AND '.join(qy.where)}", qy.params).fetchall()
    for model, source, index, rank, desc, explainer, type_name in rows:
        score = qy.score(desc)
        if score > 0:
            hits.append(ExplanationHit(score, model, source, index, rank, desc, explainer, type_name))
    hits.sort(key=qy.key)
    seen, firsts = set(), []
    for h in hits:
        if h.index not in seen and len(firsts) < features:
            seen.add(h.index)
            firsts.append(h)
    return hits[:20], len(hits), firsts


def compare_search(db: Path, rounds: int) -> list[dict[str, Any]]:
    import statistics

    from npclient.mirror import Mirror

    out = []
    with Mirror(db, read_only=True) as mirror:
        for word in BIG_WORDS[:4]:
            sql_ms, py_ms, hits = [], [], 0
            for _ in range(rounds):
                t = time.perf_counter()
                page = mirror.store.search_page(word, model_id=M, sources=[S], limit=20, features=500)
                sql_ms.append((time.perf_counter() - t) * 1e3)
                t = time.perf_counter()
                want = python_ranking(mirror, word, 500)
                py_ms.append((time.perf_counter() - t) * 1e3)
                assert (page.hits, page.total, page.features) == want, word
                hits = page.total
            sql, py = statistics.median(sql_ms), statistics.median(py_ms)
            out.append({"query": word, "hits": hits, "sql_ms": sql, "python_ms": py, "ratio": sql / py})
    return out


if __name__ == "__main__":
    main()
