"""Before and after, side by side in one run: a benchmark against the code of another revision.

    .venv/bin/python benchmarks/ab.py --base REV[,REV...] [--head REV] [--rounds 3] [--only client,store,import]

For each benchmark, each round runs the *same* benchmark script (this tree's) twice, once
importing `npclient` from a `git worktree` of REV ("before") and once from this tree or a
worktree of `--head` ("after"), alternating which goes first, so both see the same machine load. It prints each
figure per side (best and median of the rounds) and after/before, and appends nothing by
itself: copy what you quote into RESULTS.md.

Figures compared:
- client: `bench_client.py --skip-b`: the client / sequential-loop speed-up (part a);
- store: `bench_store.py`: `Mirror.feature` p50 and p99 (ms);
- import: `bench_import.py --skip-loop` on one export written once by this tree's emulator
  (the same dump for both sides): seconds and MB/s of `import_source_dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

BENCHES = {
    # name: (script, extra args, {figure: (json key path, "higher"|"lower" is better)})
    "client": ("bench_client.py", ["--skip-b"], {"speedup_x": (("a", "speedup"), "higher"),
                                                  "client_s": (("a", "client_s"), "lower")}),
    "store": ("bench_store.py", [], {"feature_p50_ms": (("feature_p50_ms",), "lower"),
                                     "feature_p99_ms": (("feature_p99_ms",), "lower")}),
    "import": ("bench_import.py", ["--skip-loop"], {"import_s": (("import_s",), "lower"),
                                                     "import_mb_s": (("import_mb_s",), "higher")}),
}


def worktree(rev: str) -> Path:
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True,
                         check=True).stdout.strip()
    path = Path(tempfile.gettempdir()) / f"np-mirror-ab-{sha}"
    if not (path / "npclient").is_dir():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--force", str(path), sha],
                       check=True, capture_output=True)
    return path


def run_side(root: Path, script: str, args: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [sys.executable, str(HERE / script), *args, "--json", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(HERE))
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed for {root}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    data = json.loads(out.read_text())
    where = subprocess.run([sys.executable, "-c", "import npclient; print(npclient.__file__)"], env=env,
                           capture_output=True, text=True, cwd=str(HERE)).stdout.strip()
    if not where.startswith(str(root)):
        raise SystemExit(f"npclient came from {where}, not {root}: the comparison would be void")
    return data


def pick(data: dict, path: tuple[str, ...]) -> float:
    for key in path:
        data = data[key]
    return float(data)  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the 'before' revision(s), comma-separated (e.g. a commit or HEAD~5)")
    ap.add_argument("--head", help="the 'after' revision (default: this working tree, uncommitted changes included)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=",".join(BENCHES), help="comma list of: " + ", ".join(BENCHES))
    ap.add_argument("--client-features", type=int, default=2000, help="features of the client bench (default 2000)")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    args = ap.parse_args()
    bases = [b.strip() for b in args.base.split(",") if b.strip()]
    after = worktree(args.head) if args.head else REPO
    sides = {f"before {b}": worktree(b) for b in bases}
    sides["after"] = after
    for name, root in sides.items():
        print(f"{name}: {root}")
    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        for name in [n.strip() for n in args.only.split(",") if n.strip()]:
            script, extra, figures = BENCHES[name]
            extra = list(extra)
            if name == "client":
                extra += ["--features", str(args.client_features)]
            if name == "import":  # one dump for both sides, written by this tree's emulator
                dump = tmp_path / "dump"
                subprocess.run([sys.executable, str(HERE / script), "--dir", str(dump), "--write-only"],
                               env={**os.environ, "PYTHONPATH": str(after)}, check=True, cwd=str(HERE))
                extra += ["--dir", str(dump)]
            values: dict[str, dict[str, list[float]]] = {s: {f: [] for f in figures} for s in sides}
            for r in range(args.rounds):
                order = list(sides)[r % len(sides):] + list(sides)[: r % len(sides)]  # each side leads once
                for side in order:
                    data = run_side(sides[side], script, extra, tmp_path / f"{name}-{side}-{r}.json")
                    for fig, (path, _) in figures.items():
                        values[side][fig].append(pick(data, path))
                print(f"  {name}: round {r + 1}/{args.rounds} done", flush=True)
            print(f"\n{name} ({script} {' '.join(extra)}), {args.rounds} rounds")
            report[name] = {}
            for fig, (_, better) in figures.items():
                best = max if better == "higher" else min
                a = values["after"][fig]
                print(f"\n| {fig} ({better} is better) | best | median | after/this (medians) |")
                print("|---|---|---|---|")
                report[name][fig] = {}
                for side in values:
                    vals = values[side][fig]
                    ratio = statistics.median(a) / statistics.median(vals)
                    print(f"| {side} | {best(vals):.4g} | {statistics.median(vals):.4g} | {ratio:.3f} |")
                    report[name][fig][side] = {"values": vals, "after_over_this": ratio}
    if args.json:
        args.json.write_text(json.dumps({"base": args.base, "rounds": args.rounds, "figures": report}, indent=2))


if __name__ == "__main__":
    main()
